"""Stage I end to end: 1 real vLLM worker + 2 DeepSpeed learner ranks (gloo), 4 steps, with
the demo's recipe (the policy gradient on the decision tokens, the supervised anchor on the
warm start's answer, the balance term across both ranks, a cosine learning rate) and a KL
term on every token on top (the demo runs without one). The run is the session's
``reference_run``, which test_resume.py also compares a resumed run against.

Tolerance for "the worker samples with the adapter the learner pushed": float32 on both
sides, mean |worker logprob - recomputed logprob| < 1e-3 per step, and under the initial
adapter v0 the same completions must be at least 10x further off (so the check can fail).
"""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from tests.integration.helpers import alive, worker_logprob_gaps, worker_pids
from trainer.schedules import lr_factor

pytestmark = pytest.mark.integration
STEPS = 4  # REFERENCE_SETS
LR = 5.0e-3
LOGP_TOL_MEAN = 1e-3


@pytest.fixture(scope="module")
def run(reference_run):
    return reference_run


def _rows(run_dir, step):
    rows = []
    for path in sorted(run_dir.glob("rollouts.rank*.jsonl")):
        rows += [r for r in map(json.loads, path.read_text().splitlines()) if r["step"] == step]
    return rows


def test_two_learner_ranks_and_progress_line(run):
    run_dir, out = run
    assert "2 learner rank(s), 1 worker(s)" in out
    assert sorted(p.name for p in run_dir.glob("rollouts.rank*.jsonl")) == [
        "rollouts.rank0.jsonl", "rollouts.rank1.jsonl"]
    assert f"step {STEPS}/{STEPS}" in out and "ETA" in out and "s/step" in out


def test_worker_ends_serving_last_adapter(run):
    run_dir, _ = run
    served = json.loads((run_dir / "served_adapters.json").read_text())
    assert served and all(path.endswith(f"adapters/v{STEPS:06d}") for path in served.values())
    assert (run_dir / "adapters" / "LATEST").read_text().strip() == str(STEPS)


def test_metrics_per_step(run):
    run_dir, _ = run
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert [r["adapter_version"] for r in rows] == list(range(1, STEPS + 1))
    assert [r["sampled_with_version"] for r in rows] == list(range(0, STEPS))
    for r in rows:
        for key in ("reward/mean", "reward/accuracy", "reward/data_usage", "reward/coherence",
                    "loss", "kl", "clip_frac", "time/generate", "time/reward",
                    "time/learner", "time/sync", "task/accuracy", "task/format_valid"):
            assert key in r, key
        assert r["logp_gap"] < LOGP_TOL_MEAN  # learner's own check, every step
        # the lean and prediction words: a few of the ~40 tokens of an answer, not none
        assert 0 < r["pg_token_frac"] < 0.2, r["pg_token_frac"]
        # the warm start learned the anchor's text: its NLL is logged and stays low
        assert 0 < r["anchor_nll"] < 0.5, r["anchor_nll"]
        # the batch's mean lean over both ranks' anchor answers (both ranks log the same)
        assert 0 < r["balance_share"] < 1, r["balance_share"]
    assert rows[-1]["kl"] > 0  # the policy moved away from the reference
    # the learning rate of each step is the cosine schedule's, on every rank
    assert [r["lr"] for r in rows] == pytest.approx(
        [LR * lr_factor(k, STEPS, "cosine") for k in range(1, STEPS + 1)])


def test_lora_weights_changed(run):
    run_dir, _ = run
    v0 = load_file(run_dir / "adapters/v000000/adapter_model.safetensors")
    last = load_file(run_dir / f"adapters/v{STEPS:06d}/adapter_model.safetensors")
    b_keys = [k for k in v0 if "lora_B" in k]
    assert b_keys and all(v0[k].abs().sum() == 0 for k in b_keys)  # peft init: B = 0
    assert any(last[k].abs().sum() > 0 for k in b_keys)
    ckpt = run_dir / "checkpoints"
    assert (ckpt / "LATEST").read_text().strip() == f"step_{STEPS:06d}"
    assert (ckpt / "step_000002/adapter/adapter_model.safetensors").is_file()


def test_worker_logprobs_match_learner_under_pushed_adapter(run, warm_model):
    run_dir, _ = run
    rows = _rows(run_dir, STEPS)  # sampled under adapter v(STEPS-1)
    assert rows and {r["adapter_version"] for r in rows} == {STEPS - 1}
    gaps = worker_logprob_gaps(warm_model, run_dir, rows[:16], (STEPS - 1, 0))
    assert gaps[STEPS - 1] < LOGP_TOL_MEAN, gaps
    assert gaps[0] > 10 * gaps[STEPS - 1], gaps


def test_no_worker_outlives_the_run(run):
    run_dir, _ = run
    assert not [pid for pid in worker_pids(run_dir) if alive(pid)]


def test_tensorboard_holds_every_step_of_metrics_jsonl_and_the_config(run):
    """run.report_to: [tensorboard] (REFERENCE_SETS): the event files under trackers/ hold
    each step's metrics as metrics.jsonl has them, and the resolved config as
    hyper-parameters."""
    import yaml
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = run
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    folder = run_dir / "trackers" / run_dir.name  # one per project, written by rank 0 only
    assert len(list(folder.glob("events.out.tfevents.*"))) == 1
    acc = EventAccumulator(str(folder))
    acc.Reload()
    for key in ("loss", "reward/mean", "logp_gap", "lr"):
        got = acc.Scalars(key)
        assert [e.step for e in got] == [r["step"] for r in rows] == list(range(1, STEPS + 1))
        assert [e.value for e in got] == pytest.approx([r[key] for r in rows], rel=1e-6,
                                                        abs=1e-9)
    (hparams,) = (run_dir / "trackers").rglob("hparams.yml")
    config = yaml.safe_load(hparams.read_text())
    assert config["train.steps"] == STEPS and config["train.learning_rate"] == LR
