"""Rewards that know the label distribution: the Stage II skew and the batch diversity term.

- ``accuracy_skew`` (Stage II): a right prediction earns 0.6 x (minority share / share of the
  realised direction), the shares being the training set's natural up ratio. The minority
  direction earns the full 0.6, the majority less, so that always guessing either direction
  has the same expected reward and only reading the data pays. With a 50/50 set it equals
  ``accuracy``.
- ``diversity`` (both stages, seed): penalises a batch collapsing onto one direction. When the
  batch's share of one predicted direction exceeds the training base rate by more than
  ``DIVERSITY_SLACK``, every completion predicting that direction loses up to 0.1 (all of it
  at a batch of one direction). Only the over-represented side pays: a penalty on every
  completion alike would cancel in GRPO's group normalisation and teach nothing.
"""

from __future__ import annotations

from trainer.tasks.stock.answer import ParsedAnswer
from trainer.tasks.stock.rewards.registry import Facts, batch_component, component

DIVERSITY_SLACK = 0.2  # tolerated excess share of one direction over the base rate
DIVERSITY_COST = 0.1
SKEW_FLOOR = 0.05  # base rates are clipped to [0.05, 0.95]


def clip_rate(up_ratio: float) -> float:
    return min(1.0 - SKEW_FLOOR, max(SKEW_FLOOR, up_ratio))


@component("accuracy_skew", 0.0, 0.6)
def accuracy_skew(ans: ParsedAnswer, facts: Facts) -> float:
    if ans.prediction != facts.label:
        return 0.0
    p_up = clip_rate(facts.up_ratio)
    share = p_up if facts.label == "UP" else 1.0 - p_up
    return 0.6 * min(p_up, 1.0 - p_up) / share


@batch_component("diversity", -DIVERSITY_COST, 0.0)
def diversity(answers: list[ParsedAnswer], facts: list[Facts]) -> list[float]:
    made = [a.prediction for a in answers if a.prediction is not None]
    if len(made) < 2:
        return [0.0] * len(answers)
    target_up = clip_rate(sum(f.up_ratio for f in facts) / len(facts))
    excess_up = made.count("UP") / len(made) - target_up
    over = "UP" if excess_up > 0 else "DOWN"
    room = (1.0 - target_up if over == "UP" else target_up) - DIVERSITY_SLACK
    frac = min(1.0, max(0.0, (abs(excess_up) - DIVERSITY_SLACK) / max(room, 1e-9)))
    return [-DIVERSITY_COST * frac if a.prediction == over else 0.0 for a in answers]
