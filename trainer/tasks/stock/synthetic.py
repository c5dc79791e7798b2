"""A seeded synthetic market whose Bayes-optimal next-day accuracy is known exactly.

It is the oracle that proves training learns: the best any model can do is computed, not
guessed, and a trained model's accuracy is read against it.

Generative model (constants below):
- A hidden volatility regime, calm or volatile, persists from day to day and flips with
  probability ``REGIME_SWITCH_P``. Calm days move ``CALM_MOVE`` % (uniform), volatile days
  ``VOLATILE_MOVE`` %. The ranges do not overlap, so every shown day's regime is readable
  from its % change in the prompt (below or above ``REGIME_CUT``).
- The direction of the next day depends on the regime of the last shown day:
  calm: momentum: the majority sign of the last three moves, with probability ``MOMENTUM_P``;
  volatile: mean reversion: against the last move, with probability ``REVERSION_P``.

So P(next day UP | everything shown) depends only on the last three % changes, and
:func:`up_probability` computes it from them: a model that reads the prompt can, in
principle, reach the Bayes classifier. That classifier predicts the likelier direction; its
expected accuracy over a set of windows is the mean of ``max(p, 1 - p)``: ``MOMENTUM_P`` on
calm windows and ``REVERSION_P`` on volatile ones (:func:`bayes_accuracy`). It conditions
on the windows, not on their labels; a balanced split selects on labels, which moves the
realised oracle accuracy by far less than its sampling noise (the baselines table prints the
realised one beside it).

Departure from the seed: the seed trains on real prices only; a market with a known ceiling
is ours, to tell "the trainer does not learn" apart from "there is nothing to learn".
Dates are business days from ``START_DATE``, so the same date-range splits apply.
"""

from __future__ import annotations

import random
from datetime import date, timedelta

from trainer.tasks.stock.series import Series

MOMENTUM_P = 0.8  # calm regime: P(next sign = majority sign of the last three)
REVERSION_P = 0.75  # volatile regime: P(next sign = opposite of the last sign)
REGIME_SWITCH_P = 0.1  # P(the regime flips from one day to the next)
CALM_MOVE = (0.2, 1.2)  # |% change| range on calm days
VOLATILE_MOVE = (1.8, 4.0)  # |% change| range on volatile days
REGIME_CUT = 1.5  # a shown |% change| at or above this marks a volatile day
LOOKBACK = 3  # the rule reads the last three moves
START_DATE = date(2000, 1, 3)
TICKER, NAME = "SYN", "Synthetic Regime Corp"


def _p_up(volatile: bool, last_signs: list[int]) -> float:
    """P(next day UP) given the last day's regime and the last three signs (+1/-1)."""
    if volatile:
        return 1.0 - REVERSION_P if last_signs[-1] > 0 else REVERSION_P
    return MOMENTUM_P if sum(last_signs) > 0 else 1.0 - MOMENTUM_P


def up_probability(changes_pct: list[float]) -> float:
    """The Bayes posterior P(next day UP) from a window's shown % changes (at least three)."""
    last = changes_pct[-LOOKBACK:]
    return _p_up(abs(last[-1]) >= REGIME_CUT, [1 if c > 0 else -1 for c in last])


def bayes_accuracy(up_probabilities: list[float]) -> float | None:
    """Expected accuracy of the Bayes classifier over windows with these posteriors."""
    if not up_probabilities:
        return None
    return sum(max(p, 1.0 - p) for p in up_probabilities) / len(up_probabilities)


def business_days(start: date, count: int) -> list[str]:
    out, day = [], start
    while len(out) < count:
        if day.weekday() < 5:
            out.append(day.isoformat())
        day += timedelta(days=1)
    return out


def synthetic_series(days: int, seed: int) -> Series:
    """``days`` moves after a first close of 100 (``days + 1`` closes), seeded."""
    rng = random.Random(seed)
    volatile = rng.random() < 0.5
    signs: list[int] = []
    closes = [100.0]
    for _ in range(days):
        if len(signs) < LOOKBACK:
            sign = rng.choice((1, -1))
        else:
            sign = 1 if rng.random() < _p_up(volatile, signs[-LOOKBACK:]) else -1
        if signs and rng.random() < REGIME_SWITCH_P:
            volatile = not volatile
        move = rng.uniform(*(VOLATILE_MOVE if volatile else CALM_MOVE))
        signs.append(sign)
        closes.append(round(closes[-1] * (1 + sign * move / 100.0), 4))
    return Series(TICKER, NAME, business_days(START_DATE, len(closes)), closes)
