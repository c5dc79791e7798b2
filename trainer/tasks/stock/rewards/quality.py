"""Stage I reward, per the seed: prediction accuracy 0-0.6 plus reasoning quality 0-0.4,
where reasoning quality = data usage 0-0.2 + logical coherence 0-0.2. With unit weights the
three sum to [0, 1].

Departures from the seed, and why: the seed's data-usage reward counted anything that looked
like a number or a date; ours checks that each cited figure is really in the prompt or is a
correct change computed from it (a % or price change between any two shown closes), so
invented numbers earn nothing. Generic reasoning ("It will go up.": under
``MIN_REASONING_WORDS`` words or no figure at all) earns no reasoning reward.
"""

from __future__ import annotations

import re

import numpy as np

from trainer.tasks.stock.answer import ParsedAnswer
from trainer.tasks.stock.figures import figures
from trainer.tasks.stock.rewards.registry import Facts, component

MIN_REASONING_WORDS = 8
FULL_CREDIT_FIGURES = 3  # distinct correct figures for full data-usage credit
PROMPT_ROW_COUNT_LIMIT = 10  # prompt rows: integers up to this are read as counts
_UP_WORDS = re.compile(r"\b(up|upward|uptrend|rising|rose|gain(?:ed|s)?|higher|increas\w*)\b",
                       re.IGNORECASE)
_DOWN_WORDS = re.compile(r"\b(down|downward|downtrend|falling|fell|drop(?:ped|s)?|lower|"
                         r"declin\w*|decreas\w*|loss(?:es)?)\b", re.IGNORECASE)
_REVERSAL = re.compile(r"\b(revers\w*|rebound\w*|bounce\w*|pullback)\b", re.IGNORECASE)
_ANY_DIGIT = re.compile(r"\d")


def substantive(reasoning: str) -> bool:
    """Generic reasoning earns nothing: it must say enough and cite at least one figure."""
    return len(reasoning.split()) >= MIN_REASONING_WORDS and bool(_ANY_DIGIT.search(reasoning))


def known_numbers(facts: Facts) -> np.ndarray:
    """Figures a reasoning may cite: those in the prompt, and for price windows every % and
    price change between two shown closes; each also without its sign."""
    known = list(facts.prompt_numbers) + list(facts.closes) + list(facts.changes_pct)
    c = facts.closes
    for i in range(len(c)):
        for j in range(i + 1, len(c)):
            known += [100.0 * (c[j] / c[i] - 1.0), c[j] - c[i]]
    arr = np.asarray(known, dtype=float)
    return np.concatenate([arr, np.abs(arr)])


def _matches(value: float, known: np.ndarray) -> bool:
    return bool(np.any(np.abs(value - known) <= np.maximum(0.011, 0.0005 * np.abs(known))))


@component("accuracy", 0.0, 0.6)
def accuracy(ans: ParsedAnswer, facts: Facts) -> float:
    """0.6 when the prediction is the realised direction, else 0."""
    return 0.6 if ans.prediction == facts.label else 0.0


@component("data_usage", 0.0, 0.2)
def data_usage(ans: ParsedAnswer, facts: Facts) -> float:
    """0-0.2: share of distinct cited figures (numbers and dates) that are right, times
    min(1, right / 3). Small integers (day counts such as "3 up days") count as neither."""
    if not substantive(ans.reasoning):
        return 0.0
    numbers, dates = figures(ans.reasoning)
    count_limit = len(facts.changes_pct) or PROMPT_ROW_COUNT_LIMIT
    cited = list(dict.fromkeys(v for v in numbers
                               if not (v.is_integer() and abs(v) <= count_limit)))
    cited_dates = list(dict.fromkeys(dates))
    if not cited and not cited_dates:
        return 0.0
    known = known_numbers(facts)
    right = sum(_matches(v, known) for v in cited) + sum(d in facts.dates for d in cited_dates)
    share = right / (len(cited) + len(cited_dates))
    return 0.2 * share * min(1.0, right / FULL_CREDIT_FIGURES)


@component("coherence", 0.0, 0.2)
def coherence(ans: ParsedAnswer, facts: Facts) -> float:
    """0-0.2: 0.1 when the stated trend matches the data, 0.1 when the prediction follows
    from the stated trend (or the reasoning explicitly expects a reversal). For prompt rows
    the data's trend is unknown, so only the second half can be earned."""
    if not substantive(ans.reasoning) or ans.prediction is None:
        return 0.0
    ups = len(_UP_WORDS.findall(ans.reasoning))
    downs = len(_DOWN_WORDS.findall(ans.reasoning))
    if ups == downs:
        return 0.0
    stated = "UP" if ups > downs else "DOWN"
    reversal = bool(_REVERSAL.search(ans.reasoning))
    score = 0.1 if stated == facts.trend else 0.0
    if ans.prediction == stated or (reversal and ans.prediction != stated):
        score += 0.1
    return score
