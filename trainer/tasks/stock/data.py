"""Market data for the stock task: daily series and the windows cut from them.

Sources (chosen by ``data.source``):
- ``bundled``: real daily prices shipped in ``data/bundled/ohlcv.csv.gz`` (see its README).
- ``synthetic``: a seeded market whose next move follows the majority sign of the last three
  moves with probability ``MOMENTUM_P``, so the Bayes-optimal next-day accuracy is exactly
  ``MOMENTUM_P``: the oracle that shows whether training learns.

A window of N trading days needs N+1 closes (each day's % change is against the day before)
and the next close for the label. Days with no change are skipped: neither UP nor DOWN.
"""

from __future__ import annotations

import csv
import gzip
import random
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
BUNDLED_PATH = REPO_ROOT / "data" / "bundled" / "ohlcv.csv.gz"
BUNDLED_NAMES = {
    "SP500": "S&P 500 index",
    "NASDAQ": "NASDAQ Composite index",
    "MSFT": "Microsoft",
    "GOOG": "Alphabet (class C)",
    "GOOGL": "Alphabet (class A)",
}
MOMENTUM_P = 0.8


@dataclass(frozen=True)
class Series:
    ticker: str
    name: str
    dates: list[str]
    closes: list[float]


@dataclass(frozen=True)
class Window:
    ticker: str
    name: str
    dates: list[str]  # N dates shown
    closes: list[float]  # N+1 closes: the day before the window, then the N days
    next_date: str
    next_close: float

    @property
    def changes_pct(self) -> list[float]:
        c = self.closes
        return [100.0 * (c[i + 1] / c[i] - 1.0) for i in range(len(c) - 1)]

    @property
    def label(self) -> str:
        return "UP" if self.next_close > self.closes[-1] else "DOWN"

    @property
    def next_change_pct(self) -> float:
        return 100.0 * (self.next_close / self.closes[-1] - 1.0)


def load_bundled(tickers: list[str] | None = None, path: Path = BUNDLED_PATH) -> list[Series]:
    by_ticker: dict[str, tuple[list[str], list[float]]] = {}
    with gzip.open(path, "rt", newline="") as fh:
        for row in csv.DictReader(fh):
            dates, closes = by_ticker.setdefault(row["ticker"], ([], []))
            dates.append(row["date"])
            closes.append(float(row["adj_close"] or row["close"]))
    wanted = tickers or sorted(by_ticker)
    missing = [t for t in wanted if t not in by_ticker]
    if missing:
        raise ValueError(
            f"{path}: unknown ticker(s) {missing}; bundled tickers: {sorted(by_ticker)}"
        )
    return [Series(t, BUNDLED_NAMES.get(t, t), *by_ticker[t]) for t in wanted]


def synthetic_series(days: int, seed: int) -> Series:
    """A market whose next direction follows the last-three majority with prob MOMENTUM_P."""
    rng = random.Random(seed)
    signs: list[int] = []
    closes = [100.0]
    for _ in range(days):
        if len(signs) < 3:
            sign = rng.choice((1, -1))
        else:
            majority = 1 if sum(signs[-3:]) > 0 else -1
            sign = majority if rng.random() < MOMENTUM_P else -majority
        signs.append(sign)
        move = round(rng.uniform(0.2, 3.0), 2)
        closes.append(round(closes[-1] * (1 + sign * move / 100.0), 2))
    dates = [f"D{i:05d}" for i in range(len(closes))]
    return Series("SYN", "Synthetic Momentum Corp", dates, closes)


def windows(series: Series, n: int) -> list[Window]:
    """Every window of n shown days with a next day, skipping flat next days."""
    out = []
    c, d = series.closes, series.dates
    for end in range(n, len(c) - 1):  # end: index of the last shown day
        if c[end + 1] == c[end] or min(c[end - n:end + 2]) <= 0:
            continue
        out.append(Window(series.ticker, series.name, d[end - n + 1:end + 1],
                          c[end - n:end + 1], d[end + 1], c[end + 1]))
    return out


def balance(items: list[Window], seed: int) -> list[Window]:
    """Down-sample the majority direction so UP and DOWN are exactly 50/50."""
    ups = [w for w in items if w.label == "UP"]
    downs = [w for w in items if w.label == "DOWN"]
    k = min(len(ups), len(downs))
    rng = random.Random(seed)
    kept = rng.sample(ups, k) + rng.sample(downs, k)
    rng.shuffle(kept)
    return kept
