"""Templated answers for the format warm start; they never leak the label.

The reasoning restates facts from the prompt, computed correctly: the last three % changes
and how many were up and down, and the net change over the window. Stating these before the
answer gives a small model the features it needs in its own context (PLATFORM.md's probe
plateaued without them); which direction they imply is left for reinforcement learning to
find: the prediction and the confidence are drawn at random, independently of the next
day's move. (A "the last move was large" clause was dropped: the 2-layer embedded model
never learned to read a move's size from its digits in a 300-step warm start, so the clause
was wrong half the time.) The answers follow the format of ``trainer/tasks/stock/answer.py``
without its optional ``Expected change`` line (short answers fit the demo's token budget), so
the parser reads every one of them as valid.
"""

from __future__ import annotations

import random


def templated_answer(closes: list[float], rng: random.Random) -> str:
    """Reasoning from the shown data (last three % changes, their up/down count, the net
    change), then a random prediction and confidence."""
    changes = [100.0 * (closes[i + 1] / closes[i] - 1.0) for i in range(len(closes) - 1)]
    last = changes[-3:]
    ups = sum(c > 0 for c in last)
    net = 100.0 * (closes[-1] / closes[0] - 1.0)
    trend = "up" if net > 0 else "down"
    listed = ", ".join(f"{c:+.2f}%" for c in last)
    prediction = rng.choice(("UP", "DOWN"))
    confidence = rng.randrange(50, 91, 5)
    return (
        f"Reasoning: Last three changes {listed}: {ups} up, {len(last) - ups} down. "
        f"The trend is {trend} {abs(net):.2f}% over {len(changes)} days.\n"
        f"Prediction: {prediction}\n"
        f"Confidence: {confidence}%"
    )
