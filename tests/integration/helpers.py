"""Helpers for integration tests: run the real CLI, inspect processes, recompute logprobs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import torch

REPO = Path(__file__).resolve().parents[2]
DEMO = "configs/demo/stage1.yaml"


def cli_command(run_root: Path, name: str, *sets: str, config: str = DEMO) -> list[str]:
    cmd = [sys.executable, "-m", "launch.cli", "stage1", "--config", config,
           "--set", f"run.output_dir={run_root}", "--set", f"run.name={name}"]
    for s in sets:
        cmd += ["--set", s]
    return cmd


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


def worker_pids(run_dir: Path) -> list[int]:
    return [w["pid"] for w in json.loads((run_dir / "workers.json").read_text())["workers"]]


def hf_logprobs(model, prompt_ids: list[int], token_ids: list[int]) -> torch.Tensor:
    """log p(token_ids | prompt) from a transformers/peft model, float32, unbatched."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt_ids + token_ids])).logits[0].float()
    logp = torch.log_softmax(logits[len(prompt_ids) - 1:len(prompt_ids) + len(token_ids) - 1], -1)
    return logp.gather(-1, torch.tensor(token_ids).unsqueeze(-1)).squeeze(-1)
