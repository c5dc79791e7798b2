"""Leak-free time splits per ticker, and the exact 50/50 balance of Stage I.

Ranges (ISO dates, ends inclusive): train ``[start, train_end]``, val ``(train_end,
val_end]``, test ``(val_end, test_end]``; an empty ``start``/``test_end`` is open. An item
belongs to a split when every date it touches lies in that split's range: for a window,
from the close before its first shown day through its label day; for a prompt row, from its
date through its label day. So no window straddles a boundary (``straddles_split``), and no
validation or test label is ever a day that training prompts show. A prompt shows only days
up to its last shown day, which is before its label day: no future information. Company
info is taken from a ticker's earliest row and news only from the shown days.

Stage I (``data.balance: true``) down-samples the majority direction of every split to
exactly 50/50, seeded; Stage II keeps the natural distribution. Both are reported.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol, TypeVar

from trainer.tasks.stock.config import DataConfig
from trainer.tasks.stock.problems import DataReport

SPLITS = ("train", "val", "test")


class Labelled(Protocol):
    @property
    def label(self) -> str: ...


Item = TypeVar("Item", bound=Labelled)


def _range_index(day: str, cfg: DataConfig) -> int:
    """-1 before start, 0 train, 1 val, 2 test, 3 after test_end."""
    if cfg.start and day < cfg.start:
        return -1
    ends = [cfg.train_end, cfg.val_end, cfg.test_end or "9999-12-31"]
    return next((i for i, end in enumerate(ends) if day <= end), 3)


def place(first: str, last: str, cfg: DataConfig) -> str:
    """The split of an item touching dates first..last, or why it is in none."""
    a, b = _range_index(first, cfg), _range_index(last, cfg)
    if a < 0 or b > 2:
        return "outside_ranges"
    if a != b:
        return "straddles_split"
    return SPLITS[a]


def assign(items: list[tuple[str, str, Item]], cfg: DataConfig,
           report: DataReport) -> dict[str, list[Item]]:
    """(first date, last date, item) triples into the three splits; others counted."""
    out: dict[str, list[Item]] = {name: [] for name in SPLITS}
    for first, last, item in items:
        where = place(first, last, cfg)
        if where in out:
            out[where].append(item)
        else:
            report.skip(where, example=f"{getattr(item, 'ticker', '')} {first}..{last}")
    return out


def balance(items: list[Item], seed: int) -> list[Item]:
    """Down-sample the majority direction so UP and DOWN are exactly 50/50 (then shuffled)."""
    ups = [w for w in items if w.label == "UP"]
    downs = [w for w in items if w.label == "DOWN"]
    k = min(len(ups), len(downs))
    rng = random.Random(seed)
    kept = rng.sample(ups, k) + rng.sample(downs, k)
    rng.shuffle(kept)
    return kept


@dataclass(frozen=True)
class SplitStats:
    """A split's size and direction counts, before (natural) and after balancing (kept)."""

    natural: int
    natural_up: int
    kept: int
    kept_up: int
    first: str  # earliest label day kept
    last: str  # latest label day kept

    @property
    def natural_up_ratio(self) -> float | None:
        return self.natural_up / self.natural if self.natural else None

    @property
    def up_ratio(self) -> float | None:
        return self.kept_up / self.kept if self.kept else None


def ups(items: list[Labelled]) -> int:
    return sum(x.label == "UP" for x in items)
