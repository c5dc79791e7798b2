"""Time splits per ticker: no window straddles a boundary, no prompt shows its future, Stage I
balanced exactly, Stage II natural, and the counts reported."""

import re

import pytest

from trainer.tasks.stock.config import DataConfig, StockRewardConfig
from trainer.tasks.stock.problems import DataReport
from trainer.tasks.stock.series import windows
from trainer.tasks.stock.sources import load_bundled
from trainer.tasks.stock.splits import SPLITS, assign, place
from trainer.tasks.stock.task import StockTask

CFG = dict(source="bundled", tickers=["GOOG", "MSFT"], window=5, train_end="2009-12-31",
           val_end="2011-12-31")
ISO = re.compile(r"\d{4}-\d{2}-\d{2}")


@pytest.fixture(scope="module")
def task():
    return StockTask(DataConfig(**CFG), StockRewardConfig())


@pytest.fixture(scope="module")
def natural():
    return StockTask(DataConfig(**CFG, balance=False), StockRewardConfig())


def test_place_by_every_date_a_window_touches():
    cfg = DataConfig(start="2001-01-01", train_end="2009-12-31", val_end="2011-12-31",
                     test_end="2013-12-31")
    assert place("2009-12-24", "2009-12-31", cfg) == "train"
    assert place("2009-12-28", "2010-01-04", cfg) == "straddles_split"
    assert place("2010-01-04", "2011-12-30", cfg) == "val"
    assert place("2012-01-03", "2013-12-31", cfg) == "test"
    assert place("2013-12-30", "2014-01-02", cfg) == "outside_ranges"
    assert place("2000-12-29", "2001-01-05", cfg) == "outside_ranges"
    report = DataReport("x")
    out = assign([("2009-12-28", "2010-01-04", object())], cfg, report)
    assert all(not v for v in out.values()) and report.skipped == {"straddles_split": 1}


def test_no_window_straddles_a_boundary(task):
    by_id = {f"{w.ticker}:{w.next_date}": w for s in load_bundled(["GOOG", "MSFT"])
             for w in windows(s, 5)}
    cfg = task.cfg
    for name in SPLITS:
        assert task.split(name), name
        for sample in task.split(name):
            first, last = by_id[sample.id].span
            assert place(first, last, cfg) == name
    assert task.report.skipped["straddles_split"] > 0  # the boundary windows went somewhere


def test_no_prompt_shows_its_future(task):
    for name in SPLITS:
        for sample in task.split(name):
            shown = ISO.findall(sample.messages[1]["content"])
            assert shown == sample.meta["dates"] and max(shown) < sample.meta["next_date"]
            assert sample.id.endswith(sample.meta["next_date"])


def test_splits_are_ordered_in_time_per_ticker(task):
    for ticker in ("GOOG", "MSFT"):
        days = {n: [s.meta["next_date"] for s in task.split(n) if s.meta["ticker"] == ticker]
                for n in SPLITS}
        nonempty = [d for d in days.values() if d]
        for a, b in zip(nonempty, nonempty[1:], strict=False):
            assert max(a) < min(b)
    assert min(s.meta["next_date"] for s in task.split("test")) > "2011-12-31"


def test_stage1_is_exactly_balanced_and_counts_are_reported(task):
    d = task.describe()
    for name in SPLITS:
        labels = [s.meta["label"] for s in task.split(name)]
        assert labels.count("UP") == labels.count("DOWN") == len(labels) // 2
        st = task.stats[name]
        assert (st.kept, st.kept_up, d[f"{name}_size"]) == (len(labels), len(labels) // 2,
                                                            len(labels))
        assert d[f"{name}_up_ratio"] == 0.5
    assert task.report.skipped["balance_dropped"] == sum(
        st.natural - st.kept for st in task.stats.values())


def test_stage2_keeps_the_natural_distribution(task, natural):
    for name in SPLITS:
        labels = [s.meta["label"] for s in natural.split(name)]
        st = natural.stats[name]
        assert st.kept == st.natural == len(labels) == task.stats[name].natural
        assert st.up_ratio == pytest.approx(labels.count("UP") / len(labels))
        assert natural.describe()[f"{name}_up_ratio"] == round(st.up_ratio, 4) != 0.5
    assert natural.up_ratio == natural.stats["train"].up_ratio  # the base rate rewards see
    assert task.up_ratio == 0.5


def test_balance_is_seeded(task):
    again = StockTask(DataConfig(**CFG), StockRewardConfig())
    assert [s.id for s in again.split("train")] == [s.id for s in task.split("train")]
    other = StockTask(DataConfig(**CFG, seed=1), StockRewardConfig())
    assert [s.id for s in other.split("train")] != [s.id for s in task.split("train")]


def test_unknown_split_name_is_a_clear_error(task):
    with pytest.raises(KeyError, match="split 'dev': use one of train, val, test"):
        task.split("dev")
