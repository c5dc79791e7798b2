"""Stage I reward components for the stock task, as small registered functions.

Split per the seed: prediction accuracy 0-0.6, reasoning quality 0-0.4 = data usage 0-0.2 +
logical coherence 0-0.2. Each component is scaled by its ``reward.weights`` entry and logged
on its own; the total is their sum, so with unit weights it lies in [0, 1].
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from trainer.tasks.stock.answer import ParsedAnswer


@dataclass(frozen=True)
class Facts:
    """What a reward may know about the prompt and the outcome."""

    label: str  # "UP" | "DOWN"
    closes: list[float]  # N+1 closes shown or implied by the prompt
    changes_pct: list[float]  # N day-over-day % changes shown

    @property
    def trend(self) -> str:
        return "UP" if self.closes[-1] > self.closes[0] else "DOWN"


Component = Callable[[ParsedAnswer, Facts], float]
COMPONENTS: dict[str, Component] = {}


def register(name: str) -> Callable[[Component], Component]:
    def deco(fn: Component) -> Component:
        COMPONENTS[name] = fn
        return fn

    return deco


_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
_UP_WORDS = re.compile(r"\b(up|upward|uptrend|rising|rose|gain(?:ed|s)?|higher|increas\w*)\b",
                       re.IGNORECASE)
_DOWN_WORDS = re.compile(r"\b(down|downward|downtrend|falling|fell|drop(?:ped|s)?|lower|"
                         r"declin\w*|decreas\w*|loss(?:es)?)\b", re.IGNORECASE)
MIN_REASONING_WORDS = 8


def _substantive(reasoning: str) -> bool:
    """Generic reasoning ('It will go up.') earns nothing: it must cite data and say enough."""
    return len(reasoning.split()) >= MIN_REASONING_WORDS and bool(_NUMBER.search(reasoning))


def _known_numbers(facts: Facts) -> list[float]:
    known = list(facts.closes) + list(facts.changes_pct)
    net = 100.0 * (facts.closes[-1] / facts.closes[0] - 1.0)
    known.append(net)
    known += [abs(x) for x in facts.changes_pct] + [abs(net)]
    return known


def _matches(value: float, known: list[float]) -> bool:
    return any(abs(value - k) <= max(0.011, 0.0005 * abs(k)) for k in known)


@register("accuracy")
def accuracy(ans: ParsedAnswer, facts: Facts) -> float:
    """0.6 when the prediction is the realised direction, else 0."""
    return 0.6 if ans.prediction == facts.label else 0.0


@register("data_usage")
def data_usage(ans: ParsedAnswer, facts: Facts) -> float:
    """0-0.2: share of cited numbers that are real (prices, % changes, net change), scaled by
    how many are cited (full credit from three correct figures)."""
    if not _substantive(ans.reasoning):
        return 0.0
    cited = [float(m) for m in _NUMBER.findall(ans.reasoning)[:64]]
    # small integers (day counts such as "3 up days") are counted as neither right nor wrong
    figures = [v for v in cited if not (v.is_integer() and abs(v) <= len(facts.changes_pct))]
    if not figures:
        return 0.0
    correct = sum(_matches(v, _known_numbers(facts)) for v in figures)
    return 0.2 * (correct / len(figures)) * min(1.0, correct / 3.0)


@register("coherence")
def coherence(ans: ParsedAnswer, facts: Facts) -> float:
    """0-0.2: 0.1 when the stated trend matches the data, 0.1 when the prediction follows
    from the stated trend (or the reasoning explicitly expects a reversal)."""
    if not _substantive(ans.reasoning) or ans.prediction is None:
        return 0.0
    ups = len(_UP_WORDS.findall(ans.reasoning))
    downs = len(_DOWN_WORDS.findall(ans.reasoning))
    if ups == downs:
        return 0.0
    stated = "UP" if ups > downs else "DOWN"
    reversal = bool(re.search(r"\b(revers\w*|rebound\w*|bounce\w*|pullback)\b", ans.reasoning,
                              re.IGNORECASE))
    score = 0.1 if stated == facts.trend else 0.0
    if ans.prediction == stated or (reversal and ans.prediction != stated):
        score += 0.1
    return score


def score(ans: ParsedAnswer, facts: Facts, weights: dict[str, float]) -> dict[str, float]:
    """Weighted components by name; components whose weight is missing count zero."""
    return {name: weights.get(name, 0.0) * fn(ans, facts) for name, fn in COMPONENTS.items()}
