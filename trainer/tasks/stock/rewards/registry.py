"""The reward-component registry, what a component may know (:class:`Facts`), and scoring.

A component is a small function registered under a name with its bounds (unweighted):
per completion ``fn(answer, facts) -> float``, or per batch ``fn(answers, facts) ->
list[float]`` for terms that need the whole batch (diversity). ``reward.weights`` picks
components and scales them; only the named ones are computed and logged (each on its own,
as ``reward/<name>``), and the reward is their sum, which therefore stays within
:func:`bounds` for any text. Weights are >= 0 (config checks): a component's sign is its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from trainer.tasks.stock.answer import ParsedAnswer


@dataclass(frozen=True)
class Facts:
    """What a reward may know about one prompt and its outcome."""

    label: str  # "UP" | "DOWN"
    closes: list[float] = field(default_factory=list)  # N+1 closes (empty for prompt rows)
    changes_pct: list[float] = field(default_factory=list)  # N day-over-day % changes shown
    dates: list[str] = field(default_factory=list)  # dates the prompt shows
    prompt_numbers: list[float] = field(default_factory=list)  # every figure in the prompt
    next_change_pct: float | None = None  # the realised next-day % change, when known
    up_ratio: float = 0.5  # share of UP labels in the training set (the base rate faced)
    # the UP prior a stated confidence is read against: 0.5 as stated, the natural up ratio
    # when reward.market_aware_confidence is on (probability.py)
    prior_up: float = 0.5

    @property
    def trend(self) -> str | None:
        """Direction of the shown window (last close vs the close before it), if known."""
        if len(self.closes) < 2:
            return None
        return "UP" if self.closes[-1] > self.closes[0] else "DOWN"


Single = Callable[[ParsedAnswer, Facts], float]
Batch = Callable[[list[ParsedAnswer], list[Facts]], list[float]]


@dataclass(frozen=True)
class Spec:
    fn: Callable
    low: float  # bounds of the unweighted value, for any answer
    high: float
    batch: bool = False


COMPONENTS: dict[str, Spec] = {}


def component(name: str, low: float, high: float) -> Callable[[Single], Single]:
    def deco(fn: Single) -> Single:
        COMPONENTS[name] = Spec(fn, low, high)
        return fn

    return deco


def batch_component(name: str, low: float, high: float) -> Callable[[Batch], Batch]:
    def deco(fn: Batch) -> Batch:
        COMPONENTS[name] = Spec(fn, low, high, batch=True)
        return fn

    return deco


def _chosen(weights: dict[str, float]) -> list[str]:
    """The weighted components, in the order the config lists them."""
    unknown = [name for name in weights if name not in COMPONENTS]
    if unknown:
        raise KeyError(f"reward.weights: unknown component(s) {unknown}; "
                       f"known: {', '.join(COMPONENTS)}")
    return list(weights)


def score(ans: ParsedAnswer, facts: Facts, weights: dict[str, float]) -> dict[str, float]:
    """Weighted components of one completion, by name. Batch components are 0 here: a lone
    completion is no batch (evaluation uses this; training uses :func:`score_batch`)."""
    return {name: 0.0 if COMPONENTS[name].batch
            else weights[name] * COMPONENTS[name].fn(ans, facts) for name in _chosen(weights)}


def score_batch(answers: list[ParsedAnswer], facts: list[Facts],
                weights: dict[str, float]) -> list[dict[str, float]]:
    """Weighted components of every completion of a batch (``facts[i]`` is answer i's)."""
    out: list[dict[str, float]] = [{} for _ in answers]
    for name in _chosen(weights):
        spec, w = COMPONENTS[name], weights[name]
        values = (spec.fn(answers, facts) if spec.batch
                  else [spec.fn(a, f) for a, f in zip(answers, facts, strict=True)])
        for row, value in zip(out, values, strict=True):
            row[name] = w * value
    return out


def bounds(weights: dict[str, float]) -> tuple[float, float]:
    """The lowest and highest total reward these weights allow, for any answer."""
    chosen = _chosen(weights)
    return (sum(weights[n] * COMPONENTS[n].low for n in chosen),
            sum(weights[n] * COMPONENTS[n].high for n in chosen))
