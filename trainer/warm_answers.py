"""Templated answers for the format warm start; they never leak the label.

The reasoning restates facts from the prompt (first and last close, net change, counts of up
and down days, the stated trend), computed correctly; the prediction and the confidence are
drawn at random, independently of the next day's move. The answers follow the format of
``trainer/tasks/stock/answer.py`` without its optional ``Expected change`` line (short
answers fit the demo's token budget), so the parser reads every one of them as valid.
"""

from __future__ import annotations

import random

from trainer.tasks.stock.prompt import fmt_price


def templated_answer(closes: list[float], rng: random.Random) -> str:
    changes = [closes[i + 1] / closes[i] - 1.0 for i in range(len(closes) - 1)]
    ups = sum(c > 0 for c in changes)
    downs = len(changes) - ups
    net = 100.0 * (closes[-1] / closes[0] - 1.0)
    trend = "up" if net > 0 else "down"
    prediction = rng.choice(("UP", "DOWN"))
    confidence = rng.randrange(50, 91, 5)
    return (
        f"Reasoning: The close moved from {fmt_price(closes[0])} to {fmt_price(closes[-1])} "
        f"({net:+.2f}%) over {len(changes)} days, with {ups} up days and {downs} down days, "
        f"so the trend is {trend}.\n"
        f"Prediction: {prediction}\n"
        f"Confidence: {confidence}%"
    )
