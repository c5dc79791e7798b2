"""The synthetic market (both rules): readable from the window, exact Bayes-optimal
accuracy."""

import pytest

from trainer.tasks.stock import synthetic
from trainer.tasks.stock.config import DataConfig, StockRewardConfig
from trainer.tasks.stock.series import windows
from trainer.tasks.stock.task import StockTask


@pytest.fixture(scope="module", params=sorted(synthetic.RULES))
def big(request):
    rule = request.param
    return rule, windows(synthetic.synthetic_series(40_000, seed=3, rule=rule), 5)


def _share_up_by_count(ws) -> dict[int, float]:
    by_count: dict[int, list[bool]] = {}
    for w in ws:
        by_count.setdefault(sum(c > 0 for c in w.changes_pct[-3:]), []).append(w.label == "UP")
    return {k: sum(v) / len(v) for k, v in by_count.items()}


def test_seeded_and_dated_by_business_days():
    a, b = synthetic.synthetic_series(300, 1), synthetic.synthetic_series(300, 1)
    assert a == b and a.closes != synthetic.synthetic_series(300, 2).closes
    assert len(a.closes) == len(a.dates) == 301 and a.dates[0] == "2000-01-03"
    assert a.dates == sorted(set(a.dates)) and min(a.closes) > 0


def test_every_move_is_in_range(big):
    _, ws = big
    assert all(0.98 * synthetic.MOVE[0] <= abs(c) <= 1.02 * synthetic.MOVE[1]
               for w in ws for c in w.changes_pct)


def test_rules_differ_where_they_should():
    """majority: the next day follows the majority of the last three signs; streak: the same
    for mixed moves, but after three ups the next day is mostly DOWN (and the reverse), so
    following the majority falls far below the Bayes classifier there."""
    share = {rule: _share_up_by_count(windows(synthetic.synthetic_series(40_000, 3, rule), 5))
             for rule in synthetic.RULES}
    m, s = share["majority"], share["streak"]
    assert m[0] < 0.35 and m[1] < 0.35 and m[2] > 0.65 and m[3] > 0.65
    assert s[0] > 0.65 and s[1] < 0.35 and s[2] > 0.65 and s[3] < 0.35
    ws = windows(synthetic.synthetic_series(40_000, 3, "streak"), 5)
    follow = sum((sum(c > 0 for c in w.changes_pct[-3:]) >= 2) == (w.label == "UP")
                 for w in ws) / len(ws)
    bayes = synthetic.bayes_accuracy([synthetic.up_probability(w.changes_pct, "streak")
                                      for w in ws])
    assert follow < bayes - 0.1
    assert synthetic.synthetic_series(300, 1, "streak") != synthetic.synthetic_series(300, 1)


def test_posterior_from_the_window_alone_is_exact(big):
    """Among windows whose shown changes give posterior p, a share p goes UP (4 sigma)."""
    rule, ws = big
    buckets: dict[float, list[bool]] = {}
    for w in ws:
        buckets.setdefault(synthetic.up_probability(w.changes_pct, rule), []).append(
            w.label == "UP")
    expected = {synthetic.MOMENTUM_P, 1 - synthetic.MOMENTUM_P}
    if rule == "streak":
        expected |= {synthetic.REVERSION_P, 1 - synthetic.REVERSION_P}
    assert sorted(buckets) == pytest.approx(sorted(expected))
    for p, ups in buckets.items():
        sigma = (p * (1 - p) / len(ups)) ** 0.5
        assert abs(sum(ups) / len(ups) - p) < 4 * sigma, (p, len(ups))


def test_bayes_accuracy_is_the_mean_of_the_likelier_side_and_matches_reality(big):
    rule, ws = big
    probs = [synthetic.up_probability(w.changes_pct, rule) for w in ws]
    bayes = synthetic.bayes_accuracy(probs)
    calm = sum(max(p, 1 - p) == synthetic.MOMENTUM_P for p in probs) / len(probs)
    assert bayes == pytest.approx(calm * synthetic.MOMENTUM_P
                                  + (1 - calm) * synthetic.REVERSION_P)
    assert calm == (1.0 if rule == "majority" else pytest.approx(0.75, abs=0.1))
    realised = sum((p > 0.5) == (w.label == "UP") for p, w in zip(probs, ws, strict=True))
    assert abs(realised / len(ws) - bayes) < 4 * (bayes * (1 - bayes) / len(ws)) ** 0.5
    assert synthetic.bayes_accuracy([]) is None


@pytest.mark.parametrize("rule", sorted(synthetic.RULES))
def test_task_reports_bayes_accuracy_per_split_and_the_oracle_baseline(rule):
    task = StockTask(DataConfig(source="synthetic", synthetic_days=4000, train_end="2010-12-31",
                                val_end="2013-12-31", synthetic_rule=rule), StockRewardConfig())
    assert task.report.origin.startswith(f"{rule} rule")
    d = task.describe()
    for name in ("train", "val", "test"):
        assert synthetic.REVERSION_P <= d[f"{name}_bayes_expected_accuracy"] <= synthetic.MOMENTUM_P
    oracle = task.baselines["bayes_oracle"]
    for split in ("val", "test"):
        assert oracle[split].accuracy > task.baselines["majority"][split].accuracy + 0.15
        assert oracle[split].accuracy == pytest.approx(d[f"{split}_bayes_expected_accuracy"], abs=0.05)
    sample = task.split("train")[0]
    bayes = "UP" if sample.meta["up_prob"] > 0.5 else "DOWN"
    assert task.diagnostics(sample, f"Prediction: {bayes}")["bayes_agreement"] == 1.0
