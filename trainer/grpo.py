"""GRPO math as pure functions over tensors: advantages, KL, the clipped surrogate loss.

Shapes: ``N`` sequences (= prompts x group size G), ``T`` completion tokens (right padded).
Variants (advantage estimators, loss aggregations, policy-gradient token selections) are small
registered functions chosen by name from config, never string switches inside the loss.

Where we depart from the paper (DeepSeekMath GRPO) and why:
- The reference policy is the base with the LoRA adapter disabled (no second model copy).
- KL uses the k3 estimator ``exp(ref - logp) - (ref - logp) - 1`` per token, as in the paper.
- Rollouts come from vLLM workers, whose numerics differ slightly from the learner's. The
  policy-gradient term is weighted by a truncated importance ratio
  ``min(exp(old_logp - rollout_logp), is_cap)`` (detached), so the update stays correct when
  the sampler and learner disagree a little (truncated IS, Yao et al. 2025).
- With one update per batch ``old_logp`` is the detached current log-prob, so the ratio is 1
  and clipping is inactive; clipping matters when a batch is reused for several updates
  (``train.updates_per_batch``).
- The policy-gradient term is a registered variant (``POLICY_LOSSES``, ``train.policy_loss``):
  grpo, dapo, gspo, cispo; each function's docstring names its paper and our departures.
- Token selections (``TOKEN_SELECTIONS``, ``train.pg_tokens``): all, high_entropy here; a
  task's contribution may register more (the stock task's ``decision``,
  ``trainer/tasks/decisions.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

AdvantageFn = Callable[[torch.Tensor, int], torch.Tensor]
AggregateFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# (entropy [N, T], mask [N, T], top_frac, the tokens the task marked [N, T] or None) ->
# weight [N, T]
SelectFn = Callable[[torch.Tensor, torch.Tensor, float, torch.Tensor | None], torch.Tensor]

# (logp [N, T] with grad, old_logp [N, T] detached, advantages [N, 1], mask [N, T], clip low,
# clip high) -> (per-token policy-gradient loss [N, T], 0/1 [N, T]: where the ratio lies
# outside [1 - low, 1 + high])
PolicyLossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float, float],
                        tuple[torch.Tensor, torch.Tensor]]

ADVANTAGE_ESTIMATORS: dict[str, AdvantageFn] = {}
LOSS_AGGREGATIONS: dict[str, AggregateFn] = {}
TOKEN_SELECTIONS: dict[str, SelectFn] = {}
SELECTION_MARKS: dict[str, str | None] = {}  # selection -> the batch extra it reads


@dataclass(frozen=True)
class PolicyLoss:
    """A registered policy-gradient variant and the defaults it comes with: its paper's
    aggregation (``train.loss_agg: auto``) and clip range (where ``train.clip_eps_low`` /
    ``clip_eps_high`` are unset; None: ``train.clip_eps``)."""

    fn: PolicyLossFn
    aggregation: str
    clip_low: float | None = None
    clip_high: float | None = None


POLICY_LOSSES: dict[str, PolicyLoss] = {}


def register_policy_loss(name: str, aggregation: str, clip_low: float | None = None,
                         clip_high: float | None = None) -> Callable[[PolicyLossFn],
                                                                     PolicyLossFn]:
    def deco(fn: PolicyLossFn) -> PolicyLossFn:
        POLICY_LOSSES[name] = PolicyLoss(fn, aggregation, clip_low, clip_high)
        return fn

    return deco


def register_advantage(name: str) -> Callable[[AdvantageFn], AdvantageFn]:
    def deco(fn: AdvantageFn) -> AdvantageFn:
        ADVANTAGE_ESTIMATORS[name] = fn
        return fn

    return deco


def register_aggregation(name: str) -> Callable[[AggregateFn], AggregateFn]:
    def deco(fn: AggregateFn) -> AggregateFn:
        LOSS_AGGREGATIONS[name] = fn
        return fn

    return deco


def register_selection(name: str, marks: str | None = None
                       ) -> Callable[[SelectFn], SelectFn]:
    """Register a token selection; ``marks``: the batch extra (``RolloutBatch.extras``) it
    reads as the marked tokens (a task's contribution attaches it), else None."""
    def deco(fn: SelectFn) -> SelectFn:
        TOKEN_SELECTIONS[name] = fn
        SELECTION_MARKS[name] = marks
        return fn

    return deco


def _grouped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(
            f"rewards must be 1-D with a multiple of group_size={group_size} entries, "
            f"got shape {tuple(rewards.shape)}"
        )
    return rewards.view(-1, group_size)


@register_advantage("grpo")
def grpo_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """rewards [N] (N = P*G, groups contiguous) -> advantages [N]: (r - mean_g) / (std_g + eps).

    std is the unbiased sample std; a group whose rewards are all equal (std < eps) gets
    exact zeros, not rounding noise divided by eps.
    """
    g = _grouped(rewards.float(), group_size)
    mean = g.mean(dim=1, keepdim=True)
    std = g.std(dim=1, keepdim=True, unbiased=True)
    adv = (g - mean) / (std + eps)
    return torch.where(std < eps, torch.zeros_like(adv), adv).view(-1)


@register_advantage("dr_grpo")
def dr_grpo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """rewards [N] -> advantages [N]: r - mean_g, no std scaling (Dr. GRPO, Liu et al. 2025)."""
    g = _grouped(rewards.float(), group_size)
    return (g - g.mean(dim=1, keepdim=True)).view(-1)


@register_aggregation("seq-mean-token-mean")
def seq_mean_token_mean(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[N, T] -> scalar: mean over each sequence's tokens, then over sequences (GRPO paper)."""
    lengths = mask.sum(dim=1).clamp(min=1)
    return ((per_token * mask).sum(dim=1) / lengths).mean()


@register_aggregation("token-mean")
def token_mean(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[N, T] -> scalar: mean over every completion token of the batch (DAPO)."""
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


@register_selection("all")
def all_tokens(entropy: torch.Tensor, mask: torch.Tensor, top_frac: float,
               marked: torch.Tensor | None) -> torch.Tensor:
    """Every completion token carries the policy gradient (the GRPO paper)."""
    return mask.to(torch.float32)


@register_selection("high_entropy")
def high_entropy_tokens(entropy: torch.Tensor, mask: torch.Tensor, top_frac: float,
                        marked: torch.Tensor | None) -> torch.Tensor:
    """entropy [N, T], mask [N, T] -> 0/1 [N, T]: the ``top_frac`` share of the batch's
    completion tokens with the highest sampling entropy, at least one token. Ties are kept,
    to float rounding (within 1e-4 relative): completions of one group that share a prefix
    have mathematically equal entropies there, which one layout computes bit for bit equal
    and another (trainer/shared_prefix.py) a rounding apart; either way all or none of them
    is in.

    Wang et al. 2025 ("Beyond the 80/20 rule"): the policy gradient of the few "forking" tokens
    where the sampler really chooses carries the learning; the near-deterministic rest adds
    noise with the same advantage. Every token still pays the KL term.
    """
    valid = mask > 0
    entropy = entropy.detach().float()
    values = entropy[valid]
    if values.numel() == 0:
        return torch.zeros_like(mask, dtype=torch.float32)
    k = max(1, int(round(top_frac * values.numel())))
    threshold = torch.topk(values, k).values[-1]
    threshold = threshold - (1e-4 * threshold.abs() + 1e-7)
    return ((entropy >= threshold) & valid).to(torch.float32)


def clip_range(tc) -> tuple[float, float]:
    """(low, high) of the ratio's clip for a train config ``tc``: train.clip_eps_low /
    clip_eps_high where set, else the policy-loss variant's own, else train.clip_eps."""
    variant = POLICY_LOSSES[tc.policy_loss]
    pick = [tc.clip_eps_low, variant.clip_low, tc.clip_eps], [tc.clip_eps_high,
                                                              variant.clip_high, tc.clip_eps]
    return tuple(next(x for x in side if x is not None) for side in pick)


def _outside(ratio: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return ((ratio < 1.0 - low) | (ratio > 1.0 + high)).float()


@register_policy_loss("grpo", "seq-mean-token-mean")
def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor,
                      mask: torch.Tensor, low: float, high: float):
    """PPO's clipped surrogate per token, ``-min(r A, clip(r, 1 - low, 1 + high) A)`` with
    ``r = exp(logp - old_logp)`` (DeepSeekMath's GRPO, Shao et al. 2024: low = high =
    ``train.clip_eps``)."""
    ratio = torch.exp(logp - old_logp)
    clipped = torch.clamp(ratio, 1.0 - low, 1.0 + high)
    return -torch.minimum(ratio * adv, clipped * adv), _outside(ratio.detach(), low, high)


@register_policy_loss("dapo", "token-mean", clip_high=0.28)
def dapo_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor,
                   mask: torch.Tensor, low: float, high: float):
    """DAPO (Yu et al. 2025): the clipped surrogate with a decoupled, wider upper clip
    ("clip-higher": low 0.2, high 0.28, so unlikely tokens can still gain), averaged over the
    batch's tokens (token-mean: long answers weigh by their length). The paper's other two
    parts are their own settings here: overlong shaping (``reward.overlong_buffer``,
    :func:`overlong_penalty`) and dynamic sampling (``rollout.dynamic_sampling``). Departure:
    the paper drops the KL term; ``train.kl_coef`` still applies (set it to 0 for the
    paper's objective)."""
    return clipped_surrogate(logp, old_logp, adv, mask, low, high)


@register_policy_loss("gspo", "seq-mean-token-mean", clip_low=3e-4, clip_high=4e-4)
def gspo_sequence(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor,
                  mask: torch.Tensor, low: float, high: float):
    """GSPO (Zheng et al. 2025): one importance ratio per sequence, the geometric mean of its
    token ratios ``s = exp(mean_t(logp - old_logp))``, clipped per sequence with the paper's
    small range (3e-4, 4e-4): ``-min(s A, clip(s) A)``, written at every token of the
    sequence so that the per-sequence mean (the default aggregation) is the paper's
    sequence objective and its gradient is ``A s mean_t grad logp_t`` (GSPO-token with one
    advantage per sequence). Departure: the truncated IS weight against the workers
    (``train.is_cap``) stays per token."""
    lengths = mask.sum(dim=1, keepdim=True).clamp(min=1)
    seq_ratio = torch.exp(((logp - old_logp) * mask).sum(dim=1, keepdim=True) / lengths)
    clipped = torch.clamp(seq_ratio, 1.0 - low, 1.0 + high)
    per_seq = -torch.minimum(seq_ratio * adv, clipped * adv)  # [N, 1]
    return (per_seq.expand_as(logp),
            _outside(seq_ratio.detach(), low, high).expand_as(logp))


@register_policy_loss("cispo", "token-mean", clip_low=1.0, clip_high=0.28)
def cispo_reinforce(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor,
                    mask: torch.Tensor, low: float, high: float):
    """CISPO (MiniMax-M1, 2025): REINFORCE on every token, ``-sg(clip(r, 1 - low, 1 + high))
    A logp``, the clipped importance weight detached, so no token's gradient is dropped as
    PPO's clip drops it (only its weight is bounded); token-mean. The paper bounds the
    weight from above only: low defaults to 1 (a weight >= 0, never clipped from below);
    high to 0.28 here (the paper tunes it per run)."""
    ratio = torch.exp(logp - old_logp).detach()
    weight = torch.clamp(ratio, 1.0 - low, 1.0 + high)
    return -weight * adv * logp, _outside(ratio, low, high)


def overlong_penalty(lengths: torch.Tensor, max_tokens: int, buffer: int) -> torch.Tensor:
    """DAPO's soft overlong punishment: lengths [N] (completion tokens) -> [N] in [-1, 0]:
    0 up to ``max_tokens - buffer`` tokens, then falling linearly to -1 at ``max_tokens``
    (``reward.overlong_buffer``; its weight is ``reward.overlong_coef``). The workers stop
    at ``max_tokens``, so -1 is the floor."""
    free = max_tokens - buffer
    over = (lengths.float() - free).clamp(min=0) / max(buffer, 1)
    return -over.clamp(max=1.0)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """[N, T], [N, T] -> [N, T]: k3 estimate of KL(policy || ref), >= 0, zero where equal."""
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1.0


@dataclass
class LossStats:
    """Detached scalars for logging (means over valid tokens)."""

    policy_loss: float
    kl: float
    clip_frac: float
    is_weight: float
    is_truncated_frac: float


@dataclass(frozen=True)
class LossSettings:
    """The loss's hyperparameters: the variant (``POLICY_LOSSES``), its clip range ``[1 -
    clip_low, 1 + clip_high]``, the KL weight, the importance weight's cap and the
    aggregation (``LOSS_AGGREGATIONS``)."""

    clip_low: float = 0.2
    clip_high: float = 0.2
    kl_coef: float = 0.0
    is_cap: float = 2.0
    policy_loss: str = "grpo"
    aggregation: str = "seq-mean-token-mean"

    @classmethod
    def of(cls, tc) -> LossSettings:
        """A train config's: its clip range (:func:`clip_range`) and aggregation (``auto``:
        the variant's own)."""
        low, high = clip_range(tc)
        aggregation = (POLICY_LOSSES[tc.policy_loss].aggregation if tc.loss_agg == "auto"
                       else tc.loss_agg)
        return cls(low, high, tc.kl_coef, tc.is_cap, tc.policy_loss, aggregation)


# (logp, old_logp) -> the log-probs the policy-gradient ratio reads, now and at the batch's start
PgView = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None,
              rollout_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              settings: LossSettings, *, pg_weight: torch.Tensor | None = None,
              pg_view: PgView | None = None) -> tuple[torch.Tensor, LossStats]:
    """Policy gradient (``POLICY_LOSSES[settings.policy_loss]``, its ratio clipped to
    ``[1 - clip_low, 1 + clip_high]``) + ``kl_coef`` x the k3 KL, with truncated importance
    sampling against the workers.

    logp [N, T]: learner log-probs of the sampled tokens (requires grad)
    old_logp [N, T]: learner log-probs before this update (detached)
    ref_logp [N, T] or None: reference policy log-probs (None when kl_coef == 0)
    rollout_logp [N, T]: the worker's log-probs of the same tokens
    advantages [N], or [N, T] per token (``train.credit``); mask [N, T] (1.0 on completion
    tokens, 0.0 on padding)
    pg_weight [N, T] or None: per-token weight of the policy-gradient term only (the KL term
    keeps every token), e.g. from ``TOKEN_SELECTIONS``; the aggregation divides by ``mask``.
    pg_view or None: ``(logp, old_logp) -> (the log-probs the policy-gradient ratio reads
    now, at the batch's start)``, where a task's contribution renormalises them (the stock
    task: over a decision's options); the importance weight and the KL keep ``logp``.
    Returns the scalar loss and detached stats.
    """
    mask = mask.to(logp.dtype)
    adv = advantages.to(logp.dtype)  # [N] -> [N, 1]; [N, T] (credit by span) as it is
    adv = adv.unsqueeze(1) if adv.dim() == 1 else adv
    pg_logp, pg_old = (logp, old_logp) if pg_view is None else pg_view(logp, old_logp)
    pg, outside = POLICY_LOSSES[settings.policy_loss].fn(pg_logp, pg_old, adv, mask,
                                                         settings.clip_low, settings.clip_high)
    raw_is = torch.exp(old_logp - rollout_logp).detach()
    is_weight = torch.clamp(raw_is, max=settings.is_cap)
    if pg_weight is not None:
        pg = pg * pg_weight.to(logp.dtype).detach()
    per_token = is_weight * pg
    kl = torch.zeros_like(logp)
    if ref_logp is not None and settings.kl_coef > 0:
        kl = k3_kl(logp, ref_logp)
        per_token = per_token + settings.kl_coef * kl

    aggregate = LOSS_AGGREGATIONS[settings.aggregation]
    loss = aggregate(per_token, mask)
    with torch.no_grad():
        n = mask.sum().clamp(min=1)
        stats = LossStats(
            policy_loss=float(aggregate(pg, mask)),
            kl=float((kl * mask).sum() / n),
            clip_frac=float((outside.to(mask.dtype) * mask).sum() / n),
            is_weight=float((is_weight * mask).sum() / n),
            is_truncated_frac=float(((raw_is > settings.is_cap).to(mask.dtype) * mask).sum() / n),
        )
    return loss, stats
