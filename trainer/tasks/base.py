"""The task interface between the GRPO machinery and a domain (here: the stock task).

The words used here and across the code (decision, lean, option, choice, prior, anchor,
balance, stratum, group, advantage, version, ...) are defined once in docs/glossary.md.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class Sample:
    """One prompt: chat messages for the model plus whatever the task needs to score it."""

    id: str
    messages: list[dict[str, str]]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Choice:
    """A free choice in a reference answer: the character span [start, end) it fills and
    the ``options`` that could stand there (the reference's own among them; empty: the
    anchor leaves the span out and holds nothing of it). ``prior``: each option's share
    across a batch of answers (the decision's label ratio, say); with ``train.balance_coef``
    the anchor holds the batch's mean choice there to it, never any one answer's."""

    start: int
    end: int
    options: tuple[str, ...] = ()
    prior: tuple[float, ...] = ()


class Task(Protocol):
    """What the learner needs from a domain. A task is chosen by name (``task:``) from
    ``registry.py``, which also holds the config sections it owns."""

    def split(self, name: str) -> list[Sample]:
        """Samples of split ``name`` ("train", "val" or "test"), in a fixed order."""

    def score(self, sample: Sample, completion: str) -> dict[str, float]:
        """Reward components for one completion; the total is their sum (already weighted).
        For evaluation: batch-level components (e.g. diversity) are 0 for a lone completion."""

    def score_batch(self, samples: list[Sample],
                    completions: list[list[str]]) -> list[list[dict[str, float]]]:
        """Reward components for every completion ``completions[i][j]`` of ``samples[i]``,
        nested the same way; batch-level components see the whole batch. Training uses it."""

    def stratum(self, sample: Sample) -> str | None:
        """The class a training draw alternates over (``PromptSampler``'s key): every step
        then holds the classes evenly. None: plain shuffled draws."""

    def diagnostics(self, sample: Sample, completion: str) -> dict[str, float]:
        """Non-reward measurements of one completion (e.g. correct, format valid), 0..1."""

    def aggregate(self, diags: list[dict[str, float]]) -> dict[str, float]:
        """Per-step statistics (logged as task/<name>) from a batch's diagnostics."""

    def eval_records(self, samples: list[Sample], completions: list[str]) -> list[dict]:
        """One JSON-serialisable record per (sample, completion) for evaluation."""

    def summarize(self, records: list[dict]) -> dict[str, Any]:
        """Evaluation metrics (accuracy, ROC-AUC, calibration ...) from records."""

    def write_report(self, out: Path, evals: dict[str, dict], gate: dict | None = None,
                     notes: list[str] | None = None) -> Path:
        """Write the evaluation report (``report.md``, ``metrics.json``, plots) of ``evals``
        (split -> ``{"metrics", "records"}``) and the run's training rows into ``out``;
        return the report's path. The task knows what its records mean."""
        ...

    def gate_indicators(self) -> dict[str, Any]:
        """The promotion gate's indicators of the final evaluation (name ->
        ``trainer.gate.Indicator``, made with ``trainer.gate.eval_indicator``), between the
        gate's own reward and loss indicators."""

    def describe(self) -> dict[str, Any]:
        """Counts and facts worth logging once (sizes, label balance)."""


class DecisionTask(Task, Protocol):
    """A task whose answers state a decision among known options (the stock task: the lean),
    registered with ``decisions=True`` (``registry.TaskEntry``): what ``train.pg_tokens:
    decision``, the supervised anchor and the balance term read. Other tasks leave these out
    and train with plain GRPO (config validation refuses those settings for them)."""

    def decision_spans(self, completion: str) -> list[tuple[int, int]]:
        """Character spans [start, end) of ``completion`` that state its decision (for
        ``train.pg_tokens: decision``); empty when it states none."""

    def decision_options(self, word: str) -> tuple[str, ...]:
        """The options a decision written as ``word`` (a span ``decision_spans`` named)
        chose among, spelled as it would be written there, ``word`` among them; empty when
        it is no choice among known options. ``pg_tokens: decision`` moves its policy
        gradient among them only."""

    def anchor_text(self, sample: Sample,
                    rng: random.Random) -> tuple[str, list[Choice]] | None:
        """A label-free reference answer to ``sample`` for the supervised anchor
        (``train.anchor_coef``) and its free choices (drawn with ``rng``: e.g. the direction
        it states, its confidence). The anchor's NLL never holds which option a choice
        took: at a choice with options it holds that *one of them* stands there (their
        summed probability), and the rest of the answer as written. So it keeps the facts,
        the format and what follows from a choice, never the choice itself. None when the
        task has none."""
