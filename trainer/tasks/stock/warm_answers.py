"""Templated answers for the format warm start; they never leak the label.

The reasoning restates facts from the prompt, computed correctly: the window's trend, the
direction of each of the last three days, how many were down and up, and which way most of
them went ("mostly down"). The word right after that is a lean ("bullish" / "bearish") that
the prediction then repeats. The prediction, its lean and the confidence are drawn at
random, independently of the data and of the next day's move: which direction the facts
imply (momentum or reversal, and from which fact) is left to reinforcement learning.

Why the lean sits right after the majority word: GRPO has to learn a decision that depends
on the count, and a small model learns that fastest where its input is the token right
before (``benchmarks/decision_probe.py``). Right after the up count digit, six of ten seeds
stopped one pattern short of the Bayes rule: the lean read the first of the three moves, a
direction word, instead of the digit (BENCHMARKS.md 12e); "mostly up/down" states the same
fact as a direction word, and the lean reads it (12f). The warm start learns the lean ->
prediction copy (``trainer/tasks/stock/warmstart.py`` weights those two tokens).

Why no price figures: the embedded model copied their digits wrong, and their sampling
entropy drowned the decision's in the policy gradient. The measurements behind both:
docs/demo-learning-history.md, "Measurements behind the code".

The answers follow the format of ``trainer/tasks/stock/answer.py`` without its optional
``Expected change`` line (short answers fit the demo's token budget), so the parser reads
every one of them as valid.
"""

from __future__ import annotations

import random

from trainer.tasks.base import Choice

LEAN = {"UP": "bullish", "DOWN": "bearish"}
CONFIDENCES = (50, 60, 70, 80, 90)  # the stated confidence, in %


def reasoning_prefix(closes: list[float]) -> str:
    """The answer up to the lean: the window's trend, the last three days' directions,
    their down/up count and their majority, all read from ``closes``. No label in it."""
    rises = [b > a for a, b in zip(closes[:-1], closes[1:], strict=True)]
    last = rises[-3:]
    ups = sum(last)
    trend = "up" if closes[-1] > closes[0] else "down"
    days = ", ".join("up" if r else "down" for r in last)
    most = "up" if 2 * ups > len(last) else "down"
    return (f"Reasoning: The trend is {trend} over {len(rises)} days. "
            f"The last three days went {days}: down {len(last) - ups}, up {ups}, "
            f"mostly {most}")


def templated_answer(closes: list[float], rng: random.Random) -> str:
    """The reasoning prefix, then a random lean, the prediction it announces, and a random
    confidence."""
    return answer_and_choices(closes, rng)[0]


def answer_and_choices(closes: list[float], rng: random.Random,
                       prediction: str | None = None) -> tuple[str, list[Choice]]:
    """``templated_answer``'s text and its random choices, the lean word (options: both
    leans) and the confidence figure (options: every figure the template draws); the
    prediction restates the lean: not a choice. The supervised anchor holds that one of a
    choice's options stands there, never which (``train.anchor_coef``)."""
    drawn = rng.choice(("UP", "DOWN"))  # drawn even when given: the same draws follow
    prediction = prediction or drawn
    confidence = rng.choice(CONFIDENCES)
    head = f"{reasoning_prefix(closes)} "
    middle = f"{LEAN[prediction]}.\nPrediction: {prediction}\nConfidence: "
    text = f"{head}{middle}{confidence}%"
    lean = Choice(len(head), len(head) + len(LEAN[prediction]), tuple(LEAN.values()))
    figure = Choice(len(head) + len(middle), len(text) - 1, tuple(map(str, CONFIDENCES)))
    return text, [lean, figure]
