"""Hand-checked cases for every reward component, and the task's batch scoring."""

import pytest

from trainer.tasks.stock.answer import parse_answer
from trainer.tasks.stock.config import DataConfig, StockRewardConfig
from trainer.tasks.stock.rewards import (
    Facts,
    accuracy,
    accuracy_skew,
    calibration,
    coherence,
    confidence,
    data_usage,
    diversity,
    magnitude,
)
from trainer.tasks.stock.task import StockTask

AAPL = Facts(label="UP", closes=[150.00, 153.50, 156.20], changes_pct=[2.3333, 1.7590],
             dates=["2024-03-04", "2024-03-05"], next_change_pct=0.9)


def ans(reasoning="", prediction="UP", conf="70", change=None):
    text = f"Reasoning: {reasoning}\nPrediction: {prediction}\nConfidence: {conf}%"
    return parse_answer(text + (f"\nExpected change: {change}%" if change is not None else ""))


def test_accuracy():
    assert accuracy(ans(prediction="UP"), AAPL) == 0.6
    assert accuracy(ans(prediction="DOWN"), AAPL) == 0.0
    assert accuracy(parse_answer("no answer"), AAPL) == 0.0


@pytest.mark.parametrize("reasoning, expected", [
    # three right figures, nothing invented: full credit
    ("The close went from 150.00 to 153.50 and then 156.20 in two sessions.", 0.2),
    # a change computed across the window (156.20 / 150.00 - 1 = 4.13%) and in dollars (6.20)
    ("Over the two days it gained 4.13% in total, 6.20 dollars, now at 156.20 after rising.",
     0.2),
    # shown dates count as right figures; an unshown one as wrong
    ("On 2024-03-04 it closed at 153.50 and on 2024-03-05 at 156.20, both up days.", 0.2),
    ("On 2024-03-04 it closed at 153.50 and on 1999-01-01 at 156.20, both up days.",
     0.2 * 3 / 4),
    # invented numbers earn nothing; half invented earn part
    ("The price rose from 140.00 to 170.00 (+21.43%) and then 180.00, a strong move.", 0.0),
    ("The price rose from 150.00 to 153.50 and to 156.20, then 999.00 and 888.00 and 777.00.",
     0.2 * 0.5),
    # a wrongly computed change is a wrong figure
    ("From 150.00 to 156.20 is a gain of 9.99% over the two days shown here.", 0.2 * 2 / 3 * 2 / 3),
    # repeating one right figure does not add up to three
    ("It closed at 156.20, yes 156.20, indeed 156.20, at 156.20 again today.", 0.2 / 3),
    # day counts are neither right nor wrong; generic text earns nothing
    ("There were 2 up days and 0 down days, closing at 156.20 from 150.00 and 153.50.", 0.2),
    ("It will go up.", 0.0),
    ("It will go up because the trend is strong and buyers are here.", 0.0),  # no figure
])
def test_data_usage_hand_cases(reasoning, expected):
    assert data_usage(ans(reasoning), AAPL) == pytest.approx(expected)


def test_data_usage_on_prompt_rows_uses_the_prompts_numbers():
    row = Facts(label="UP", prompt_numbers=[187.44, 185.10, 1.26, 3.5])
    assert data_usage(ans("Close 187.44 versus 185.10 the day before, up 1.26% on volume."),
                      row) == pytest.approx(0.2)
    assert data_usage(ans("Close 190.00 versus 180.00 the day before, up 5.55% on volume."),
                      row) == 0.0


def test_coherence_hand_cases():
    base = "Prices {} from 150.00 to 156.20 over the last two days."
    assert coherence(ans(base.format("rose"), "UP"), AAPL) == 0.2
    assert coherence(ans(base.format("rose"), "DOWN"), AAPL) == 0.1  # trend right only
    assert coherence(ans(base.format("fell"), "DOWN"), AAPL) == 0.1  # follows, data wrong
    assert coherence(ans(base.format("fell"), "UP"), AAPL) == 0.0
    reversal = "Prices rose from 150.00 to 156.20, stretched, so expect a reversal tomorrow."
    assert coherence(ans(reversal, "DOWN"), AAPL) == 0.2
    prompt_row = Facts(label="UP", prompt_numbers=[150.0])  # trend unknown: half at most
    assert coherence(ans(base.format("rose"), "UP"), prompt_row) == 0.1
    assert coherence(ans("It will go up.", "UP"), AAPL) == 0.0


@pytest.mark.parametrize("prediction, conf, expected", [
    ("UP", "95", 0.0), ("UP", "10", 0.0),  # right: no cost at any confidence
    ("DOWN", "0", -0.02), ("DOWN", "50", -0.085), ("DOWN", "100", -0.15),  # sliding scale
])
def test_confidence_costs_more_when_wrong_and_sure(prediction, conf, expected):
    assert confidence(ans("x", prediction, conf), AAPL) == pytest.approx(expected)


def test_confidence_missing_format_costs_the_most():
    assert confidence(parse_answer("Prediction: DOWN"), AAPL) == pytest.approx(-0.15)
    assert confidence(parse_answer("gibberish"), AAPL) == pytest.approx(-0.15)
    assert confidence(parse_answer("Prediction: UP"), AAPL) == 0.0


def test_calibration_hand_cases_and_it_is_proper():
    assert calibration(ans("x", "UP", "100"), AAPL) == pytest.approx(0.2)
    assert calibration(ans("x", "DOWN", "100"), AAPL) == pytest.approx(0.0)
    assert calibration(ans("x", "UP", "50"), AAPL) == pytest.approx(0.15)
    assert calibration(parse_answer("Prediction: UP"), AAPL) == 0.0
    # when the answer is right 70% of the time, stating 70% earns the most on average
    wrong = Facts(label="DOWN", closes=AAPL.closes, changes_pct=AAPL.changes_pct)
    expected = {c: 0.7 * calibration(ans("x", "UP", str(c)), AAPL)
                + 0.3 * calibration(ans("x", "UP", str(c)), wrong) for c in range(0, 101, 5)}
    assert max(expected, key=expected.get) == 70


def test_magnitude_hand_cases():
    assert magnitude(ans("x", "UP", change="+0.9"), AAPL) == pytest.approx(0.2)
    assert magnitude(ans("x", "UP", change="+1.35"), AAPL) == pytest.approx(0.1)
    tiny_move = Facts(label="UP", next_change_pct=0.1)  # errors are relative to at least 0.5%
    assert magnitude(ans("x", "UP", change="+0.3"), tiny_move) == pytest.approx(0.2 * 0.6)
    assert magnitude(ans("x", "UP", change="+0.9"), tiny_move) == 0.0
    assert magnitude(ans("x", "UP", change="-0.9"), AAPL) == 0.0  # sign against its prediction
    assert magnitude(ans("x", "DOWN", change="-0.9"), AAPL) == 0.0  # wrong direction
    assert magnitude(ans("x", "UP"), AAPL) == 0.0  # optional line missing
    assert magnitude(ans("x", "UP", change="+0.9"), Facts(label="UP")) == 0.0  # outcome unknown


def test_accuracy_skew_pays_the_minority_more_and_guessing_nothing_extra():
    up_heavy = {"up_ratio": 0.6}
    up_right = accuracy_skew(ans("x", "UP"), Facts(label="UP", **up_heavy))
    down_right = accuracy_skew(ans("x", "DOWN"), Facts(label="DOWN", **up_heavy))
    assert (up_right, down_right) == (pytest.approx(0.4), pytest.approx(0.6))
    assert 0.6 * up_right == pytest.approx(0.4 * down_right)  # always-UP == always-DOWN
    assert accuracy_skew(ans("x", "UP"), Facts(label="DOWN", **up_heavy)) == 0.0
    assert accuracy_skew(ans("x", "UP"), AAPL) == accuracy(ans("x", "UP"), AAPL)  # 50/50


def _preds(*directions):
    return [parse_answer(f"Prediction: {d}") for d in directions]


def test_diversity_penalises_only_the_over_represented_direction():
    facts = [AAPL] * 8
    assert diversity(_preds(*["UP"] * 8), facts) == [-0.1] * 8
    assert diversity(_preds(*["UP"] * 5, *["DOWN"] * 3), facts) == [0.0] * 8  # within slack
    seven = diversity(_preds(*["UP"] * 7, "DOWN"), facts)
    assert seven[:7] == [pytest.approx(-0.1 * (0.375 - 0.2) / 0.3)] * 7 and seven[7] == 0.0
    assert diversity(_preds(*["DOWN"] * 8), facts) == [-0.1] * 8
    assert diversity(_preds("UP", "none", "none"), facts[:3]) == [0.0] * 3  # too few to judge


def test_diversity_measures_against_the_base_rate():
    skewed = [Facts(label="UP", up_ratio=0.7)] * 10
    assert diversity(_preds(*["UP"] * 8, "DOWN", "DOWN"), skewed) == [0.0] * 10  # 80% ~ 70%
    assert diversity(_preds(*["UP"] * 10), skewed)[0] == pytest.approx(-0.1)
    assert diversity(_preds(*["DOWN"] * 7, *["UP"] * 3), skewed)[0] == pytest.approx(
        -0.1 * (0.4 - 0.2) / (0.7 - 0.2))


def test_task_score_batch_nests_like_its_input_and_sees_the_whole_batch():
    task = StockTask(DataConfig(source="synthetic", synthetic_days=300),
                     StockRewardConfig(weights={"accuracy": 1.0, "diversity": 1.0}))
    samples = task.split("train")[:3]
    groups = [["Prediction: UP"] * 2, ["Prediction: UP"] * 3, ["Prediction: UP"]]
    scored = task.score_batch(samples, groups)
    assert [len(g) for g in scored] == [2, 3, 1]
    assert all(c["diversity"] == pytest.approx(-0.1) for g in scored for c in g)
    for sample, group in zip(samples, scored, strict=True):
        right = 0.6 if sample.meta["label"] == "UP" else 0.0
        assert all(c["accuracy"] == right for c in group)
    assert task.score(samples[0], "Prediction: UP")["diversity"] == 0.0  # a lone completion
