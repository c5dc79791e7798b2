"""Credit over every option (``train.credit_options``): a credited span that is a choice among
options learns from its component's value at each option, not from the one it sampled.

``train.credit`` (trainer/credit.py) gives a span its component's advantage on the option the
answer sampled. When the component is a known function of the option and of facts the
reward already has (the stock task's calibration: a Brier score of the stated figure, given
whether the direction was right), every option's value can be computed for every answer,
and the span's expected value under the policy, ``sum_k p_k v_k`` (``p`` the option shares at
the token where the choice is made, renormalised over the options), can be differentiated
exactly: the all-action policy gradient, without the sampling noise of one option a row. A
proper scoring rule is nearly flat around its optimum (Brier at a right-chance of 0.8: 0.01
between stating 80 and 70 or 90), which the sampled estimate does not resolve in a run's few
thousand answers (BENCHMARKS.md 12c).

- ``option_values``: batch extra ``[N, T, K]``, at the span's choice token each option's
  component value (the task re-scores the answer with that option written in the span;
  weighted like the reward), NaN elsewhere; K and the options' order are those of the
  decision marker's ``choice_ids`` at that token.
- score ``choice_value``: ``sum_k p_k v_k`` there, 0 elsewhere, with grad.
- score ``choice_entropy``: the entropy of those shares.
- term ``credit_options``: minus the micro-batch's sum over its rows of the value plus
  ``train.credit_options_entropy`` x the entropy (the policy loss's scale: a mean over rows
  of one value each), centred so that its logged value is 0 as a policy-gradient
  surrogate's; the span's sampled tokens take advantage 0 (trainer/credit.py). Metric
  ``credit/option_value``: the value's mean where rows have one. The entropy bonus makes
  the shares' optimum a softmax of the options' expected values at temperature beta
  instead of the best option alone: the shares settle early on the option best for the
  policy as it was (BENCHMARKS.md 12d: 70 % while the lean was half learned), and the
  expectation's gradient at an option is its share times its advantage, so a nearly
  dropped option comes back slowly once it becomes the best.
"""

from __future__ import annotations

import math

import torch

from trainer.credit import modal_rows
from trainer.logprobs import option_entropy, option_log_shares
from trainer.objective import Scored, ScoreSpec, Term, TermSpec, register_score, register_term
from trainer.spans import token_offsets


def option_values(task, tokenizer, samples: list, completions: list,
                  credit: dict[str, str], group_size: int,
                  choice_ids: torch.Tensor | None, modal: bool = False) -> torch.Tensor | None:
    """``[N, T, K]``: each credited span's component value per option at its choice token
    (``choice_ids``' options there, in their order), NaN elsewhere (with ``modal``, also on
    the rows whose earlier decisions are not their group's most frequent:
    ``credit.modal_rows``); None without ``choice_ids`` (no row names a choice)."""
    if choice_ids is None:
        return None
    out = torch.full(choice_ids.shape, math.nan)
    texts = [c.text for c in completions]
    kept = {span: (modal_rows(task, texts, span, group_size) if modal
                   else [True] * len(texts)) for span in credit.values()}
    for i, c in enumerate(completions):
        sample = samples[i // group_size]
        text, offsets = token_offsets(tokenizer, c.token_ids)
        for component, span in credit.items():
            found = task.credit_spans(text).get(span, [])
            if not found or not kept[span][i]:
                continue
            a, b = found[0]
            # the token where the decision marker found this span's choice (its options in
            # task.decision_options' order, as here); none: the span is not a marked choice
            at = next((j for j, (s, e) in enumerate(offsets[:choice_ids.shape[1]])
                       if s < b and a < e and choice_ids[i, j, 0] >= 0), None)
            options = tuple(task.decision_options(text[a:b]))
            if at is None or int((choice_ids[i, at] >= 0).sum()) != len(options):
                continue
            texts = [text[:a] + o + text[b:] for o in options]
            scored = task.score_batch([sample], [texts])[0]
            out[i, at, :len(options)] = torch.tensor([s.get(component, 0.0) for s in scored])
    return out


def _credited(ids: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``[N, T]`` bool: where a row has option values and a choice."""
    return ~torch.isnan(values).all(-1) & (ids[..., 0] >= 0)


def choice_value(alts: torch.Tensor, ids: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``[N, T]``: the options' expected value under the policy's shares among them, where
    ``values`` has one; 0 elsewhere."""
    at = _credited(ids, values)
    logs = option_log_shares(alts, at)
    v = torch.nan_to_num(values.float(), nan=0.0)
    return torch.where(at, (logs.exp() * v).sum(-1), torch.zeros_like(logs[..., 0]))


def choice_entropy(alts: torch.Tensor, ids: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``[N, T]``: the entropy of the policy's shares among the options where ``values`` has
    one; 0 elsewhere."""
    return option_entropy(alts, _credited(ids, values))


def options_term(s: Scored) -> Term:
    value = s.extra.get("choice_value")
    if value is None:
        zero = torch.zeros((), device=s.device)
        return Term(zero, 0.0, {})
    # its value is 0 (the gradient's is the expected value's): a logged loss that holds the
    # reward's level would never settle, and the gate reads the loss's mean magnitude
    objective = value - value.detach()
    beta = s.tc.credit_options_entropy
    if beta > 0 and "choice_entropy" in s.extra:
        ent = s.extra["choice_entropy"]
        objective = objective + beta * (ent - ent.detach())
    loss = -objective.sum() / max(len(s.batch), 1)
    values = s.batch.extras.get("option_values")
    has = (~torch.isnan(values).all(-1)).to(value.device) if values is not None else None
    metrics = {}
    if has is not None and bool(has.any()):
        metrics["credit/option_value"] = float(value.detach()[has].mean())
    return Term(loss, float(loss.detach()), metrics)


register_score(ScoreSpec("choice_value", "choice_ids", choice_value, reads="option_values"))
register_score(ScoreSpec("choice_entropy", "choice_ids", choice_entropy, reads="option_values"))
register_term(TermSpec("credit_options", options_term,
                       enabled=lambda tc: bool(tc.credit) and tc.credit_options,
                       scores=("choice_value", "choice_entropy"),
                       sparse={"credit/option_value": lambda tc: True}))
