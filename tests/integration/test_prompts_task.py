"""The prompts task end to end through the launcher: the shipped arithmetic example on the
embedded model with plain GRPO (every token's policy gradient, KL to the base, no decision
terms), 1 real vLLM worker + 2 DeepSpeed learner ranks: the user's reward functions score
the samples, the adapter changes and is served, the evaluation and the gate come out. The
run is the session's ``prompts_run`` (tests/integration/conftest.py), whose sampling is also
overlapped with training (tests/integration/test_overlap.py reads it too)."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from tests.integration.helpers import PROMPTS_RUN_STEPS as STEPS
from tests.integration.helpers import REPO
from trainer.tasks.prompts.arithmetic import close_answer, exact_answer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def run(prompts_run):
    return prompts_run


def test_the_reward_functions_score_every_sampled_answer(run):
    run_dir, _ = run
    answers = {}
    for line in (REPO / "data/examples/arithmetic.jsonl").read_text().splitlines():
        row = json.loads(line)
        answers.setdefault(row["prompt"], row["answer"])
    rows = [json.loads(x) for p in sorted(run_dir.glob("rollouts.rank*.jsonl"))
            for x in p.read_text().splitlines()]
    assert {r["step"] for r in rows} == set(range(1, STEPS + 1))
    assert len(rows) == STEPS * 2 * 4 * 8  # steps x ranks x prompts a rank x group
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(REPO / "models/tiny-qwen2-fmt")
    for r in rows[:64]:
        prompt = tok.decode(r["prompt_ids"]).split("<|im_start|>user\n")[1].split("<|im_end|>")[0]
        exact = exact_answer(None, [r["text"]], [answers[prompt]])[0]
        close = close_answer(None, [r["text"]], [answers[prompt]])[0]
        assert r["components"] == {"exact_answer": exact, "close_answer": pytest.approx(close)}
        assert r["reward"] == pytest.approx(exact + close, abs=1e-6)
    assert len({r["reward"] for r in rows}) > 1  # the groups give GRPO something to learn from


def test_plain_grpo_trains_and_serves_the_adapter(run):
    run_dir, out = run
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["adapter_version"] for m in metrics] == list(range(1, STEPS + 1))
    for m in metrics:
        assert {"reward/exact_answer", "reward/close_answer", "kl", "policy_loss"} <= set(m)
        assert m["pg_token_frac"] == pytest.approx(1.0)  # every completion token
        assert not {"anchor_nll", "balance_share"} & set(m)
    assert any(m["kl"] > 0 for m in metrics[1:])  # the adapter moved off the base
    first = load_file(run_dir / "adapters/v000000/adapter_model.safetensors")
    last = load_file(run_dir / f"adapters/v{STEPS:06d}/adapter_model.safetensors")
    assert any((first[k] - last[k]).abs().max() > 0 for k in first)
    served = json.loads((run_dir / "served_adapters.json").read_text())
    assert all(p.endswith(f"adapters/v{STEPS:06d}") for p in served.values())
    assert "2 learner rank(s), 1 worker(s)" in out


def test_evaluation_report_and_gate(run):
    run_dir, out = run
    gate = json.loads((run_dir / "gate.json").read_text())
    assert [i["name"] for i in gate["indicators"]] == [
        "avg_reward", "val_accuracy", "loss_abs_mean", "loss_std"]
    report = (run_dir / "report.md").read_text()
    assert "task: prompts" in report and "| accuracy |" in report
    test = json.loads((run_dir / "eval" / "test.json").read_text())
    assert test["metrics"]["n"] == 16 and len(test["records"]) == 16
    assert "promotion gate:" in out
