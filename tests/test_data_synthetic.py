"""The synthetic streak market: readable from the window, exact Bayes-optimal accuracy."""

import pytest

from trainer.config import DataConfig, RewardConfig
from trainer.tasks.stock import synthetic
from trainer.tasks.stock.series import windows
from trainer.tasks.stock.task import StockTask


@pytest.fixture(scope="module")
def big():
    return windows(synthetic.synthetic_series(40_000, seed=3), 5)


def test_seeded_and_dated_by_business_days():
    a, b = synthetic.synthetic_series(300, 1), synthetic.synthetic_series(300, 1)
    assert a == b and a.closes != synthetic.synthetic_series(300, 2).closes
    assert len(a.closes) == len(a.dates) == 301 and a.dates[0] == "2000-01-03"
    assert a.dates == sorted(set(a.dates)) and min(a.closes) > 0


def test_every_move_is_in_range_and_streaks_revert(big):
    """Sizes stay near MOVE (log-returns, shown as % changes); the rule is non-monotone in
    the up count: after three ups the next day is mostly DOWN, after two mostly UP, so
    following the majority falls far below the Bayes classifier."""
    by_count: dict[int, list[bool]] = {}
    for w in big:
        assert all(0.98 * synthetic.MOVE[0] <= abs(c) <= 1.02 * synthetic.MOVE[1]
                   for c in w.changes_pct)
        by_count.setdefault(sum(c > 0 for c in w.changes_pct[-3:]), []).append(w.label == "UP")
    share = {k: sum(v) / len(v) for k, v in by_count.items()}
    assert share[3] < 0.35 and share[2] > 0.65 and share[1] < 0.35 and share[0] > 0.65
    follow = sum(sum(ups) if k >= 2 else len(ups) - sum(ups)
                 for k, ups in by_count.items()) / len(big)
    bayes = synthetic.bayes_accuracy([synthetic.up_probability(w.changes_pct) for w in big])
    assert follow < bayes - 0.1


def test_posterior_from_the_window_alone_is_exact(big):
    """Among windows whose shown changes give posterior p, a share p goes UP (4 sigma)."""
    buckets: dict[float, list[bool]] = {}
    for w in big:
        buckets.setdefault(synthetic.up_probability(w.changes_pct), []).append(w.label == "UP")
    expected = [synthetic.MOMENTUM_P, 1 - synthetic.MOMENTUM_P, synthetic.REVERSION_P,
                1 - synthetic.REVERSION_P]
    assert sorted(buckets) == pytest.approx(sorted(expected))
    for p, ups in buckets.items():
        sigma = (p * (1 - p) / len(ups)) ** 0.5
        assert abs(sum(ups) / len(ups) - p) < 4 * sigma, (p, len(ups))


def test_bayes_accuracy_is_the_mean_of_the_likelier_side_and_matches_reality(big):
    probs = [synthetic.up_probability(w.changes_pct) for w in big]
    bayes = synthetic.bayes_accuracy(probs)
    calm = sum(max(p, 1 - p) == synthetic.MOMENTUM_P for p in probs) / len(probs)
    assert bayes == pytest.approx(calm * synthetic.MOMENTUM_P
                                  + (1 - calm) * synthetic.REVERSION_P)
    realised = sum((p > 0.5) == (w.label == "UP") for p, w in zip(probs, big, strict=True))
    assert abs(realised / len(big) - bayes) < 4 * (bayes * (1 - bayes) / len(big)) ** 0.5
    assert synthetic.bayes_accuracy([]) is None


def test_task_reports_bayes_accuracy_per_split_and_the_oracle_baseline():
    task = StockTask(DataConfig(source="synthetic", synthetic_days=4000, train_end="2010-12-31",
                                val_end="2013-12-31"), RewardConfig())
    d = task.describe()
    for name in ("train", "val", "test"):
        assert synthetic.REVERSION_P <= d[f"{name}_bayes_accuracy"] <= synthetic.MOMENTUM_P
    oracle = task.baselines["bayes_oracle"]
    for split in ("val", "test"):
        assert oracle[split].accuracy > task.baselines["majority"][split].accuracy + 0.15
        assert oracle[split].accuracy == pytest.approx(d[f"{split}_bayes_accuracy"], abs=0.05)
    sample = task.split("train")[0]
    bayes = "UP" if sample.meta["up_prob"] > 0.5 else "DOWN"
    assert task.diagnostics(sample, f"Prediction: {bayes}")["bayes_agreement"] == 1.0
