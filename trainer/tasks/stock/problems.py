"""Bad market data: the error that stops a run before it starts, and the report of what was
skipped.

The rule (also in ``data/README.md``): a problem with a whole file or with the configuration
fails at load time with :class:`DataError`, naming the file, and the row and field where
there is one; a problem with single rows, series or windows skips them and counts them, by
reason, in the :class:`DataReport` that ``make data`` prints. All of it happens when the task
is built, before the first training step, so bad data never crashes a run midway.

Fails (DataError): a missing file or folder, an empty or unreadable file, a missing required
column, an unknown configured ticker, a hub dataset that cannot be reached, a source that
yields no usable series at all.

Skipped and counted (reason: what, rule):
- ``bad_date``: a row whose date is missing or does not parse.
- ``bad_price``: a row whose price is missing, NaN, not a number, infinite, or <= 0. The
  series is cut there, so no % change ever spans the gap.
- ``bad_ticker``: a row of a long table whose ticker is empty.
- ``duplicate_date``: a later row repeating a ticker's date (the first one is kept).
- ``too_short``: a series (or a piece between bad rows) with fewer than window + 2 closes.
- ``flat_next_day``: a window whose next close equals its last close (neither UP nor DOWN).
- ``missing_label``: a prompt row without a usable label.
- ``straddles_split``: a window that touches two split ranges (kept out of both).
- ``outside_ranges``: a window before ``data.start`` or after ``data.test_end``.
- ``balance_dropped``: windows of the majority direction dropped to make a split 50/50.

Repaired and counted, nothing dropped: ``unsorted``: rows out of date order are sorted.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from trainer.tasks.hub import DataError  # every task's one data error

MAX_EXAMPLES = 3  # per reason, kept for the report

@dataclass
class DataReport:
    """What a source loaded and what it skipped, by reason (see the module docstring)."""

    source: str
    origin: str = ""  # the file, folder or dataset the data came from
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> rows/windows dropped
    repaired: Counter[str] = field(default_factory=Counter)  # reason -> rows fixed in place
    examples: dict[str, list[str]] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)  # every ticker the source holds

    def skip(self, reason: str, count: int = 1, example: str = "") -> None:
        self._count(self.skipped, reason, count, example)

    def repair(self, reason: str, count: int = 1, example: str = "") -> None:
        self._count(self.repaired, reason, count, example)

    def _count(self, counter: Counter[str], reason: str, count: int, example: str) -> None:
        if count <= 0:
            return
        counter[reason] += count
        if example and len(self.examples.setdefault(reason, [])) < MAX_EXAMPLES:
            self.examples[reason].append(example)

    def check_tickers(self, wanted: list[str]) -> None:
        """Fail naming the origin when a configured ticker is not in the source at all."""
        unknown = [t for t in wanted if t not in self.seen]
        if unknown:
            raise DataError(f"{self.origin}: unknown ticker(s) {unknown} (data.tickers); "
                            f"this source has: {', '.join(sorted(self.seen)) or 'none'}")
