"""The Super Saiyan gate: verdicts on crafted metric rows, gate.json round trip and errors."""

import json

import pytest

from trainer.gate import (
    GateError,
    failed_indicators,
    indicators,
    read_gate,
    write_gate,
)
from trainer.gate import check_gate as check_any_task
from trainer.tasks.stock.config import StockGateConfig
from trainer.tasks.stock.evaluation import GATE_INDICATORS

INDICATORS = indicators(GATE_INDICATORS)  # the stock task's gate: its crafted rows below


def check_gate(steps, final_eval, cfg):
    return check_any_task(steps, final_eval, cfg, GATE_INDICATORS)

CFG = StockGateConfig()  # reward >= 0.7 over 20 steps, acc >= 0.8, reasoning >= 0.5, loss 0.1 / 0.05
GOOD_EVAL = {"accuracy": 0.85, "reasoning_quality": 0.6}


def rows(rewards: list[float], losses: list[float]) -> list[dict]:
    return [{"step": i + 1, "reward/mean": r, "loss": lo}
            for i, (r, lo) in enumerate(zip(rewards, losses, strict=True))]


def good_rows() -> list[dict]:
    # 10 early bad steps, then 20 good ones: only the window counts
    return rows([0.1] * 10 + [0.8] * 20, [0.5] * 10 + [0.01, 0.03] * 10)


def by_name(result: dict) -> dict:
    return {i["name"]: i for i in result["indicators"]}


def test_passing_case_reports_every_indicator():
    result = check_gate(good_rows(), GOOD_EVAL, CFG)
    assert result["passed"] is True and failed_indicators(result) == []
    ind = by_name(result)
    assert list(ind) == list(INDICATORS)
    assert ind["avg_reward"]["value"] == pytest.approx(0.8)
    assert ind["loss_abs_mean"]["value"] == pytest.approx(0.02)
    assert ind["loss_std"]["value"] == pytest.approx(0.01)
    assert ind["val_accuracy"] == {"name": "val_accuracy", "label": "val accuracy",
                                   "value": 0.85, "threshold": 0.8, "op": ">=", "passed": True}
    assert ind["loss_std"]["op"] == "<=" and ind["loss_std"]["threshold"] == 0.05
    assert result["window"] == {"reward_window": 20, "reward_steps": 20, "loss_window": 20,
                                "loss_steps": 20, "short": False}
    assert result["notes"] == []
    json.dumps(result, allow_nan=False)


def _low_reward(s, e):
    for r in s[-20:]:
        r["reward/mean"] = 0.65


def _loss(values):
    def edit(s, e):
        for r, v in zip(s[-20:], values * 10, strict=True):
            r["loss"] = v
    return edit


FAILING_ALONE = {
    "avg_reward": (_low_reward, "avg reward 0.650 < 0.700"),
    "val_accuracy": (lambda s, e: e.update(accuracy=0.62), "val accuracy 0.620 < 0.800"),
    "reasoning_quality": (lambda s, e: e.update(reasoning_quality=0.4),
                          "reasoning quality 0.400 < 0.500"),
    "loss_abs_mean": (_loss([-0.21, -0.19]), "abs mean loss 0.200 > 0.100"),
    "loss_std": (_loss([0.1, -0.1]), "loss std 0.100 > 0.050"),
}


@pytest.mark.parametrize("name", list(FAILING_ALONE))
def test_each_indicator_fails_alone(name):
    steps, final_eval = good_rows(), dict(GOOD_EVAL)
    edit, line = FAILING_ALONE[name]
    edit(steps, final_eval)
    result = check_gate(steps, final_eval, CFG)
    assert result["passed"] is False
    assert [i["name"] for i in result["indicators"] if not i["passed"]] == [name]
    assert failed_indicators(result) == [line]


def test_thresholds_are_inclusive_and_configurable():
    steps = rows([0.7] * 20, [0.0] * 20)
    assert check_gate(steps, {"accuracy": 0.8, "reasoning_quality": 0.5}, CFG)["passed"]
    strict = StockGateConfig(min_avg_reward=0.75, min_val_accuracy=0.9)
    result = check_gate(steps, GOOD_EVAL, strict)
    assert [i["name"] for i in result["indicators"] if not i["passed"]] == [
        "avg_reward", "val_accuracy"]


def test_short_history_uses_what_there_is_and_says_so():
    result = check_gate(rows([0.9] * 5, [0.01] * 5), GOOD_EVAL, CFG)
    assert result["passed"] is True  # judged on the 5 steps there are
    assert result["window"]["short"] is True and result["window"]["reward_steps"] == 5
    assert result["notes"][0].startswith("reward/mean: 5 step(s), fewer than "
                                         "gate.reward_window (20)")
    assert check_gate(rows([0.9, 0.1], [0.0, 0.0]), GOOD_EVAL, CFG)["passed"] is False


def test_window_takes_the_rows_that_carry_the_metric():
    steps = good_rows()
    steps.insert(25, {"step": 25, "eval/accuracy": 0.9})  # an evaluation-only row
    result = check_gate(steps, GOOD_EVAL, CFG)
    assert result["passed"] is True and result["window"]["reward_steps"] == 20


def test_missing_values_fail_with_none_and_never_raise():
    result = check_gate([{"step": 1, "reward/mean": 0.9}], {}, CFG)
    ind = by_name(result)
    assert ind["avg_reward"]["passed"] is True
    for name in ("val_accuracy", "reasoning_quality", "loss_abs_mean", "loss_std"):
        assert ind[name]["value"] is None and ind[name]["passed"] is False
    assert "val accuracy missing (needs >= 0.800)" in failed_indicators(result)
    assert result["window"]["loss_steps"] == 0
    empty = check_gate([], None, CFG)
    assert empty["passed"] is False and all(i["value"] is None for i in empty["indicators"])
    assert "no final evaluation: its indicators fail" in empty["notes"]


def test_non_finite_values_fail_the_window():
    steps = good_rows()
    steps[-3]["loss"] = None  # MetricsWriter writes NaN as null
    steps[-2]["reward/mean"] = "nan"
    result = check_gate(steps, {"accuracy": float("nan"), "reasoning_quality": True}, CFG)
    assert all(i["value"] is None and not i["passed"] for i in result["indicators"])
    assert any("non-finite" in n for n in result["notes"])


def test_write_and_read_gate(tmp_path):
    result = check_gate(good_rows(), GOOD_EVAL, CFG)
    path = write_gate(tmp_path, result)
    assert path == tmp_path / "gate.json" and read_gate(tmp_path) == result
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gate.json"]  # no temp file left
    write_gate(tmp_path, check_gate([], None, CFG))  # replaces it
    assert read_gate(tmp_path)["passed"] is False


@pytest.mark.parametrize("content, why", [
    (None, "no gate result"),
    ("{not json", "unreadable gate result"),
    ('["passed"]', "not a gate result"),
    ('{"passed": "yes", "indicators": []}', "not a gate result"),
])
def test_read_gate_errors_name_the_file(tmp_path, content, why):
    if content is not None:
        (tmp_path / "gate.json").write_text(content)
    with pytest.raises(GateError, match=why) as err:
        read_gate(tmp_path)
    assert str(tmp_path / "gate.json") in str(err.value)


def test_a_task_without_its_own_indicators_is_gated_on_accuracy_reward_and_loss():
    result = check_any_task(good_rows(), {"accuracy": 0.85}, CFG)
    assert [i["name"] for i in result["indicators"]] == ["avg_reward", "val_accuracy",
                                                         "loss_abs_mean", "loss_std"]
    assert result["passed"] is True
