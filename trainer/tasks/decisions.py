"""The decision machinery, a contribution the stock task registers (``TaskEntry.contributions``)
for tasks whose answers state a decision among known options (``DecisionTask``):

- the ``decision`` token selection (``train.pg_tokens: decision``): the policy gradient on the
  tokens that state the decision only;
- the among-options view of the policy gradient: at a decision's token the ratio is that of
  p(token | one of the options), so the credit moves probability among the options and never
  to other tokens (a wrong choice pushed down sends its mass to the right one, not into the
  format); the importance weight and the KL keep the full distribution;
- the ``anchor`` term (``train.anchor_coef``): the NLL per token of label-free reference
  answers (``DecisionTask.anchor_text``), their free choices held only as "one of the
  options"; and with it the balance term (``train.balance_coef``): KL(the batch's mean choice
  over every rank || the prior), a collective.

Shapes: N completions of at most T tokens; the anchor's M rows at a balanced choice with K
options. Words (decision, choice, option, prior, anchor, balance): docs/glossary.md.
"""

from __future__ import annotations

import random

import torch

from trainer.dist import all_reduce_, rank_and_world
from trainer.grpo import register_selection
from trainer.logprobs import TokenScores, option_entropy, score_tokens
from trainer.objective import (
    MarkerSpec,
    PgViewSpec,
    Scored,
    ScoreSpec,
    Term,
    TermSpec,
    register_marker,
    register_pg_view,
    register_score,
    register_term,
)
from trainer.tasks.base import DecisionTask, Sample
from trainer.tasks.decision_marks import decision_extras, mark_completions, marks, option_ids
from trainer.types import RolloutBatch

MAX_OPTIONS = 8  # options of a balanced choice (the balance term reduces a fixed width)


@register_selection("decision", marks="decision_mask")
def decision_tokens(entropy: torch.Tensor, mask: torch.Tensor, top_frac: float,
                    marked: torch.Tensor | None) -> torch.Tensor:
    """The tokens the task marked as stating the decision (``Task.decision_spans``, e.g. the
    lean word): the reward judges the decision, so only the tokens that choose it get its
    credit, and the rest of the answer is not pushed around by a noisy advantage. Each
    decision (a run of consecutive marked tokens) shares the row's whole length (``L /
    its tokens`` each), so after the aggregation divides by the length a decision weighs
    what a whole answer does under ``all``, however long the answer around it: the policy
    gradient's scale, and so what a given ``anchor_coef`` means against it, does not shrink
    with the answer, and a second decision (the stock task's figure, with
    ``reward.confidence_is_decision``) does not thin the first's gradient. A completion
    that states no decision gets no policy gradient."""
    if marked is None:
        raise ValueError("pg_tokens 'decision' needs the batch's decision marks "
                         "(trainer/tasks/decision_marks.py, attached for pg_tokens decision)")
    picked = (marked.to(mask.device) > 0).to(torch.float32) * (mask > 0)
    starts = picked * (1.0 - torch.nn.functional.pad(picked[:, :-1], (1, 0)))
    run = (torch.cumsum(starts, dim=1) * picked).long()  # 1, 2, ... a decision; 0 elsewhere
    sizes = torch.zeros(picked.shape[0], picked.shape[1] + 1, device=picked.device)
    sizes.scatter_add_(1, run, picked)  # [N, T + 1]: index k holds decision k's tokens
    own = sizes.gather(1, run).clamp(min=1)
    return picked * mask.sum(dim=1, keepdim=True) / own


def among_options(s: Scored):
    """The policy gradient's view at a decision's options: ``logp - choice_lse`` now and at
    the batch's start (``choice_lse``: log p(any of the options) where the batch names a
    choice's options, 0 elsewhere). None where the micro-batch names none."""
    lse = s.extra.get("choice_lse")
    if lse is None:
        return None
    old_lse = s.old["choice_lse"]
    return lambda logp, old: (logp - lse.to(logp.dtype), old - old_lse.to(logp.dtype))


def choice_lse(alts: torch.Tensor, choice_ids: torch.Tensor) -> torch.Tensor:
    """log p(any of the options) where ``choice_ids`` names a choice's options, 0 elsewhere
    ([N, T], from the options' log-probs ``alts`` [N, T, K])."""
    at = choice_ids[..., 0] >= 0
    return torch.where(at, torch.logsumexp(alts.masked_fill(~at[..., None], 0.0), -1),
                       torch.zeros(at.shape, dtype=alts.dtype, device=alts.device))


def decision_entropy(alts: torch.Tensor, choice_ids: torch.Tensor) -> torch.Tensor:
    """``[N, T]``: the entropy of the policy's shares among a choice's options where
    ``choice_ids`` names them, 0 elsewhere."""
    return option_entropy(alts, choice_ids[..., 0] >= 0)


def entropy_term(s: Scored) -> Term:
    """``decision_entropy_coef`` x the entropy among each decision's options, summed over a
    row's decisions and averaged over rows as the ``decision`` selection weighs the policy
    gradient (a decision counts as a whole answer). Departure from GRPO, and why: a
    prompt's decision that has set on one option samples it in every answer of its group,
    the group's rewards then do not tell the options apart, and the policy gradient cannot
    move that decision any more; the bonus makes the optimum a softmax of the options'
    advantages at this temperature instead of their argmax. Off by default: on the demo it
    kept every pattern's lean soft and still did not lift the hardest seeds, whose wrong lean
    was generalised from other patterns, not set (BENCHMARKS.md 12e). Logged as 0 (its
    gradient is the entropy's; a level in the loss would move the gate's loss indicators);
    metric ``decision_entropy``: the mean entropy at the decisions."""
    ent = s.extra.get("decision_entropy")
    if ent is None:
        return Term(torch.zeros((), device=s.device), 0.0, {})
    loss = -s.tc.decision_entropy_coef * (ent - ent.detach()).sum() / max(len(s.batch), 1)
    at = s.batch.extras["choice_ids"][..., 0].to(ent.device) >= 0
    metrics = {"decision_entropy": float(ent.detach()[at].mean())} if bool(at.any()) else {}
    return Term(loss, 0.0, metrics)


register_score(ScoreSpec("choice_lse", "choice_ids", choice_lse))
register_score(ScoreSpec("decision_entropy", "choice_ids", decision_entropy))
register_marker(MarkerSpec("decisions", mark_completions,
                           enabled=lambda tc: tc.pg_tokens == "decision"))
register_pg_view(PgViewSpec("among_options", among_options,
                            enabled=lambda tc: tc.pg_tokens == "decision",
                            scores=("choice_lse",)))


def anchor_term(s: Scored) -> list[Term]:
    """``anchor_coef`` x the NLL of this micro-batch's slice of reference answers (metric
    ``anchor_nll`` when the slice has rows); with ``balance_coef`` > 0 also the balance term
    of every rank's option shares at the balanced choices (a collective: every rank, every
    micro-batch), logged without the world-size factor that only serves DeepSpeed's gradient
    average (metric ``balance_share``: the batch's mean share of the first option, when this
    rank has rows)."""
    tc, chunk, device = s.tc, s.side.get("anchor"), s.device
    loss = torch.zeros((), device=device)
    metrics: dict[str, float] = {}
    if chunk is not None and len(chunk):
        nll, share, prior = anchor_terms(s.model, chunk, s.pad_id, device,
                                         tc.logits_chunk_tokens, s.side_scores.get("anchor"))
        if tc.anchor_coef > 0:
            loss = loss + tc.anchor_coef * nll
            metrics["anchor_nll"] = float(nll.detach())
    else:
        share = prior = torch.zeros((0, 1), device=device)
    terms = [Term(loss, float(loss.detach()), metrics)]
    if tc.balance_coef > 0:
        kl, mean = balance_kl(share, prior)
        terms.append(Term(tc.balance_coef * kl,
                          tc.balance_coef * float(kl.detach()) / rank_and_world()[1],
                          {"balance_share": float(mean[0])} if share.numel() else {}))
    return terms


def anchor_terms(model, anchor: RolloutBatch, pad_id: int, device: torch.device,
                 chunk_tokens: int = 0, scored: TokenScores | None = None):
    """The anchor's two terms from one forward (temperature 1, with grad; ``scored``: the
    rows' scores from the policy's pass, which the learner gives under the shared-prefix
    layout, the ``choice_ids`` alternatives gathered):

    - the mean NLL per token of the reference answers. The tokens of their free choices
      (``decision_mask``) are not held as written: where a choice is made and ``choice_ids``
      names its options, the term is -log p(one of the options), so the choice stays free
      but the slot keeps to them (without it, pushing one option down on-policy moves its
      mass anywhere, and the format breaks); the choice's other marked tokens (``anchor_batch``
      marks them only where options share a first token) are left out;
    - at the balanced choices (``choice_prior``), each row's option shares (its options'
      probabilities renormalised over them) and their priors: ([M, K], [M, K]), M rows
      that have one (M = 0: empty tensors). ``balance_kl`` turns them into the balance term.
    """
    marked, choice_ids = anchor.extras.get("decision_mask"), anchor.extras.get("choice_ids")
    if scored is None:
        scored = score_tokens(model, anchor, pad_id, 1.0, device, alternatives=choice_ids,
                              chunk_tokens=chunk_tokens)
    logp, alts = scored.logp, scored.alternatives
    if alts is not None:  # at a choice: log p(any of its options) instead of the written one
        logp = torch.where(choice_ids.to(device)[..., 0] >= 0, torch.logsumexp(alts, -1), logp)
    mask = anchor.completion_mask.to(device)
    if marked is not None:
        held = 1.0 - marked.to(device)
        if choice_ids is not None:
            held = (held + (choice_ids[..., 0] >= 0).to(device, mask.dtype)).clamp(max=1)
        mask = mask * held
    nll = -(logp * mask).sum() / mask.sum().clamp(min=1)
    if "choice_prior" not in anchor.extras or alts is None:
        return nll, torch.zeros((0, 1), device=device), torch.zeros((0, 1), device=device)
    prior = anchor.extras["choice_prior"].to(device)
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


def anchor_batch(task: DecisionTask, samples: list[Sample], prompt_ids: list[list[int]],
                 tokenizer, pad_id: int, rng: random.Random) -> RolloutBatch | None:
    """The supervised anchor for these prompts (``prompt_ids``: their token ids, as
    ``collect`` encoded them): each sample's ``Task.anchor_text`` after its prompt, the
    tokens of its free choices marked (``decision_mask``, from the tokenizer's own
    character offsets) and, where a choice has options, their token ids at the token where
    it is made (``choice_ids``): the NLL holds "one of the options" there. Where every
    option begins with a token of its own, only that token is marked and the rest of the
    written option (its spelling, given the token chosen) is held as written; otherwise the
    rest of the choice is left out. Each answer ends with the tokenizer's end-of-sequence token, as
    the warm start's and the workers' do: the anchor holds where an answer stops. A choice
    with a ``prior`` (the decision) also carries each option's target share at that token
    (``choice_prior``) for the balance term (``train.balance_coef``). None when the task
    gives none."""
    prompts, targets, choice_marks, choice_sets, priors = [], [], [], [], []
    for s, p in zip(samples, prompt_ids, strict=True):
        if (ref := task.anchor_text(s, rng)) is None:
            continue
        text, choices = ref
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        if not ids:
            continue
        prompts.append(p)
        eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
        targets.append(list(ids) + eos)
        offsets = list(offsets) + [(len(text), len(text))] * len(eos)
        where = {c: option_ids(tokenizer, text, ids, offsets, c.start, c.options)
                 for c in choices if c.options}
        # a choice whose options each begin with a token of their own is made at that token;
        # the rest of the written option is its spelling, held as written: left free, the
        # figure's second digit broke after the first ("Confidence: 6 up bullish.") in up to
        # 18 % of a run's answers (BENCHMARKS.md 12g)
        spelled = {c: at for c, (at, got) in where.items() if len(got) == len(c.options)}
        row = marks(offsets, [(c.start, c.end) for c in choices if c not in spelled])
        for at in spelled.values():
            row[at] = 1.0
        choice_marks.append(row)
        choice_sets.append(dict(where.values()))
        priors.append({at: _prior(c, got) for c, (at, got) in where.items() if c.prior})
    if not targets:
        return None
    return RolloutBatch.teacher_forced(prompts, targets, pad_id,
                                       decision_extras(choice_marks, choice_sets, priors))


def _prior(choice, token_ids: list[int]) -> list[float]:
    """A balanced choice's prior, one share per option token (``option_ids`` order)."""
    if len(choice.prior) != len(choice.options) or len(token_ids) != len(choice.options):
        raise ValueError(f"balanced choice {choice.options}: needs one prior share per option "
                         f"({choice.prior}) and a first token of its own for each option")
    total = sum(choice.prior)
    if total <= 0 or min(choice.prior) < 0:
        raise ValueError(f"balanced choice {choice.options}: prior {choice.prior} must be "
                         f"shares >= 0 with a positive sum")
    return [x / total for x in choice.prior]


register_term(TermSpec("decision_entropy", entropy_term,
                       enabled=lambda tc: tc.decision_entropy_coef > 0,
                       scores=("decision_entropy",),
                       sparse={"decision_entropy": lambda tc: True}))
register_term(TermSpec(
    "anchor", anchor_term, enabled=lambda tc: tc.anchor_coef > 0 or tc.balance_coef > 0,
    sparse={"anchor_nll": lambda tc: tc.anchor_coef > 0,
            "balance_share": lambda tc: tc.balance_coef > 0}, side=anchor_batch,
    side_in_policy_pass=True, side_alternatives="choice_ids"))
