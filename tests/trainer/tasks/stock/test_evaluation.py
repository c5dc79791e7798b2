"""Evaluation records and metrics on hand-checked completions, and the P(UP) readings."""

import json

import numpy as np
import pytest

from trainer.tasks.base import Sample
from trainer.tasks.stock.answer import parse_answer
from trainer.tasks.stock.config import DataConfig, StockRewardConfig
from trainer.tasks.stock.evaluation import reliability, summarize
from trainer.tasks.stock.rewards import Facts, score
from trainer.tasks.stock.rewards.probability import p_predicted, p_up, prior_shift

SYNTH = dict(source="synthetic", synthetic_days=4000, train_end="2010-12-31",
             val_end="2013-12-31")
GOOD = ("Reasoning: The price rose from 150.00 to 153.50 (+2.33%), then to 156.20 (+1.76%). "
        "Two consecutive up days, a total gain of 4.13%, so the trend is up.\n"
        "Prediction: UP\nConfidence: 87%")


def _answer(pred: str, conf: int) -> str:
    return f"Reasoning: short\nPrediction: {pred}\nConfidence: {conf}%"


def _sample(i: int, label: str) -> Sample:
    return Sample(id=f"s{i}", messages=[], meta={
        "label": label, "closes": [150.0, 153.5, 156.2], "changes_pct": [2.3333, 1.7590],
        "dates": [], "prompt_numbers": [], "next_change_pct": 1.0 if label == "UP" else -1.0})


# label, completion, p_up: 3 right, 2 wrong, 1 without any answer
CASES = [("UP", _answer("UP", 80), 0.8), ("UP", _answer("UP", 60), 0.6),
         ("UP", _answer("DOWN", 70), 0.3), ("DOWN", _answer("DOWN", 90), 0.1),
         ("DOWN", _answer("UP", 80), 0.8), ("DOWN", "I think it goes sideways.", 0.5)]


@pytest.fixture(scope="module")
def task():
    from trainer.tasks.stock.task import StockTask

    return StockTask(DataConfig(**SYNTH), StockRewardConfig())


@pytest.fixture(scope="module")
def crafted(task):
    samples = [_sample(i, label) for i, (label, _, _) in enumerate(CASES)]
    records = task.eval_records(samples, [c for _, c, _ in CASES])
    return samples, records


def test_records_are_json_and_carry_each_field(crafted):
    _, records = crafted
    json.loads(json.dumps(records))  # plain JSON, no numpy scalars
    assert [r["p_up"] for r in records] == pytest.approx([p for _, _, p in CASES])
    assert [r["prediction"] for r in records] == ["UP", "UP", "DOWN", "DOWN", "UP", None]
    assert [r["confidence"] for r in records[:5]] == [0.8, 0.6, 0.7, 0.9, 0.8]
    assert [r["format_valid"] for r in records] == [True] * 5 + [False]
    assert [r["correct"] for r in records] == [True, True, False, True, False, False]
    assert records[0]["components"]["accuracy"] == 0.6 and records[4]["reward"] < 0
    assert records[0]["reward"] == pytest.approx(sum(records[0]["components"].values()))
    assert records[5]["confidence"] is None and records[5]["next_change_pct"] == -1.0
    assert records[0]["components"]["diversity"] == 0.0  # a lone completion is no batch


def test_metrics_by_hand(crafted, task):
    samples, records = crafted
    m = summarize(records)
    assert m == task.evaluate(samples, [c for _, c, _ in CASES])
    json.loads(json.dumps(m))
    assert m["n"] == 6 and m["accuracy"] == pytest.approx(3 / 6)
    assert m["up_accuracy"] == pytest.approx(2 / 3) and m["down_accuracy"] == pytest.approx(1 / 3)
    assert m["format_valid"] == pytest.approx(5 / 6)
    assert m["predicted_up_ratio"] == pytest.approx(3 / 5) and m["actual_up_ratio"] == 0.5
    # pairs (UP score > DOWN score) of UP {.8,.6,.3} vs DOWN {.1,.8,.5}: 2.5 + 2 + 1 of 9
    assert m["roc_auc"] == pytest.approx(5.5 / 9)
    # bins: .1 (DOWN), .3 (UP), .5 (DOWN), .6 (UP), .8 twice (one UP)
    assert [b["count"] for b in m["reliability"]] == [0, 1, 0, 1, 0, 1, 1, 0, 2, 0]
    assert m["ece"] == pytest.approx((0.1 + 0.7 + 0.5 + 0.4 + 2 * 0.3) / 6)
    assert m["confusion"] == {"UP": {"UP": 2, "DOWN": 1, "invalid": 0},
                              "DOWN": {"UP": 1, "DOWN": 1, "invalid": 1}}
    assert m["reward/mean"] == pytest.approx(sum(r["reward"] for r in records) / 6)
    assert m["reward/accuracy"] == pytest.approx(3 * 0.6 / 6)
    # crafted samples carry no oracle
    assert not {"bayes_rule_accuracy", "bayes_expected_accuracy", "of_bayes_rule"} & set(m)


def test_reliability_bins():
    bins, ece = reliability(np.array([0.1, 0.8, 0.8, 1.0]), np.array([0.0, 1.0, 0.0, 1.0]))
    assert len(bins) == 10 and bins[1] == {"lo": 0.1, "hi": 0.2, "count": 1, "mean_p": 0.1,
                                           "frac_up": 0.0}
    assert bins[8]["count"] == 2 and bins[8]["frac_up"] == 0.5 and bins[9]["count"] == 1
    assert bins[0]["count"] == 0 and bins[0]["mean_p"] is None
    assert ece == pytest.approx((0.1 + 2 * 0.3 + 0.0) / 4)
    assert reliability(np.array([]), np.array([]))[1] is None


def test_reasoning_quality_is_unweighted_data_usage_plus_coherence(task):
    records = task.eval_records([_sample(0, "UP")] * 2, [GOOD, "Reasoning: It will go up.\n"
                                                         "Prediction: UP\nConfidence: 65%"])
    assert [r["reasoning_quality"] for r in records] == [1.0, 0.0]
    assert summarize(records)["reasoning_quality"] == 0.5


def test_single_class_and_empty_sets_give_none_not_errors(task):
    m = summarize(task.eval_records([_sample(0, "UP")], [_answer("UP", 70)]))
    assert m["roc_auc"] is None and m["down_accuracy"] is None and m["up_accuracy"] == 1.0
    empty = summarize([])
    assert empty["n"] == 0 and empty["accuracy"] is None and empty["ece"] is None


def test_synthetic_samples_report_the_bayes_oracle(task):
    samples = task.split("val")[:50]
    bayes = ["UP" if s.meta["up_prob"] > 0.5 else "DOWN" for s in samples]
    m = task.evaluate(samples, [_answer(b, 75) for b in bayes])
    assert m["bayes_agreement"] == 1.0
    assert m["bayes_expected_accuracy"] == pytest.approx(
        sum(max(s.meta["up_prob"], 1 - s.meta["up_prob"]) for s in samples) / 50)
    # answering as the rule does scores what the rule scored, on the same windows
    assert m["bayes_rule_accuracy"] == m["accuracy"] and m["of_bayes_rule"] == 1.0
    assert m["same_samples"]["bayes_rule"]["verdict"] == "no clear difference"
    # the posterior's own ROC-AUC and ECE, the ceiling for the stated confidence: an answer
    # stating the posterior itself as its confidence scores the posterior's figures
    exact = task.evaluate(samples, [_answer(b, round(100 * max(s.meta["up_prob"],
                                                               1 - s.meta["up_prob"])))
                                    for b, s in zip(bayes, samples, strict=True)])
    assert exact["roc_auc"] == pytest.approx(exact["bayes_roc_auc"], abs=0.02)
    assert exact["ece"] == pytest.approx(exact["bayes_ece"], abs=0.02)
    # and they do not depend on what the model said
    assert (m["bayes_roc_auc"], m["bayes_ece"]) == (exact["bayes_roc_auc"], exact["bayes_ece"])


# ---- P(UP) and the market-aware reading


def test_p_up_plain_and_invalid():
    assert p_up(parse_answer(_answer("UP", 70))) == pytest.approx(0.7)
    assert p_up(parse_answer(_answer("DOWN", 70))) == pytest.approx(0.3)
    assert p_up(parse_answer("Prediction: UP")) == 0.5  # no confidence: uninformative
    assert p_up(parse_answer("nothing"), prior=0.8) == 0.5  # the base rate alone is no answer
    assert p_predicted(parse_answer("nothing")) is None


def test_market_aware_formula_by_hand():
    assert prior_shift(0.7, 0.6) == pytest.approx(0.7 * 0.6 / (0.7 * 0.6 + 0.3 * 0.4))
    assert prior_shift(0.7, 0.6) == pytest.approx(0.7778, abs=1e-4)
    assert p_up(parse_answer(_answer("UP", 70)), prior=0.6) == pytest.approx(0.7778, abs=1e-4)
    assert p_up(parse_answer(_answer("DOWN", 70)), prior=0.6) == pytest.approx(0.18 / 0.46)
    assert p_predicted(parse_answer(_answer("DOWN", 70)), 0.6) == pytest.approx(0.28 / 0.46)
    assert prior_shift(0.7, 0.5) == pytest.approx(0.7)  # 50/50: as stated
    assert prior_shift(0.7, 1.0) == pytest.approx(prior_shift(0.7, 0.95))  # clipped prior


def test_confidence_rewards_read_the_shifted_probability():
    ans = parse_answer(_answer("UP", 70))
    weights = {"calibration": 1.0, "confidence": 1.0}
    plain = score(ans, Facts(label="UP"), weights)
    aware = score(ans, Facts(label="UP", prior_up=0.6), weights)
    assert plain["calibration"] == pytest.approx(0.2 * (1 - 0.3 ** 2))
    assert aware["calibration"] == pytest.approx(0.2 * (1 - (1 - 0.7778) ** 2), abs=1e-5)
    wrong = score(ans, Facts(label="DOWN", prior_up=0.6), weights)
    assert wrong["confidence"] == pytest.approx(-(0.02 + 0.13 * 0.7 * 0.6 / 0.54))
    assert wrong["calibration"] == pytest.approx(0.2 * (1 - (0.42 / 0.54) ** 2))


def test_market_aware_task_feeds_reward_roc_and_calibration():
    from trainer.tasks.stock.task import StockTask

    on = StockTask(DataConfig(**SYNTH, balance=False), StockRewardConfig(
        weights={"accuracy_skew": 1.0, "calibration": 1.0}, market_aware_confidence=True))
    pi = on.stats["train"].natural_up_ratio
    assert on.prior_up == pi != 0.5 and on.describe()["confidence_prior_up"] == round(pi, 4)
    want = pi * 0.7 / (pi * 0.7 + (1 - pi) * 0.3)
    samples = on.split("test")[:40]
    records = on.eval_records(samples, [_answer("UP", 70)] * 40)
    assert all(r["p_up"] == pytest.approx(want) for r in records)
    for r in records:  # the calibration reward pays the Brier score of the shifted probability
        p_real = want if r["label"] == "UP" else 1 - want
        assert r["components"]["calibration"] == pytest.approx(0.2 * (1 - (1 - p_real) ** 2))
    m = summarize(records)
    (hit,) = [b for b in m["reliability"] if b["count"]]
    assert hit["mean_p"] == pytest.approx(want) and hit["count"] == 40
    assert m["ece"] == pytest.approx(abs(want - m["actual_up_ratio"]))
    off = StockTask(DataConfig(**SYNTH, balance=False), StockRewardConfig())
    assert off.prior_up == 0.5
    assert off.eval_records(samples[:1], [_answer("UP", 70)])[0]["p_up"] == pytest.approx(0.7)
