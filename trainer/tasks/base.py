"""The task interface between the GRPO machinery and a domain (here: the stock task)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Sample:
    """One prompt: chat messages for the model plus whatever the task needs to score it."""

    id: str
    messages: list[dict[str, str]]
    meta: dict[str, Any] = field(default_factory=dict)


class Task(Protocol):
    """What the learner needs from a domain."""

    def split(self, name: str) -> list[Sample]:
        """Samples of split ``name`` ("train" or "val"), in a fixed order."""

    def score(self, sample: Sample, completion: str) -> dict[str, float]:
        """Reward components for one completion; the total is their sum (already weighted)."""

    def diagnostics(self, sample: Sample, completion: str) -> dict[str, float]:
        """Non-reward measurements of one completion (e.g. correct, format valid), 0..1."""

    def describe(self) -> dict[str, Any]:
        """Counts and facts worth logging once (sizes, label balance)."""
