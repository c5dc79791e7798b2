"""The parity alarm end to end: a worker that serves a stale adapter stops the run.

The stale worker is a real vLLM worker with one more vLLM general plugin, written here into
a folder on its ``PYTHONPATH`` (vLLM loads every ``vllm.general_plugins`` entry point it
finds): it keeps the first adapter it loads (v0, the zero adapter) and answers every later
load, under the new version's name and path, with v0's weights. Names, paths and
``/v1/models`` all look right, so only the log-probs can tell: the learner's ``logp_gap``
grows with every step the policy moves away from v0, and the run must stop with the alarm's
message once it is above ``rollout.max_logp_gap`` for ``rollout.logp_gap_steps`` steps.
The control is the session's reference run: the same settings with honest workers, whose
gap stays below the bound at every step.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.integration.helpers import REFERENCE_SETS, REPO, cli_command
from trainer.train import EXIT_STOPPED

pytestmark = pytest.mark.integration
MAX_GAP = 2e-3  # float32 workers and learner: ~1e-6 (the reference run asserts < 1e-3)
PLUGIN = '''
import os, shutil, tempfile


def register():
    if os.environ.get("STONK_TEST_STALE_ADAPTER") != "1":
        return
    import msgspec
    from vllm.lora import worker_manager

    load = worker_manager.WorkerLoRAManager._load_adapter
    kept = {}

    def stale(self, request):
        if "path" not in kept:  # a copy: the store prunes old versions
            kept["path"] = shutil.copytree(request.lora_path, tempfile.mkdtemp() + "/v0")
        return load(self, msgspec.structs.replace(request, lora_path=kept["path"]))

    worker_manager.WorkerLoRAManager._load_adapter = stale
    print("stale-adapter test plugin on", flush=True)
'''


def stale_plugin(root):
    """A folder that, on PYTHONPATH, gives vLLM the stale-adapter plugin."""
    root.mkdir()
    (root / "stale_adapter_plugin.py").write_text(PLUGIN)
    info = root / "stale_adapter_plugin-0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: stale-adapter-plugin\n"
                                   "Version: 0\n")
    (info / "entry_points.txt").write_text("[vllm.general_plugins]\n"
                                           "stale = stale_adapter_plugin:register\n")
    return root


def test_a_worker_serving_a_stale_adapter_trips_the_parity_alarm(tmp_path, reference_run):
    plugin = stale_plugin(tmp_path / "plugin")
    env = dict(os.environ, PYTHONUNBUFFERED="1", STONK_TEST_STALE_ADAPTER="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(plugin),
                                                        os.environ.get("PYTHONPATH")])))
    cmd = cli_command(tmp_path, "stale", *REFERENCE_SETS, "train.steps=6",
                      f"rollout.max_logp_gap={MAX_GAP}", "rollout.logp_gap_steps=2")
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    out = proc.stdout + proc.stderr
    run_dir = tmp_path / "stale"
    (tmp_path / "stale.log").write_text(out)
    assert "stale-adapter test plugin on" in (run_dir / "logs" / "worker0.log").read_text()
    # a clean stop: its own exit code, and no torchrun traceback above the ranks' one line
    assert proc.returncode == EXIT_STOPPED, out[-4000:]
    assert "Traceback" not in out and "ChildFailedError" not in out, out[-4000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"[launch] learner exited with code {EXIT_STOPPED}; the last complete checkpoint"), out
    assert "the workers' samples do not match the learner's policy" in out, out[-4000:]
    assert "[stop] rank 0: logp_gap" in out and "for 2 steps in a row" in out, out[-4000:]
    assert "[stop] rank 1" not in out  # one explanation, from rank 0

    gaps = {r["step"]: r["logp_gap"] for r in
            map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}
    assert gaps[1] < 1e-4  # v0 is what the stale worker keeps: step 1 samples honestly
    over = [s for s, g in gaps.items() if g > MAX_GAP]
    stop = over[1]  # the second step in a row above the bound
    assert over[:2] == [over[0], over[0] + 1] and max(gaps) == stop < 6, gaps
    ref = [json.loads(x)["logp_gap"] for x in
           (reference_run[0] / "metrics.jsonl").read_text().splitlines()]
    assert max(ref) < MAX_GAP / 10, ref  # the same settings with honest workers
