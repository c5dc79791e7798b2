"""The model against the Bayes rule and every baseline on the windows it answered."""

import math

import numpy as np
import pytest

from trainer.tasks.base import Sample
from trainer.tasks.stock.config import DataConfig, StockRewardConfig
from trainer.tasks.stock.same_samples import (
    BAYES,
    Fitted,
    baseline_calls,
    bayes_rule_accuracy,
    beats_all,
    compare,
    paired_interval,
)

SYNTH = dict(source="synthetic", synthetic_days=4000, train_end="2010-12-31",
             val_end="2013-12-31")


def _answer(pred: str) -> str:
    return f"Reasoning: short\nPrediction: {pred}\nConfidence: 70%"


@pytest.fixture(scope="module")
def task():
    from trainer.tasks.stock.task import StockTask

    return StockTask(DataConfig(**SYNTH), StockRewardConfig())


def _oracle_sample(i: int, up_prob: float, label: str) -> Sample:
    return Sample(id=f"s{i}", messages=[], meta={"label": label, "up_prob": up_prob})


def test_realised_bayes_is_a_count_on_a_hand_made_set():
    # the rule picks UP, UP, DOWN, DOWN, UP, DOWN; right on windows 0, 2, 3: 3 of 6, while
    # its expectation (mean of max(p, 1 - p)) is (4 x 0.8 + 2 x 0.65) / 6 = 0.75
    cases = [(0.8, "UP"), (0.8, "DOWN"), (0.2, "DOWN"), (0.2, "DOWN"), (0.65, "DOWN"),
             (0.35, "UP")]
    assert bayes_rule_accuracy([_oracle_sample(i, p, y)
                                for i, (p, y) in enumerate(cases)]) == 0.5


def test_realised_bayes_in_the_metrics_matches_a_brute_force_count(task):
    samples = task.split("test")[:40]
    right = 0
    for s in samples:
        says_up = s.meta["up_prob"] > 0.5
        right += says_up == (s.meta["label"] == "UP")
    m = task.evaluate(samples, [_answer("UP")] * len(samples))
    assert m["bayes_rule_accuracy"] == right / len(samples)
    assert m["same_samples"][BAYES]["accuracy"] == right / len(samples)
    assert m["of_bayes_rule"] == pytest.approx(m["accuracy"] / (right / len(samples)))


def test_each_baseline_call_follows_its_rule_from_the_prices(task):
    samples = task.split("test")[:60]
    calls = baseline_calls(Fitted.on(task.split("train")), samples)
    train_up = np.mean([s.meta["label"] == "UP" for s in task.split("train")])
    for s, c in zip(samples, calls, strict=True):
        closes = s.meta["closes"]
        assert c["momentum"]["up"] == (closes[-1] > closes[-2])
        assert c["trend5"]["up"] == (closes[-1] > closes[-6])  # five days back
        assert c["majority"]["up"] == (train_up >= 0.5)
        assert 0.0 < c["logistic"]["score"] < 1.0
        assert c["logistic"]["up"] == (c["logistic"]["score"] > 0.5)


def test_on_a_whole_split_same_samples_equal_the_split_baselines(task):
    """Two paths, one answer: the baselines scored on the model's records when those are the
    whole test split, and the split baselines fitted and scored by run_baselines."""
    samples = task.split("test")
    m = task.evaluate(samples, [_answer("DOWN")] * len(samples))
    for name, by_split in task.baselines.items():
        name = BAYES if name == "bayes_oracle" else name
        assert m["same_samples"][name]["accuracy"] == pytest.approx(by_split["test"].accuracy)
        assert m["same_samples"][name]["roc_auc"] == pytest.approx(by_split["test"].auc)


def _records(model_right: list[bool], base_right: list[bool]) -> list[dict]:
    return [{"label": "UP", "correct": m, "baselines": {"b": {"up": b, "score": float(b)}}}
            for m, b in zip(model_right, base_right, strict=True)]


def test_verdicts_follow_the_interval():
    n = 200
    better = compare(_records([True] * n, [False] * n))["b"]
    assert (better["diff"], better["diff_lo"], better["diff_hi"]) == (1.0, 1.0, 1.0)
    assert better["verdict"] == "better" and better["accuracy"] == 0.0
    worse = compare(_records([i % 2 == 0 for i in range(n)], [True] * n))["b"]
    assert worse["diff"] == -0.5 and worse["verdict"] == "worse"
    # 3 more right of 200 on a paired difference: well inside the noise
    close = compare(_records([i < 103 for i in range(n)], [i < 100 for i in range(n)]))["b"]
    assert close["diff"] == pytest.approx(0.015) and close["verdict"] == "no clear difference"
    assert beats_all({"b": better, BAYES: worse}) is True  # the Bayes rule is not a baseline
    assert beats_all({"b": better, "c": close}) is False and beats_all({}) is None


def test_paired_bootstrap_interval_matches_the_normal_approximation():
    rng = np.random.default_rng(3)
    model, base = rng.random(256) < 0.8, rng.random(256) < 0.7
    diff, lo, hi = paired_interval(model, base)
    d = model.astype(float) - base.astype(float)
    half = 1.96 * d.std(ddof=1) / math.sqrt(len(d))
    assert diff == pytest.approx(d.mean())
    assert lo == pytest.approx(diff - half, abs=0.25 * half)
    assert hi == pytest.approx(diff + half, abs=0.25 * half)
    assert paired_interval(model, base) == (diff, lo, hi)  # seeded: same records, same interval
