"""`stonk predict`'s inputs: the closes and the dates its prompt shows (the model was
trained on dated windows, so a prompt without real-looking dates is out of its distribution)."""

from __future__ import annotations

import argparse
from datetime import date

import pytest

from launch.cli import _read_prices
from trainer.tasks.stock.synthetic import business_days


def _args(**kw):
    base = {"prices": None, "dates": None, "csv": None, "window": 5}
    return argparse.Namespace(**(base | kw))


def test_business_days_skip_weekends_and_end_on_the_last_weekday():
    # 2026-12-06 is a Sunday: the window ends on Friday the 4th
    assert business_days(date(2026, 12, 6), 4, backward=True) == [
        "2026-12-01", "2026-12-02", "2026-12-03", "2026-12-04"]
    assert business_days(date(2026, 12, 7), 2, backward=True) == ["2026-12-04", "2026-12-07"]


def test_prices_with_and_without_dates():
    closes, dates = _read_prices(_args(prices="100, 101.5,100.9"))
    assert closes == [100.0, 101.5, 100.9] and dates is None
    _, dates = _read_prices(_args(prices="1,2,3", dates="2024-01-02,2024-01-03"))
    assert dates == ["2024-01-02", "2024-01-03"]


def test_csv_gives_the_last_window_and_its_dates(tmp_path):
    path = tmp_path / "p.csv"
    rows = [f"2024-01-{d:02d},{100 + d}" for d in range(1, 11)]
    path.write_text("Date,Close\n" + "\n".join(rows) + "\n")
    closes, dates = _read_prices(_args(csv=str(path), window=3))
    assert closes == [107.0, 108.0, 109.0, 110.0]  # the day before the window, then 3 days
    assert dates == ["2024-01-08", "2024-01-09", "2024-01-10"]


def test_csv_without_a_close_column_names_the_file(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("day,price\n1,2\n")
    with pytest.raises(ValueError, match=r"p\.csv: no close column"):
        _read_prices(_args(csv=str(path)))
