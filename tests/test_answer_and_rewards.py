"""Answer parsing (never throws) and the Stage I reward components."""

from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.config import DataConfig, RewardConfig
from trainer.tasks.base import Sample
from trainer.tasks.stock.answer import parse_answer
from trainer.tasks.stock.rewards import Facts, coherence, data_usage, score
from trainer.tasks.stock.task import StockTask

WEIGHTS = {"accuracy": 1.0, "data_usage": 1.0, "coherence": 1.0}

# The seed's examples: AAPL 150.00 -> 153.50 -> 156.20, answer UP 87% with step-by-step %s
AAPL = Facts(label="UP", closes=[150.00, 153.50, 156.20], changes_pct=[2.3333, 1.7590])
GOOD = ("Reasoning: The price rose from 150.00 to 153.50 (+2.33%), then to 156.20 (+1.76%). "
        "Two consecutive up days, a total gain of 4.13%, so the trend is up.\n"
        "Prediction: UP\nConfidence: 87%")
# TSLA 220.00 -> 210.50 -> 204.75, answer UP 65% with "It will go up."
TSLA = Facts(label="DOWN", closes=[220.00, 210.50, 204.75], changes_pct=[-4.3182, -2.7316])
BAD = "Reasoning: It will go up.\nPrediction: UP\nConfidence: 65%"


def test_parse_good_answer():
    a = parse_answer(GOOD)
    assert (a.prediction, a.confidence, a.problems) == ("UP", 0.87, [])
    assert a.reasoning.startswith("The price rose")


def test_parse_reports_problems():
    assert parse_answer("hello").problems == [
        "no 'Prediction: UP|DOWN' line", "no 'Confidence: N%' line", "no 'Reasoning:' text"]
    a = parse_answer("Reasoning: x\nPrediction: UP\nPrediction: DOWN\nConfidence: 150%")
    assert a.prediction is None and "conflicting predictions" in a.problems
    assert a.confidence is None and "confidence 150.0 is above 100" in a.problems
    assert parse_answer(None).problems == ["not text: NoneType"]


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.binary().map(lambda b: b.decode("latin-1")),
                 st.text(alphabet="Prediction:UPDOWNConfidence%0123456789 \n", max_size=4000)))
def test_parser_never_throws_and_rewards_stay_in_bounds(text):
    a = parse_answer(text)
    assert a.prediction in (None, "UP", "DOWN")
    assert a.confidence is None or 0.0 <= a.confidence <= 1.0
    total = sum(score(a, AAPL, WEIGHTS).values())
    assert 0.0 <= total <= 1.0


def test_huge_input_is_cut_not_hung():
    a = parse_answer("Prediction: UP\n" + "9" * 5_000_000)
    assert a.prediction == "UP"


def test_seed_examples_good_far_above_bad():
    good = score(parse_answer(GOOD), AAPL, WEIGHTS)
    bad = score(parse_answer(BAD), TSLA, WEIGHTS)
    assert good == {"accuracy": 0.6, "data_usage": 0.2, "coherence": 0.2}
    assert bad == {"accuracy": 0.0, "data_usage": 0.0, "coherence": 0.0}


def test_data_usage_punishes_invented_numbers():
    made_up = parse_answer("Reasoning: The price rose from 140.00 to 170.00 (+21.43%) and "
                           "then 180.00, a strong up move.\nPrediction: UP\nConfidence: 80%")
    assert data_usage(made_up, AAPL) == 0.0
    half = parse_answer("Reasoning: The price rose from 150.00 to 153.50 and to 156.20, "
                        "then 999.00 and 888.00 and 777.00.\nPrediction: UP\nConfidence: 80%")
    assert 0.0 < data_usage(half, AAPL) < 0.2


def test_coherence_hand_cases():
    base = "Reasoning: Prices {} from 150.00 to 156.20 over two days.\nPrediction: {}\nConfidence: 70%"
    assert coherence(parse_answer(base.format("rose", "UP")), AAPL) == 0.2
    assert coherence(parse_answer(base.format("rose", "DOWN")), AAPL) == 0.1  # trend right only
    assert coherence(parse_answer(base.format("fell", "DOWN")), AAPL) == 0.1  # follows, wrong data
    assert coherence(parse_answer(base.format("fell", "UP")), AAPL) == 0.0


def test_weights_scale_components():
    s = score(parse_answer(GOOD), AAPL, {"accuracy": 0.5})
    assert s == {"accuracy": 0.3, "data_usage": 0.0, "coherence": 0.0}


def test_stock_task_balanced_splits_and_scoring():
    task = StockTask(DataConfig(source="bundled", tickers=["GOOG"], window=5,
                                train_end="2010-12-31"), RewardConfig())
    d = task.describe()
    assert d["train_up_ratio"] == 0.5 and d["val_up_ratio"] == 0.5
    train, val = task.split("train"), task.split("val")
    assert max(s.id.split(":")[1] for s in train) <= "2010-12-31" < min(
        s.id.split(":")[1] for s in val)
    sample: Sample = train[0]
    assert "Will the next trading day's close be UP or DOWN?" in sample.messages[1]["content"]
    right = f"Reasoning: x\nPrediction: {sample.meta['label']}\nConfidence: 50%"
    assert task.score(sample, right)["accuracy"] == 0.6


def test_synthetic_market_follows_momentum_rule():
    from trainer.tasks.stock.data import MOMENTUM_P, synthetic_series, windows

    ws = windows(synthetic_series(4000, seed=3), 5)
    hits = sum((sum(c > 0 for c in w.changes_pct[-3:]) >= 2) == (w.label == "UP") for w in ws)
    assert abs(hits / len(ws) - MOMENTUM_P) < 0.03
