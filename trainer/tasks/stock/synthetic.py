"""A seeded synthetic market whose Bayes-optimal next-day accuracy is known exactly.

It is the oracle that proves training learns: the best any model can do is computed, not
guessed, and a trained model's accuracy is read against it.

Generative model (constants below): each day moves up or down by a log-return drawn uniform
in ``MOVE`` % (symmetric in log price, so no systematic drift; the shown % changes are
within 2% of that range); the direction depends on how many of the last three moves were up
(``LOOKBACK``), by a registered rule (``data.synthetic_rule``):
- ``majority`` (the default): momentum; the majority sign of the last three, with
  probability ``MOMENTUM_P`` (Bayes-optimal accuracy 0.8). "Follow the last day" agrees
  with it on 6 of the 8 sign patterns (about 0.65).
- ``streak``: mixed moves (one or two up) follow their majority with ``MOMENTUM_P``; a
  streak (all three the same way) reverts, against the streak with ``REVERSION_P``
  (Bayes about 0.79). Non-monotone in the up count: it must be read as four cases, and the
  two rare ones (streaks, about a quarter of the windows) are the ones a policy gets
  wrong.

So P(next day UP | everything shown) depends only on the signs of the last three % changes,
and :func:`up_probability` computes it from them: a model that reads the prompt can, in
principle, reach the Bayes classifier. That classifier predicts the likelier direction; its
expected accuracy over a set of windows is the mean of ``max(p, 1 - p)``
(:func:`bayes_accuracy`). It conditions on the windows, not on their labels; a balanced
split selects on labels, which moves the realised oracle accuracy by far less than its
sampling noise (the baselines table prints the realised one beside it).

Why the default is ``majority``: the demo's model learns its count -> direction rule
reliably, while ``streak``'s rare cases stay wrong in most seeds (BENCHMARKS.md section 6);
``streak`` stays as the harder benchmark.

Why signs and not sizes: the embedded model counts up and down moves right (the sign is its
own token) but does not read a move's size from its digits; a rule it cannot read would only
measure the model, not the trainer (docs/demo-learning-history.md).

Departure from the seed: the seed trains on real prices only; a market with a known ceiling
is ours, to tell "the trainer does not learn" apart from "there is nothing to learn".
Dates are business days from ``START_DATE``, so the same date-range splits apply.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from datetime import date, timedelta

from trainer.tasks.stock.series import Series

MOMENTUM_P = 0.8  # mixed last three: P(next sign = their majority sign)
REVERSION_P = 0.75  # a streak of three: P(next sign = against the streak)
MOVE = (0.2, 3.0)  # range of every day's |log-return|, in %
LOOKBACK = 3  # the rule reads the last three moves
DEFAULT_RULE = "majority"
START_DATE = date(2000, 1, 3)
TICKER, NAME = "SYN", "Synthetic Streak Corp"  # the name predates the majority rule


RuleFn = Callable[[int], float]  # up moves among the last three -> P(next day UP)
RULES: dict[str, RuleFn] = {}


def register_rule(name: str) -> Callable[[RuleFn], RuleFn]:
    def deco(fn: RuleFn) -> RuleFn:
        RULES[name] = fn
        return fn

    return deco


@register_rule("majority")
def majority(ups: int) -> float:
    """Momentum: the majority sign of the last three."""
    return MOMENTUM_P if 2 * ups > LOOKBACK else 1.0 - MOMENTUM_P


@register_rule("streak")
def streak(ups: int) -> float:
    """Mixed moves follow their majority; a streak of three reverts."""
    if ups in (0, LOOKBACK):  # a streak: against it
        return REVERSION_P if ups == 0 else 1.0 - REVERSION_P
    return majority(ups)


def up_probability(changes_pct: list[float], rule: str = DEFAULT_RULE) -> float:
    """The Bayes posterior P(next day UP) from a window's shown % changes (at least three)."""
    return RULES[rule](sum(c > 0 for c in changes_pct[-LOOKBACK:]))


def bayes_accuracy(up_probabilities: list[float]) -> float | None:
    """Expected accuracy of the Bayes classifier over windows with these posteriors."""
    if not up_probabilities:
        return None
    return sum(max(p, 1.0 - p) for p in up_probabilities) / len(up_probabilities)


def business_days(start: date, count: int, backward: bool = False) -> list[str]:
    """``count`` weekdays as ISO dates, oldest first: from ``start`` on, or (``backward``)
    up to and including ``start`` (the weekday before it on a weekend). No holiday calendar:
    the prompt does not need one."""
    out, day, step = [], start, timedelta(days=-1 if backward else 1)
    while len(out) < count:
        if day.weekday() < 5:
            out.append(day.isoformat())
        day += step
    return out[::-1] if backward else out


def synthetic_series(days: int, seed: int, rule: str = DEFAULT_RULE) -> Series:
    """``days`` moves after a first close of 100 (``days + 1`` closes), seeded."""
    rng = random.Random(seed)
    signs: list[int] = []
    closes = [100.0]
    for _ in range(days):
        if len(signs) < LOOKBACK:
            sign = rng.choice((1, -1))
        else:
            ups = sum(x > 0 for x in signs[-LOOKBACK:])
            sign = 1 if rng.random() < RULES[rule](ups) else -1
        move = rng.uniform(*MOVE)
        signs.append(sign)
        closes.append(float(f"{closes[-1] * math.exp(sign * move / 100.0):.8g}"))
    return Series(TICKER, NAME, business_days(START_DATE, len(closes)), closes)
