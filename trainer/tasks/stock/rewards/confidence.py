"""Confidence and magnitude: how sure the answer is, and how far it expects the move to go.

- ``confidence`` (seed, Stage I): a wrong prediction costs more the higher its confidence,
  on a sliding scale from -0.02 at 0% to -0.15 at 100% (the seed's -0.2 .. -1.5 on its
  10-point scale). An answer without a prediction or a confidence counts as wrong at 100%,
  so dropping the format never pays.
- ``calibration`` (Stage II): 0.2 x (1 - Brier score) of the probability the answer gave
  the realised direction. Brier is a proper scoring rule: the expected reward is highest
  when the stated confidence equals the real chance of being right, so a calibrated
  confidence earns more than a bold or a timid one.
- Both read the confidence through ``probability.p_predicted``: as stated, or market-aware
  (prior-shifted to the natural up ratio) when ``reward.market_aware_confidence`` is on.
- ``magnitude`` (Stage II, seed): for a right direction with an ``Expected change`` of the
  same sign, 0.2 x max(0, 1 - |error| / max(0.5, |actual|)). The seed paid in four steps;
  ours is the continuous version of the same scale.
"""

from __future__ import annotations

from trainer.tasks.stock.answer import ParsedAnswer
from trainer.tasks.stock.rewards.probability import p_predicted
from trainer.tasks.stock.rewards.registry import Facts, component

WRONG_COST_AT_ZERO = 0.02
WRONG_COST_AT_FULL = 0.15


@component("confidence", -WRONG_COST_AT_FULL, 0.0)
def confidence(ans: ParsedAnswer, facts: Facts) -> float:
    if ans.prediction == facts.label:
        return 0.0
    p = p_predicted(ans, facts.prior_up)
    c = 1.0 if p is None else p
    return -(WRONG_COST_AT_ZERO + (WRONG_COST_AT_FULL - WRONG_COST_AT_ZERO) * c)


@component("calibration", 0.0, 0.2)
def calibration(ans: ParsedAnswer, facts: Facts) -> float:
    p = p_predicted(ans, facts.prior_up)
    if p is None:
        return 0.0
    p_real = p if ans.prediction == facts.label else 1.0 - p
    return 0.2 * (1.0 - (1.0 - p_real) ** 2)


@component("magnitude", 0.0, 0.2)
def magnitude(ans: ParsedAnswer, facts: Facts) -> float:
    actual, expected = facts.next_change_pct, ans.expected_change
    if actual is None or expected is None or ans.prediction != facts.label:
        return 0.0
    if (expected > 0) != (ans.prediction == "UP"):
        return 0.0  # an expected change against its own prediction is incoherent
    return 0.2 * max(0.0, 1.0 - abs(expected - actual) / max(0.5, abs(actual)))
