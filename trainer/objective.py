"""The learner's objective: named terms over a micro-batch, composed in one place.

Every term has one signature: it receives the micro-batch as :class:`Scored` (its rows, the
policy's log-probs and entropy, the old and reference log-probs, the extra scores and side
batch it asked for) and returns one :class:`Term` or several. A term is registered by name
(:func:`register_term`) with when the config turns it on, the extra scores it needs from the
policy's scoring pass and the side batch the recipe builds for it; the learner scores each
micro-batch once with what the enabled terms need, calls them in registration order and
adds them (:func:`compose`). Shapes: N completions of at most T tokens.

- ``rl`` (always): the policy gradient of ``train.policy_loss`` with truncated importance
  weights against the workers, plus ``kl_coef`` x the k3 KL to the reference on every token,
  in one aggregation (``trainer/grpo.grpo_loss``: the math and each variant's paper), on the
  tokens ``train.pg_tokens`` selects.
- A task's contributions register more, may view the policy gradient's log-probs
  differently (:func:`register_pg_view`), add scores computed from alternative tokens
  (:func:`register_score`) and per-row extras of each rollout batch (:func:`register_marker`): the stock task's decision machinery (the
  among-options view, the ``decision`` token selection, the anchor and balance terms) is
  ``trainer/tasks/decisions.py``, imported where the task's entry names it
  (``TaskEntry.contributions``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from trainer.config import TrainConfig
from trainer.grpo import SELECTION_MARKS, TOKEN_SELECTIONS, LossSettings, PgView, grpo_loss
from trainer.logprobs import TokenScores
from trainer.types import RolloutBatch


@dataclass
class Term:
    loss: torch.Tensor  # scalar, differentiated
    logged: float  # its value in the run's "loss" metric
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Scored:
    """One micro-batch as every term sees it (tensors on the learner's device)."""

    tc: TrainConfig
    batch: RolloutBatch  # the micro-batch's rows
    mask: torch.Tensor  # [N, T] 1.0 on completion tokens
    logp: torch.Tensor  # [N, T] the policy's log-probs of the sampled tokens, with grad
    entropy: torch.Tensor  # [N, T] the sampling entropy, detached
    # [N, T] detached, at the batch's start: "logp" and each extra score (one update per
    # batch: their current values)
    old: dict[str, torch.Tensor]
    ref_logp: torch.Tensor | None  # [N, T] the reference's (kl_coef > 0)
    extra: dict[str, torch.Tensor]  # extra scores the enabled terms asked for, with grad
    side: dict[str, RolloutBatch | None]  # each term's side batch, this micro-batch's slice
    model: object
    pad_id: int
    device: torch.device
    # a side slice's scores from the policy's pass (TermSpec.side_in_policy_pass, shared-prefix
    # layout on): temperature 1, with grad; a term scores its slice itself when absent
    side_scores: dict[str, TokenScores] = field(default_factory=dict)


TermFn = Callable[[Scored], "Term | list[Term]"]


@dataclass(frozen=True)
class TermSpec:
    name: str
    fn: TermFn
    enabled: Callable[[TrainConfig], bool]
    scores: tuple[str, ...] = ()  # extra scores of the policy pass it reads (Scored.extra)
    # metric -> when the config logs it: averaged over the micro-batches that report it (NaN
    # when none did), so every rank logs the same keys
    sparse: dict[str, Callable[[TrainConfig], bool]] = field(default_factory=dict)
    # builds its side batch for a step: (task, samples, prompt_ids, tokenizer, pad_id, rng)
    # -> RolloutBatch or None; the learner hands each micro-batch its share of the rows
    side: Callable | None = None
    # the side rows continue the batch's prompts and the term reads only their scores (at
    # temperature 1; ``side_alternatives``: the extras key of the alternative tokens it
    # reads): under the shared-prefix layout the learner scores them in the policy's pass,
    # each after its group (trainer/joint.py), and hands them over as Scored.side_scores
    side_in_policy_pass: bool = False
    side_alternatives: str | None = None


@dataclass(frozen=True)
class PgViewSpec:
    name: str
    # (Scored) -> the view grpo_loss applies, or None where this micro-batch has none
    fn: Callable[[Scored], PgView | None]
    enabled: Callable[[TrainConfig], bool]
    scores: tuple[str, ...] = ()


@dataclass(frozen=True)
class ScoreSpec:
    """An extra per-token score (``Scored.extra[name]``, [N, T] with grad) computed from the
    policy's log-probs of alternative tokens the batch names per position: ``alternatives``
    is the batch extra holding their ids ([N, T, K] long, -1 padding); ``fn`` maps (their
    log-probs [N, T, K], -inf at padding; their ids) to the score. Computed where the batch
    has that extra, absent elsewhere. ``reads``: a further batch extra ``fn`` takes as its
    third argument (e.g. a value per alternative)."""

    name: str
    alternatives: str
    fn: Callable[..., torch.Tensor]
    reads: str | None = None


@dataclass(frozen=True)
class MarkerSpec:
    """Per-row extras a contribution attaches to each step's rollout batch when the config
    turns it on: ``fn(task, tokenizer, completions)`` -> {name: [N, ...] tensor}."""

    name: str
    fn: Callable[[object, object, list], dict[str, torch.Tensor]]
    enabled: Callable[[TrainConfig], bool]


TERMS: dict[str, TermSpec] = {}
PG_VIEWS: dict[str, PgViewSpec] = {}
SCORES: dict[str, ScoreSpec] = {}
MARKERS: dict[str, MarkerSpec] = {}


def _registry(table: dict):
    """``register(spec)``: adds ``spec`` to ``table`` under its name and returns it."""
    def register(spec):
        table[spec.name] = spec
        return spec

    return register


register_term = _registry(TERMS)
register_pg_view = _registry(PG_VIEWS)
register_score = _registry(SCORES)
register_marker = _registry(MARKERS)


def active_markers(tc: TrainConfig) -> list[MarkerSpec]:
    return [m for m in MARKERS.values() if m.enabled(tc)]


def active_terms(tc: TrainConfig) -> list[TermSpec]:
    """The terms this config turns on, in registration order (``rl`` first)."""
    return [t for t in TERMS.values() if t.enabled(tc)]


def needed_scores(tc: TrainConfig) -> set[str]:
    """The extra scores the enabled terms and policy-gradient views read."""
    views = [v for v in PG_VIEWS.values() if v.enabled(tc)]
    return {s for spec in [*active_terms(tc), *views] for s in spec.scores}


def compose(terms: list[Term]) -> tuple[torch.Tensor, float, dict[str, float]]:
    """(the loss to differentiate, its logged value, the terms' metrics). The first term
    (``rl``) plus the sum of the others, in this grouping."""
    loss, logged = terms[0].loss, terms[0].logged
    if len(terms) > 1:
        rest, rest_logged = terms[1].loss, terms[1].logged
        for t in terms[2:]:
            rest, rest_logged = rest + t.loss, rest_logged + t.logged
        loss, logged = loss + rest, logged + rest_logged
    metrics: dict[str, float] = {}
    for t in terms:
        metrics.update(t.metrics)
    return loss, logged, metrics


def rl_term(s: Scored) -> Term:
    """Policy gradient + KL on the selected tokens. Metrics: policy_loss, kl, clip_frac,
    is_weight, is_truncated_frac; logp_gap (mean |learner - worker| log-prob), entropy,
    pg_token_frac."""
    tc, mask = s.tc, s.mask
    key = SELECTION_MARKS.get(tc.pg_tokens)  # the tokens a task marked, if it reads any
    marked = s.batch.extras.get(key) if key else None
    pg_weight = TOKEN_SELECTIONS[tc.pg_tokens](s.entropy, mask, tc.entropy_top_frac, marked)
    view = next((v for spec in PG_VIEWS.values() if spec.enabled(tc)
                 if (v := spec.fn(s)) is not None), None)
    rollout = s.batch.rollout_logp.to(s.device)
    loss, stats = grpo_loss(s.logp, s.old["logp"], s.ref_logp, rollout,
                            s.batch.extras.get("token_advantages", s.batch.advantages)
                            .to(s.device), mask, LossSettings.of(tc),
                            pg_weight=pg_weight, pg_view=view)
    with torch.no_grad():
        n = mask.sum().clamp(min=1)
        extra = {"logp_gap": float(((s.logp.detach() - rollout).abs() * mask).sum() / n),
                 "entropy": float((s.entropy * mask).sum() / n),
                 "pg_token_frac": float((pg_weight > 0).sum() / n)}
    return Term(loss, float(loss.detach()), {**vars(stats), **extra})


register_term(TermSpec("rl", rl_term, enabled=lambda tc: True))
