"""Figures in text: the numbers and ISO dates a prompt shows or a reasoning cites.

Dates are taken out first, so ``2012-01-03`` is one date, not the numbers 2012, -01, -03.
Thousands separators are dropped (``1,234.5`` is 1234.5). Used for the known figures of a
prompt and for what a reasoning cites (the data-usage reward).
"""

from __future__ import annotations

import re

DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}\b")
NUMBER = re.compile(r"(?<![\w.])[-+\u2212]?\d{1,3}(?:,\d{3})+(?:\.\d+)?|[-+\u2212]?\d+(?:\.\d+)?")
MAX_FIGURES = 64  # a reasoning citing more is judged on its first 64


def figures(text: str, limit: int = MAX_FIGURES) -> tuple[list[float], list[str]]:
    """(numbers, dates) in order of appearance, at most ``limit`` of each."""
    dates = DATE.findall(text)[:limit]
    rest = DATE.sub(" ", text)
    numbers = []
    for match in NUMBER.finditer(rest):
        numbers.append(float(match.group().replace(",", "").replace("\u2212", "-")))
        if len(numbers) == limit:
            break
    return numbers, dates
