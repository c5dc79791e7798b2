"""Both stages end to end on the embedded model (a few steps each) through `stonk demo`:
runs, gate.json, reports, valid PNGs, the merged Stage II base, and the gate's refusal."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from tests.integration.helpers import REPO, signal_tree, wait_until

pytestmark = pytest.mark.integration
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _valid_png(path):
    import matplotlib.image as mpimg

    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50, path


def test_stage1_gate_report_and_plots(demo):
    root, _ = demo
    s1 = root / "stage1"
    gate = json.loads((s1 / "gate.json").read_text())
    names = {i["name"] for i in gate["indicators"]}
    assert len(names) >= 5 and all({"value", "threshold", "passed"} <= set(i)
                                   for i in gate["indicators"])
    assert "## " in (s1 / "report.md").read_text()
    pngs = sorted(s1.glob("*.png"))
    assert {p.name for p in pngs} >= {"curves.png", "components.png", "roc.png",
                                      "reliability.png", "confusion.png"}
    for p in pngs:
        _valid_png(p)
    assert (s1 / "checkpoints" / "best" / "adapter" / "adapter_model.safetensors").is_file()
    rows = [json.loads(x) for x in (s1 / "metrics.jsonl").read_text().splitlines()]
    assert all("eval/accuracy" in r for r in rows)  # eval.every_steps=1


def test_stage2_starts_from_the_merged_stage1_model(demo):
    root, _ = demo
    s2 = root / "stage2"
    record = json.loads((s2 / "stage2.json").read_text())
    gate = json.loads((root / "stage1" / "gate.json").read_text())
    assert record["forced"] == (not gate["passed"])
    assert (s2 / "base" / "model.safetensors").is_file()
    cfg = (s2 / "config.yaml").read_text()
    assert f"name_or_path: {s2 / 'base'}" in cfg and "stage: 2" in cfg
    adapter_cfg = json.loads((s2 / "adapters/v000002/adapter_config.json").read_text())
    assert adapter_cfg["r"] == 8
    assert (s2 / "report.md").is_file() and (s2 / "eval" / "test.json").is_file()
    for p in s2.glob("*.png"):
        _valid_png(p)


def test_demo_summary_and_real_data_report(demo):
    root, out = demo
    summary = (root / "SUMMARY.md").read_text()
    assert "model / Bayes rule" in summary and "answers that parse" in summary
    assert "the Bayes rule on the same windows" in summary and "against the simple" in summary
    real = root / "stage2" / "bundled-data"  # Stage II's eval.also_on: [bundled]
    assert "data source: bundled" in (real / "report.md").read_text()
    assert json.loads((real / "eval" / "test.json").read_text())["metrics"]["n"] == 16
    assert "Stage II model on real prices" in summary
    assert "[demo] summary:" in out


def test_stage2_refuses_a_failed_gate_without_force(demo, tmp_path):
    root, _ = demo
    # on a copy of the Stage I run: its gate is made to fail, the session's demo keeps its own
    shared_gate = (root / "stage1" / "gate.json").read_text()
    s1, out = tmp_path / "stage1", tmp_path / "out"
    shutil.copytree(root / "stage1", s1, symlinks=True)
    gate = json.loads((s1 / "gate.json").read_text())
    if gate["passed"]:
        gate["passed"] = False
        gate["indicators"][0]["passed"] = False
        (s1 / "gate.json").write_text(json.dumps(gate))
    proc = subprocess.run(
        [sys.executable, "-m", "launch.cli", "stage2", "--config", "configs/demo/stage2.yaml",
         "--stage1-run", str(s1), "--set", f"run.output_dir={out}"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "promotion gate did not pass" in proc.stderr and "FORCE=1" in proc.stderr
    assert not list(out.glob("*/base"))  # nothing merged, nothing started
    assert (root / "stage1" / "gate.json").read_text() == shared_gate


def test_eval_of_a_runs_adapter_reproduces_the_runs_own_evaluation(demo, tmp_path):
    """`stonk eval` serves the run's latest adapter on a fresh worker: greedy answers on the
    same validation samples as the run's final evaluation, a report and plots in --out."""
    root, _ = demo
    s1 = root / "stage1"
    proc = subprocess.run(
        [sys.executable, "-m", "launch.cli", "eval", "--run", str(s1), "--split", "val",
         "--split", "test", "--adapter", "latest", "--samples", "8", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[eval] val: accuracy" in proc.stdout and "[eval] test: accuracy" in proc.stdout
    got = json.loads((tmp_path / "eval" / "val.json").read_text())
    assert got["metrics"]["n"] == 8 and len(got["records"]) == 8
    own = json.loads((s1 / "eval" / "val.json").read_text())["records"][:8]
    # the same adapter weights, greedy: the same answers (a batch-order rounding may flip a
    # near tie, so one of the eight may differ)
    same = sum(a["text"] == b["text"] for a, b in zip(got["records"], own, strict=True))
    assert same >= 7, [(a["text"], b["text"]) for a, b in zip(got["records"], own, strict=True)]
    assert json.loads((tmp_path / "eval" / "test.json").read_text())["metrics"]["n"] == 8
    assert "step_000002/adapter" in (tmp_path / "report.md").read_text()
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert set(summary["evals"]) == {"val", "test"} and "roc_auc" in summary["evals"]["test"]
    for name in ("roc.png", "reliability.png", "confusion.png"):
        _valid_png(tmp_path / name)


def test_stage2_on_slurm_resumes_a_requeued_job_without_merging_again(demo, tmp_path):
    """Stage II as a one-node Slurm job: attempt 0 merges the Stage I model, gets Slurm's
    time-limit warning (SIGUSR1 to every process) and stops after a step with its
    checkpoint; attempt 1 (``SLURM_RESTART_COUNT=1``) continues from it on the merged base
    it already has, and finishes."""
    root, _ = demo
    env = dict(os.environ, PYTHONUNBUFFERED="1", SLURM_JOB_NODELIST="localhost",
               SLURM_NNODES="1", SLURM_NODEID="0", SLURM_JOB_ID="6262")
    cmd = [sys.executable, "-m", "launch.cli", "slurm", "--config", "configs/demo/stage2.yaml",
           "--stage1-run", str(root / "stage1"), "--force",  # 2 demo steps fail the gate
           "--set", f"run.output_dir={tmp_path}",
           "--set", "train.steps=3", "--set", "eval.final_samples=16", "--set",
           "eval.num_samples=8", "--set", "rollout.base_port=8480",
           "--set", "eval.also_on=[]"]  # the demo's own Stage II evaluates on bundled data
    logs = [tmp_path / f"attempt{k}.log" for k in (0, 1)]
    first = subprocess.Popen(cmd, cwd=REPO, env=dict(env, SLURM_RESTART_COUNT="0"),
                             stdout=open(logs[0], "w"), stderr=subprocess.STDOUT)
    wait_until(lambda: "step 1/3" in logs[0].read_text(), "step 1", [first])
    signal_tree([first], signal.SIGUSR1)  # as Slurm signals every process of the step
    first.wait(timeout=600)
    run_dir = tmp_path / "stage2-job6262"
    out0 = logs[0].read_text()
    stopped = (run_dir / "checkpoints" / "LATEST").read_text().strip()
    assert "[stage2] merging" in out0 and "stopped after step" in out0, out0[-3000:]
    assert stopped in ("step_000001", "step_000002"), stopped
    merged = (run_dir / "stage2.json").stat().st_mtime

    second = subprocess.run(cmd, cwd=REPO, env=dict(env, SLURM_RESTART_COUNT="1"),
                            capture_output=True, text=True, timeout=900)
    out1 = second.stdout + second.stderr
    assert second.returncode == 0, out1[-3000:]
    assert "continuing" in out1 and f"resumed from {run_dir / 'checkpoints' / stopped}" in out1
    assert "[stage2] merging" not in out1  # the merged base of attempt 0 is used
    assert (run_dir / "stage2.json").stat().st_mtime == merged
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]


def test_the_demo_again_sets_the_earlier_one_aside_and_a_stage_refuses_a_used_folder(
        demo, tmp_path):
    """The same demo command again first moves the earlier demo aside, kept whole beside the
    new folder, and starts fresh; `stonk stage1` into a folder that holds a run refuses with
    one line naming RESUME= and a new run.name. On a copy of the session's demo in this
    test's own folder (the shared fixture's run must stay where the other tests read it).
    The second demo is stopped at its first stage by a bad setting, right after the move:
    running both stages again would only repeat what the session's demo shows (90 s of the
    suite)."""
    shared, _ = demo
    shared_rows = (shared / "stage1" / "metrics.jsonl").read_text()
    root = tmp_path / shared.name
    shutil.copytree(shared, root, symlinks=True)
    proc = subprocess.run([sys.executable, "-m", "launch.cli", "stage1", "--config",
                           "configs/demo/stage1.yaml", "--set", f"run.output_dir={root}",
                           "--set", "run.name=stage1"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "already holds a run" in err[0] and "RESUME=" in err[0]
    assert "run.name" in err[0]
    first = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    again = subprocess.run([sys.executable, "-m", "launch.cli", "demo", "--name", root.name,
                            "--output-dir", str(root.parent), "--set", "train.steps=0"],
                           cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and "train.steps: must be at least 1" in again.stderr
    moved = [p for p in root.parent.iterdir() if p.name.startswith(f"{root.name}-")]
    assert len(moved) == 1 and f"moved to {moved[0]}" in again.stdout
    assert {p.relative_to(moved[0]): p.read_bytes() for p in moved[0].rglob("*")
            if p.is_file()} == first  # the earlier demo, whole
    assert not (root / "stage1" / "metrics.jsonl").exists()  # the new one starts fresh
    # the session's demo is untouched: nothing moved beside it, its run as it was
    assert (shared / "stage1" / "metrics.jsonl").read_text() == shared_rows
    assert not [p for p in shared.parent.iterdir() if p.name.startswith(f"{shared.name}-")]
