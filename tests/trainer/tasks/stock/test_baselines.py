"""Baselines: ROC-AUC by the rank statistic, logistic regression, and the table's rows."""

import numpy as np
import pytest

from trainer.tasks.base import Sample
from trainer.tasks.stock.baselines import fit_logistic, roc_auc, run_baselines
from trainer.tasks.stock.config import DataConfig, StockRewardConfig
from trainer.tasks.stock.task import StockTask


@pytest.mark.parametrize("scores, y, auc", [
    ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], 0.75),
    ([1, 2, 3, 4], [0, 0, 1, 1], 1.0),
    ([4, 3, 2, 1], [0, 0, 1, 1], 0.0),
    ([5, 5, 5, 5], [0, 1, 0, 1], 0.5),
    ([1, 1, 2], [0, 1, 1], 0.75),  # the tie counts half
    ([1, 2], [1, 1], None),  # one class: undefined
])
def test_roc_auc_hand_cases(scores, y, auc):
    assert roc_auc(np.array(scores, float), np.array(y, float)) == auc


def test_roc_auc_matches_the_pairwise_definition():
    rng = np.random.default_rng(0)
    s, y = rng.integers(0, 5, 200).astype(float), rng.integers(0, 2, 200).astype(float)
    pos, neg = s[y == 1], s[y == 0]
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert roc_auc(s, y) == pytest.approx(pairs)


def test_logistic_regression_learns_a_linear_rule():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2000, 5)) * [1, 5, 1, 1, 1] + 3
    y = ((x - 3) @ np.array([2.0, 0.0, -1.0, 0.0, 0.5]) + rng.normal(size=2000) * 0.5 > 0)
    predict = fit_logistic(x[:1500], y[:1500].astype(float))
    p = predict(x[1500:])
    assert ((p > 0.5) == y[1500:]).mean() > 0.9 and 0 < p.min() <= p.max() < 1


def _sample(changes, label):
    return Sample("s", [], {"changes_pct": changes, "label": label})


def test_baseline_rows_on_a_hand_made_market():
    # tomorrow always repeats today: momentum is perfect; UP is the training majority
    rng = np.random.default_rng(2)
    def split(n, up_share):
        out = []
        for _ in range(n):
            up = rng.random() < up_share
            last = rng.uniform(0.1, 2) * (1 if up else -1)
            out.append(_sample([rng.normal(), rng.normal(), last], "UP" if up else "DOWN"))
        return out
    splits = {"train": split(400, 0.7), "val": split(200, 0.5), "test": split(200, 0.3)}
    res = run_baselines(splits)
    assert set(res) == {"majority", "momentum", "trend5", "logistic"}  # no oracle: no up_prob
    assert res["momentum"]["val"].accuracy == res["momentum"]["test"].accuracy == 1.0
    assert res["momentum"]["val"].auc == 1.0
    majority = res["majority"]["test"]  # always UP, the training majority
    assert majority.auc == 0.5 and majority.n == 200
    assert majority.accuracy == sum(s.meta["label"] == "UP" for s in splits["test"]) / 200
    assert res["logistic"]["val"].accuracy > 0.95


def test_prompt_rows_get_the_majority_baseline_only():
    rows = {"train": [_sample([], "UP")] * 3 + [_sample([], "DOWN")],
            "val": [_sample([], "UP"), _sample([], "DOWN")], "test": []}
    assert run_baselines(rows)["majority"]["val"].accuracy == 0.5
    assert set(run_baselines(rows)) == {"majority"}


def test_task_baselines_are_fitted_on_train_only():
    task = StockTask(DataConfig(source="bundled", tickers=["GOOG"], balance=False,
                                train_end="2009-12-31", val_end="2011-12-31"), StockRewardConfig())
    majority = task.baselines["majority"]
    test_labels = [s.meta["label"] for s in task.split("test")]
    train_up = task.stats["train"].up_ratio >= 0.5
    share = test_labels.count("UP" if train_up else "DOWN") / len(test_labels)
    assert majority["test"].accuracy == pytest.approx(share)
