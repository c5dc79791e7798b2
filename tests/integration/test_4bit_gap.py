"""A 4-bit (nf4) learner beside full-precision workers: step 1 samples under v0 (LoRA still
zero), so its ``logp_gap`` is the gap between the learner's quantized base and the base the
workers serve. On the embedded model (float32 workers) it measured 1.3e-3 nats per token
(2026-12-02, this CPU box; the float32 learner's is ~1e-6), far below the bound here. On
Qwen2.5-1.5B on a GPU (bf16 workers) `make gpu-check` prints it."""

from __future__ import annotations

import json
import math
import os
import subprocess

import pytest

from tests.integration.helpers import REPO, cli_command

pytestmark = pytest.mark.integration
BOUND = 0.05  # nats per token; the importance weight corrects a gap, but not an unbounded one


def _step1(run_dir):
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])


def test_nf4_learner_logs_its_base_gap_at_step_1(tmp_path, reference_run):
    proc = subprocess.run(
        cli_command(tmp_path, "nf4", "train.steps=1", "model.load_in_4bit=true"), cwd=REPO,
        capture_output=True, text=True, timeout=900, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    row = _step1(tmp_path / "nf4")
    gap, full = row["logp_gap"], _step1(reference_run[0])["logp_gap"]
    assert row["step"] == 1 and row["sampled_with_version"] == 0
    assert math.isfinite(gap) and gap < BOUND, gap
    # the same check on the float32 learner's reference run: 4-bit visibly quantized the base
    assert gap > 10 * full, (gap, full)
    assert f"(nf4 4-bit base) vs workers (float32) log-prob gap {gap:.2e}" in out
