"""Session fixtures shared by integration modules: the uninterrupted reference run, a short
two-stage demo (its runs' adapters are what eval, predict, serve and export use), and a
prompts-task run with sampling overlapped with training (each stack start costs ~30 s here,
so one run serves the checks of both features)."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.integration.helpers import (
    PROMPTS_RUN_STEPS,
    REFERENCE_SETS,
    REPO,
    cli_command,
    demo_command,
)


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, warm_model):
    """(run folder, launcher output) of a 4-step Stage I run with REFERENCE_SETS: the
    end-to-end checks read it, and a killed-and-resumed run must reproduce it."""
    root = tmp_path_factory.mktemp("reference")
    proc = subprocess.run(cli_command(root, "ref", *REFERENCE_SETS), cwd=REPO,
                          capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    out = proc.stdout + proc.stderr
    (root / "ref.log").write_text(out)
    assert proc.returncode == 0, out[-4000:]
    return root / "ref", out


@pytest.fixture(scope="session")
def demo(tmp_path_factory, warm_model):
    root = tmp_path_factory.mktemp("demo")
    proc = subprocess.run(demo_command(root), cwd=REPO, capture_output=True, text=True,
                          timeout=1500)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    return root / "d", proc.stdout


@pytest.fixture(scope="session")
def prompts_run(tmp_path_factory, warm_model):
    """(run folder, launcher output) of a 3-step run of configs/demo/prompts.yaml (plain
    GRPO on the shipped arithmetic example) with ``rollout.overlap``: each rank samples
    step k+1 while its learner trains step k; a checkpoint at step 2, every adapter kept."""
    root = tmp_path_factory.mktemp("prompts")
    cmd = cli_command(root, "p", f"train.steps={PROMPTS_RUN_STEPS}", "eval.every_steps=0",
                      "run.keep_adapter_versions=10", "rollout.overlap=true",
                      "run.checkpoint_every=2", "rollout.base_port=8440",
                      "launch.main_process_port=29640", config="configs/demo/prompts.yaml")
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    out = proc.stdout + proc.stderr
    (root / "p.log").write_text(out)
    assert proc.returncode == 0, out[-4000:]
    return root / "p", out
