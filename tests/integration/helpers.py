"""Helpers for integration tests: run the real CLI, inspect processes, recompute logprobs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import torch

REPO = Path(__file__).resolve().parents[2]
DEMO = "configs/demo/stage1.yaml"


# Tests judge mechanics, not the demo's accuracy: the end-of-run evaluation on 16 samples
# (the demo's 256 val + 256 test answers took 70 s of a 150 s run, 4 min with two workers),
# and 4 prompts a rank per step (the demo's 8 double a step's sampling and learner time)
TEST_SETS = ("eval.final_samples=16", "eval.num_samples=8", "train.prompts_per_rank=4")
# One uninterrupted run serves as the Stage I end-to-end run and as the reference that an
# interrupted, resumed run must reproduce (tests/integration/conftest.py)
REFERENCE_SETS = ("train.steps=4", "run.checkpoint_every=2", "train.learning_rate=5.0e-3",
                  "run.keep_adapter_versions=10", "rollout.health_check_interval_s=2",
                  "train.kl_coef=0.05",  # the demo runs KL 0: with it the reference pass runs
                  "run.report_to=[tensorboard]")
# steps of the session's prompts-task run with sampling overlapped (conftest.prompts_run)
PROMPTS_RUN_STEPS = 3


def set_flags(*sets: str) -> list[str]:
    """``--set KEY=VALUE`` for each override, as every stonk and trainer.train command takes."""
    return [x for s in sets for x in ("--set", s)]


def demo_worker_env() -> dict[str, str]:
    """The environment the launcher gives the demo's vLLM workers, for tests that start
    workers themselves: rollout.env (both cores for compute) and the forked engine core
    (rollout/cpu_engine_fork.py), but vLLM's own LoRA ops (tests that want the dense ops ask
    for them)."""
    from launch.run.runner import worker_flags
    from rollout import dense_lora
    from trainer.config import load_config

    cfg = load_config(REPO / DEMO)
    return {**worker_flags(cfg), dense_lora.ENV: "0", **cfg.rollout.env}


def cli_command(run_root: Path, name: str, *sets: str, config: str = DEMO) -> list[str]:
    """``stonk stage1`` on ``config`` into ``run_root/name``: TEST_SETS, then ``sets``."""
    return [sys.executable, "-m", "launch.cli", "stage1", "--config", config,
            *set_flags(f"run.output_dir={run_root}", f"run.name={name}", *TEST_SETS, *sets)]


def demo_command(root: Path, steps: int = 2) -> list[str]:
    """``stonk demo`` into ``root/d``: both stages, ``steps`` each, a short evaluation."""
    return [sys.executable, "-m", "launch.cli", "demo", "--name", "d", "--output-dir",
            str(root), "--stage1-steps", str(steps), "--stage2-steps", str(steps),
            *set_flags(*TEST_SETS, "eval.every_steps=1")]


def _terminal_signals() -> None:
    """In the child: Ctrl-C as a terminal delivers it. A shell that starts a job in the
    background (``make test &``) sets SIGINT to "ignore", children inherit that, and Python
    then installs no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_cli(run_root: Path, name: str, *sets: str, log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(cli_command(run_root, name, *sets), cwd=REPO, env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            preexec_fn=_terminal_signals)


def processes_mentioning(text: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and text in " ".join(
                    p.info["cmdline"] or []):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def signal_tree(procs: list[subprocess.Popen], sig: int) -> list[int]:
    """``sig`` to each process and all its descendants at once (as Slurm signals a job step,
    or a machine dies); the pids signalled."""
    pids = []
    for p in procs:
        try:
            pids += [p.pid] + [c.pid for c in psutil.Process(p.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    return pids


def wait_until(predicate, what: str, procs: list[subprocess.Popen],
               timeout: float = 600) -> None:
    """Poll ``predicate`` until true; fail if any of ``procs`` ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert all(p.poll() is None for p in procs), f"the run ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def worker_pids(run_dir: Path) -> list[int]:
    return [w["pid"] for w in json.loads((run_dir / "workers.json").read_text())["workers"]]


def hf_logprobs(model, prompt_ids: list[int], token_ids: list[int]) -> torch.Tensor:
    """log p(token_ids | prompt) from a transformers/peft model, float32, unbatched."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt_ids + token_ids])).logits[0].float()
    logp = torch.log_softmax(logits[len(prompt_ids) - 1:len(prompt_ids) + len(token_ids) - 1], -1)
    return logp.gather(-1, torch.tensor(token_ids).unsqueeze(-1)).squeeze(-1)


def worker_logprob_gaps(base_model: Path, run_dir: Path, rows: list[dict],
                        versions) -> dict[int, float]:
    """For each adapter version of the run: the mean |log p| gap between the learner's
    model (base + ``adapters/v<version>``, transformers + peft) and the worker's recorded
    log-probs of the rollout ``rows``' tokens; near 0 only for the version that sampled."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    gaps = {}
    for version in versions:
        model = PeftModel.from_pretrained(base, run_dir / f"adapters/v{version:06d}").eval()
        diffs = [(hf_logprobs(model, r["prompt_ids"], r["token_ids"])
                  - torch.tensor(r["worker_logprobs"])).abs() for r in rows]
        gaps[version] = torch.cat(diffs).mean().item()
        base = model.unload()
    return gaps


def assert_shared_prefix_held(out: str) -> None:
    """The learner ran with the shared-prefix layout (train.shared_prefix auto on the embedded
    model's SDPA) and its first-micro-batch check found it equal to one row per completion:
    no fallback warning."""
    assert "[learner] shared prefix: on" in out, out[-3000:]
    assert "shared-prefix layout's log-probs differ" not in out, out[-3000:]
