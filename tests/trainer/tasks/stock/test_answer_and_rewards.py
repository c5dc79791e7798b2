"""Answer parsing (never throws), the seed's examples, and the reward bounds for any text."""

from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.tasks.base import Sample
from trainer.tasks.stock.answer import SYSTEM_PROMPT, parse_answer
from trainer.tasks.stock.config import REWARD_COMPONENTS, DataConfig, StockRewardConfig
from trainer.tasks.stock.rewards import (
    COMPONENTS,
    STAGE1_WEIGHTS,
    STAGE2_WEIGHTS,
    Facts,
    bounds,
    score,
    score_batch,
)
from trainer.tasks.stock.task import StockTask
from trainer.tasks.stock.warm_answers import templated_answer

ALL_WEIGHTS = dict.fromkeys(COMPONENTS, 1.0)

# The seed's examples: AAPL 150.00 -> 153.50 -> 156.20, answer UP 87% with step-by-step %s
AAPL = Facts(label="UP", closes=[150.00, 153.50, 156.20], changes_pct=[2.3333, 1.7590],
             next_change_pct=0.9)
GOOD = ("Reasoning: The price rose from 150.00 to 153.50 (+2.33%), then to 156.20 (+1.76%). "
        "Two consecutive up days, a total gain of 4.13%, so the trend is up.\n"
        "Prediction: UP\nConfidence: 87%")
# TSLA 220.00 -> 210.50 -> 204.75, answer UP 65% with "It will go up."
TSLA = Facts(label="DOWN", closes=[220.00, 210.50, 204.75], changes_pct=[-4.3182, -2.7316])
BAD = "Reasoning: It will go up.\nPrediction: UP\nConfidence: 65%"

TEXT = st.one_of(
    st.text(),
    st.binary().map(lambda b: b.decode("latin-1")),
    st.text(alphabet="Prediction:UPDOWNConfidence%Expected change+-.0123456789 *\n", max_size=4000),
    st.builds(lambda r, p, c, e: f"Reasoning: {r}\nPrediction: {p}\nConfidence: {c}%\n"
                                 f"Expected change: {e}%",
              st.text(max_size=300), st.sampled_from(["UP", "DOWN", "up", "sideways"]),
              st.integers(-5, 400), st.floats(allow_nan=True, allow_infinity=True)),
)


def test_parse_good_answer():
    a = parse_answer(GOOD)
    assert (a.prediction, a.confidence, a.expected_change, a.problems) == ("UP", 0.87, None, [])
    assert a.reasoning.startswith("The price rose") and a.reasoning.endswith("trend is up.")


def test_parse_expected_change_and_bold_labels():
    a = parse_answer("**Reasoning:** Up 3 of 5 days, from 10.00 to 10.50.\n"
                     "**Prediction:** DOWN\n**Confidence:** 62\nExpected change: -0.8%")
    assert (a.prediction, a.confidence, a.expected_change) == ("DOWN", 0.62, -0.8)
    assert a.reasoning == "Up 3 of 5 days, from 10.00 to 10.50." and a.valid
    assert parse_answer("Prediction: UP\nExpected change: 0.5").expected_change == 0.5
    far = parse_answer("Prediction: UP\nExpected change: +250%")
    assert far.expected_change is None and "expected change 250.0% is beyond +/-100%" in far.problems


def test_parse_reports_problems():
    assert parse_answer("hello").problems == [
        "no 'Prediction: UP|DOWN' line", "no 'Confidence: N%' line", "no 'Reasoning:' text"]
    a = parse_answer("Reasoning: x\nPrediction: UP\nPrediction: DOWN\nConfidence: 150%")
    assert a.prediction is None and "conflicting predictions" in a.problems
    assert a.confidence is None and "confidence 150.0 is above 100" in a.problems
    assert parse_answer(None).problems == ["not text: NoneType"]
    assert not parse_answer("Prediction: UP").valid


def test_system_prompt_names_every_line_of_the_format():
    for label in ("Reasoning:", "Prediction: UP or DOWN", "Confidence:", "Expected change:"):
        assert label in SYSTEM_PROMPT


@settings(max_examples=300, deadline=None)
@given(TEXT)
def test_parser_never_throws_and_every_reward_stays_in_bounds(text):
    a = parse_answer(text)
    assert a.prediction in (None, "UP", "DOWN")
    assert a.confidence is None or 0.0 <= a.confidence <= 1.0
    assert a.expected_change is None or abs(a.expected_change) <= 100
    for weights in (STAGE1_WEIGHTS, STAGE2_WEIGHTS, ALL_WEIGHTS):
        lo, hi = bounds(weights)
        for facts in (AAPL, TSLA, Facts(label="UP", prompt_numbers=[1.5, 20.0], up_ratio=0.7)):
            total = sum(score(a, facts, weights).values())
            assert lo - 1e-9 <= total <= hi + 1e-9


@settings(max_examples=100, deadline=None)
@given(st.lists(TEXT, min_size=1, max_size=12))
def test_batch_totals_stay_in_bounds(texts):
    answers = [parse_answer(t) for t in texts]
    facts = [AAPL if i % 2 else TSLA for i in range(len(texts))]
    lo, hi = bounds(ALL_WEIGHTS)
    for row in score_batch(answers, facts, ALL_WEIGHTS):
        assert set(row) == set(COMPONENTS)
        assert lo - 1e-9 <= sum(row.values()) <= hi + 1e-9


def test_stage1_bounds_are_the_seeds_split_plus_costs():
    assert bounds(STAGE1_WEIGHTS) == (-0.25, 1.0)
    assert bounds({"accuracy": 1.0, "data_usage": 1.0, "coherence": 1.0}) == (0.0, 1.0)


def test_huge_and_pathological_inputs_are_cut_not_hung():
    assert parse_answer("Prediction: UP\n" + "9" * 5_000_000).prediction == "UP"
    for junk in (" " * 200_000, "*" * 200_000, "\n " * 100_000, "Reasoning:" * 20_000):
        parse_answer(junk)  # bounded: cut to MAX_PARSE_CHARS, no quadratic patterns


def test_seed_examples_good_far_above_bad():
    good = score(parse_answer(GOOD), AAPL, STAGE1_WEIGHTS)
    bad = score(parse_answer(BAD), TSLA, STAGE1_WEIGHTS)
    assert good == {"accuracy": 0.6, "data_usage": 0.2, "coherence": 0.2, "confidence": 0.0,
                    "diversity": 0.0}
    assert bad["accuracy"] == bad["data_usage"] == bad["coherence"] == 0.0
    assert abs(bad["confidence"] - -(0.02 + 0.13 * 0.65)) < 1e-12  # wrong at 65%: it costs
    assert sum(good.values()) - sum(bad.values()) > 1.0


def test_weights_pick_and_scale_components():
    s = score(parse_answer(GOOD), AAPL, {"accuracy": 0.5, "coherence": 2.0})
    assert s == {"accuracy": 0.3, "coherence": 0.4}


def test_component_names_match_the_config_list():
    assert set(COMPONENTS) == set(REWARD_COMPONENTS)


def test_warm_answers_parse_and_earn_reasoning_reward():
    """They state the trend right (coherence's first half); they cite no price figure (the
    embedded model cannot copy one), so data usage pays nothing."""
    import random

    rng = random.Random(0)
    for _ in range(20):
        a = parse_answer(templated_answer(AAPL.closes, rng))
        assert a.valid and a.problems == []
        got = score(a, AAPL, {"data_usage": 1.0, "coherence": 1.0})
        assert got["coherence"] >= 0.1 and got["data_usage"] == 0.0


def test_stock_task_balanced_splits_and_scoring():
    task = StockTask(DataConfig(source="bundled", tickers=["GOOG"], window=5,
                                train_end="2010-12-31", val_end="2011-12-31"), StockRewardConfig())
    d = task.describe()
    assert d["train_up_ratio"] == d["val_up_ratio"] == d["test_up_ratio"] == 0.5
    train, val, test = task.split("train"), task.split("val"), task.split("test")
    assert max(s.id.split(":")[1] for s in train) <= "2010-12-31" < min(
        s.id.split(":")[1] for s in val)
    assert max(s.id.split(":")[1] for s in val) <= "2011-12-31" < min(
        s.id.split(":")[1] for s in test)
    sample: Sample = train[0]
    assert "Will the next trading day's close be UP or DOWN?" in sample.messages[1]["content"]
    right = f"Reasoning: x\nPrediction: {sample.meta['label']}\nConfidence: 50%"
    assert task.score(sample, right)["accuracy"] == 0.6
    assert set(task.score(sample, right)) == set(StockRewardConfig().weights)
