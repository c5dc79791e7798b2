"""The shapes market data takes inside the stock task: daily series, prompt rows, windows.

A :class:`Series` is one ticker's clean daily closes (dates ISO ``YYYY-MM-DD``, strictly
increasing, every close finite and > 0), optionally with company info and news per date.
A :class:`PromptRow` is a ready-made prompt with its label (Hugging Face datasets such as the
seed's, whose rows carry a ``user_prompt`` rather than a price series).
A :class:`Window` is N shown days cut from a series plus the next day (the label).

A window of N trading days needs N+1 closes (each shown day's % change is against the day
before) and the next close for the label. Days with no change are neither UP nor DOWN: such
windows are skipped and counted (``flat_next_day``).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Series:
    ticker: str
    name: str
    dates: list[str]
    closes: list[float]
    info: str = ""  # company description, when the source has one
    news: dict[str, list[str]] = field(default_factory=dict)  # date -> headlines of that day


@dataclass(frozen=True)
class PromptRow:
    """A prompt the source wrote itself, as of ``date`` (the last day it may know about)."""

    ticker: str
    date: str
    text: str
    label: str  # "UP" | "DOWN"
    next_date: str = ""  # the label's day when the source implies it (next row of the ticker)
    next_change_pct: float | None = None


@dataclass(frozen=True)
class Window:
    ticker: str
    name: str
    dates: list[str]  # N dates shown
    closes: list[float]  # N+1 closes: the day before the window, then the N days
    next_date: str
    next_close: float
    base_date: str = ""  # date of closes[0], the day before the first shown day
    info: str = ""
    news: dict[str, list[str]] = field(default_factory=dict)  # only dates shown

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

    @property
    def span(self) -> tuple[str, str]:
        """First and last date this window touches (its base close through its label day)."""
        return self.base_date or self.dates[0], self.next_date


def windows(series: Series, n: int) -> list[Window]:
    """Every window of n shown days with a next day, skipping flat next days."""
    return windows_and_flat(series, n)[0]


def windows_and_flat(series: Series, n: int) -> tuple[list[Window], int]:
    """Windows as :func:`windows`, and how many were skipped because the next day was flat."""
    out, flat = [], 0
    c, d = series.closes, series.dates
    for end in range(n, len(c) - 1):  # end: index of the last shown day
        if c[end + 1] == c[end]:
            flat += 1
            continue
        shown = d[end - n + 1:end + 1]
        out.append(Window(series.ticker, series.name, shown, c[end - n:end + 1], d[end + 1],
                          c[end + 1], base_date=d[end - n], info=series.info,
                          news={k: series.news[k] for k in shown if k in series.news}))
    return out, flat
