"""The learner's objective, as named terms composed in one place.

Each term is a function of the tensors it reads (shapes in its docstring) and returns a
:class:`Term`: the scalar to differentiate, its value as the run logs it, and its metrics.
:func:`compose` adds them; the learner (``trainer/learner.py``) calls the terms per
micro-batch and differentiates the sum. Shapes: N completions of at most T tokens; the
anchor's M rows at a balanced choice with K options.

- ``rl``: the policy gradient of ``train.policy_loss`` with truncated importance weights
  against the workers, plus ``kl_coef`` x the k3 KL to the reference on every token, in one
  aggregation (``trainer/grpo.grpo_loss``: the math and each variant's paper).
- ``anchor``: ``anchor_coef`` x the mean NLL per token of label-free reference answers, their
  free choices held only as "one of the options" (``anchor_terms``).
- ``balance``: ``balance_coef`` x KL(the batch's mean choice over every rank || the prior), a
  collective (``balance_kl``).

Words (decision, choice, option, prior, anchor, balance): docs/glossary.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from trainer.config import TrainConfig
from trainer.dist import all_reduce_, rank_and_world
from trainer.grpo import POLICY_LOSSES, clip_range, grpo_loss
from trainer.logprobs import score_tokens
from trainer.types import RolloutBatch

MAX_OPTIONS = 8  # options of a balanced choice (the balance term reduces a fixed width)


@dataclass
class Term:
    loss: torch.Tensor  # scalar, differentiated
    logged: float  # its value in the run's "loss" metric
    metrics: dict[str, float] = field(default_factory=dict)


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


def rl_term(tc: TrainConfig, logp: torch.Tensor, old_logp: torch.Tensor,
            ref_logp: torch.Tensor | None, rollout_logp: torch.Tensor,
            advantages: torch.Tensor, mask: torch.Tensor, pg_weight: torch.Tensor,
            choice_lse: torch.Tensor | None, old_choice_lse: torch.Tensor | None) -> Term:
    """Policy gradient + KL. logp, old_logp, ref_logp, rollout_logp, mask, pg_weight,
    choice_lse [N, T]; advantages [N]. Metrics: policy_loss, kl, clip_frac, is_weight,
    is_truncated_frac."""
    low, high = clip_range(tc)
    aggregation = POLICY_LOSSES[tc.policy_loss].aggregation if tc.loss_agg == "auto" \
        else tc.loss_agg
    loss, stats = grpo_loss(
        logp, old_logp, ref_logp, rollout_logp, advantages, mask, clip_eps=low,
        clip_eps_high=high, kl_coef=tc.kl_coef, is_cap=tc.is_cap, policy_loss=tc.policy_loss,
        aggregation=aggregation, pg_weight=pg_weight, choice_lse=choice_lse,
        old_choice_lse=old_choice_lse)
    return Term(loss, float(loss.detach()), dict(vars(stats)))


def anchor_term(tc: TrainConfig, model, chunk: RolloutBatch | None, pad_id: int,
                device: torch.device) -> tuple[Term, torch.Tensor, torch.Tensor]:
    """``anchor_coef`` x the NLL of this micro-batch's slice of reference answers, and the
    slice's option shares and priors at balanced choices ([M, K] each; M = 0 without rows)
    for :func:`balance_term`. Metric ``anchor_nll`` when the slice has rows."""
    loss = torch.zeros((), device=device)
    metrics: dict[str, float] = {}
    if chunk is not None and len(chunk):
        nll, share, prior = anchor_terms(model, chunk, pad_id, device, tc.logits_chunk_tokens)
        if tc.anchor_coef > 0:
            loss = loss + tc.anchor_coef * nll
            metrics["anchor_nll"] = float(nll.detach())
    else:
        share = prior = torch.zeros((0, 1), device=device)
    return Term(loss, float(loss.detach()), metrics), share, prior


def balance_term(tc: TrainConfig, share: torch.Tensor, prior: torch.Tensor) -> Term:
    """``balance_coef`` x :func:`balance_kl` of every rank's shares and priors ([M, K] on
    this rank). Logged without the world-size factor that only serves DeepSpeed's gradient
    average. Metric ``balance_share``: the batch's mean share of the first option, when
    this rank has rows. A collective: every rank calls it once per micro-batch."""
    kl, mean = balance_kl(share, prior)
    metrics = {"balance_share": float(mean[0])} if share.numel() else {}
    return Term(tc.balance_coef * kl, tc.balance_coef * float(kl.detach()) / rank_and_world()[1],
                metrics)


def anchor_terms(model, anchor: RolloutBatch, pad_id: int, device: torch.device,
                 chunk_tokens: int = 0):
    """The anchor's two terms from one forward (temperature 1, with grad):

    - the mean NLL per token of the reference answers. The tokens of their free choices
      (``decision_mask``) are not held as written: where a choice is made and ``choice_ids``
      names its options, the term is -log p(one of the options), so the choice stays free
      but the slot keeps to them (without it, pushing one option down on-policy moves its
      mass anywhere, and the format breaks); the choice's other tokens are left out;
    - at the balanced choices (``choice_prior``), each row's option shares (its options'
      probabilities renormalised over them) and their priors: ([M, K], [M, K]), M rows
      that have one (M = 0: empty tensors). ``balance_kl`` turns them into the balance term.
    """
    scored = score_tokens(model, anchor, pad_id, 1.0, device, options=True,
                          chunk_tokens=chunk_tokens)
    logp, alts = scored.logp, scored.options
    mask = anchor.completion_mask.to(device)
    if anchor.decision_mask is not None:
        held = 1.0 - anchor.decision_mask.to(device)
        if anchor.choice_ids is not None:
            held = (held + (anchor.choice_ids[..., 0] >= 0).to(device, mask.dtype)).clamp(max=1)
        mask = mask * held
    nll = -(logp * mask).sum() / mask.sum().clamp(min=1)
    if anchor.choice_prior is None or alts is None:
        return nll, torch.zeros((0, 1), device=device), torch.zeros((0, 1), device=device)
    prior = anchor.choice_prior.to(device)
    at = prior.sum(-1) > 0  # [n, T]
    shares = torch.softmax(alts[at], dim=-1)  # -inf options (padding) get share 0
    return nll, shares, prior[at]


def anchor_nll(model, anchor: RolloutBatch, pad_id: int, device: torch.device) -> torch.Tensor:
    """Mean NLL per token of the anchor's reference answers (``anchor_terms``' first)."""
    return anchor_terms(model, anchor, pad_id, device)[0]


def balance_kl(shares: torch.Tensor, prior: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """KL(mean share || mean prior) over every rank's rows at the balanced choice: shares
    [M, K] (with grad) and prior [M, K] of this rank; returns (the KL term scaled so that
    DeepSpeed's cross-rank gradient average gives the gradient of the global KL, the mean
    shares [K], detached).

    Departure from GRPO, and why: the policy gradient moves a decision through features
    every prompt shares (on the embedded model they are ~95% of the hidden state where the
    lean is written), so a step's noise moves every prompt's decision together and one
    option can take over before the decision learns to depend on the prompt; from there a
    group samples one option only and gets no advantage. Holding the batch's *mean* choice
    to the prior (the labels' ratio: 50/50 in Stage I) removes that shared drift and leaves
    how the choice differs between prompts to the reward (the marginal-entropy term of
    mutual-information objectives)."""
    if shares.shape[-1] > MAX_OPTIONS:
        raise ValueError(f"a balanced choice has {shares.shape[-1]} options; at most "
                         f"{MAX_OPTIONS} are supported")
    # one fixed width on every rank, so a rank without rows still matches the reduction
    pad = MAX_OPTIONS - shares.shape[-1]
    local = torch.nn.functional.pad(shares, (0, pad)).sum(0)  # [MAX_OPTIONS], with grad
    total = torch.stack([local.detach(), torch.nn.functional.pad(prior, (0, pad)).sum(0)])
    total = torch.cat([total.flatten(), total.new_tensor([float(shares.shape[0])])])
    world = rank_and_world()[1]
    all_reduce_(total)  # on the shares' device (the learner's): NCCL takes CUDA tensors only
    n, sums, priors = total[-1], total[:MAX_OPTIONS], total[MAX_OPTIONS:2 * MAX_OPTIONS]
    k = int((priors > 0).sum())
    if float(n) == 0 or k == 0:
        return local.sum() * 0.0, local.detach()[:shares.shape[-1]]
    mean = ((sums - local.detach() + local) / n)[:k]  # gradient through this rank's rows
    target = (priors / n)[:k]
    kl = (mean * (mean.clamp(min=1e-12).log() - target.clamp(min=1e-6).log())).sum()
    return kl * world, mean.detach()
