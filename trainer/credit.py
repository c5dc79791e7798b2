"""Credit by span (``train.credit``): a reward component credits only the tokens it is about.

GRPO gives every token of a completion one advantage, from the completion's total reward.
When one component judges one part of the answer (the stock task's calibration: a proper
scoring rule on the stated confidence figure), its signal on that part is drowned by the
others' variance (the direction's accuracy dominates every group), and the part barely
moves (BENCHMARKS.md section 12b: the figure stayed the warm start's in 40 steps). Here:

- the tokens of the span a component is sent to take that component's own advantage, and
  the other tokens the advantage of the remaining components (computed as
  ``train.advantage`` computes the total's, per group); a completion without the span keeps
  the remaining components' advantage on every token;
- the span's advantage is the component minus a baseline: its mean over the group's
  completions that made the same decisions before the span (a task's ``decision_spans``
  ending before it, compared as written; none: the whole group). A baseline may depend on
  anything before the token it is for, so the gradient stays unbiased, and it takes out what
  the span cannot change: whether the direction already written was right decides most of a
  calibration score, and would otherwise be the span's noise;
- with ``train.credit_modal``, only the answers whose decisions before the span are their
  group's most frequent (ties: every tied one) learn the span; the others' span tokens take
  advantage 0. The evaluation decodes greedily, which writes the likeliest decisions: a
  figure that learns from every sampled answer is calibrated for the sampler, whose answers
  against the evidence pull it down (BENCHMARKS.md 12d: 70 % where the greedy answers were
  right 83 % of the time), while one that learns from the modal answers is calibrated for
  the answer the evaluation reads;
- no division by the group's std there: a proper scoring rule keeps its optimum (the stated
  figure equal to the chance of being right) only in the raw difference; its weight in
  ``reward.weights`` sets the span's step size.

The result is the batch extra ``token_advantages`` ``[N, T]``, which the policy gradient
reads instead of the per-completion advantage (trainer/objective.py ``rl_term``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import torch

from trainer.spans import span_marks
from trainer.types import right_pad_floats


def _decided(task, text: str, before: int) -> tuple[str, ...]:
    """The decisions ``text`` wrote before character ``before``, as written (lower case)."""
    spans = getattr(task, "decision_spans", lambda _: [])(text)
    return tuple(text[a:b].lower() for a, b in spans if b <= before)


def _span_keys(task, texts: list[str], span: str) -> list[tuple[str, ...] | None]:
    """Per row, the decisions written before its ``span`` (None: the row has no span)."""
    keys = []
    for text in texts:
        found = task.credit_spans(text).get(span, [])
        keys.append(None if not found else _decided(task, text, found[0][0]))
    return keys


def modal_rows(task, texts: list[str], span: str, group_size: int) -> list[bool]:
    """Whether each row has ``span`` and decided before it what most of its group's rows
    with the span decided (every tied decision counts as the most frequent)."""
    keys = _span_keys(task, texts, span)
    out = [False] * len(texts)
    for g in range(0, len(texts), group_size):
        rows = range(g, min(g + group_size, len(texts)))
        counts = Counter(keys[i] for i in rows if keys[i] is not None)
        top = max(counts.values(), default=0)
        for i in rows:
            out[i] = keys[i] is not None and counts[keys[i]] == top
    return out


def span_advantages(task, texts: list[str], values: list[float], span: str,
                    group_size: int) -> list[float | None]:
    """Each row's advantage for its ``span``: its value minus the mean over its group's rows
    that have the span and decided the same before it; None for a row without the span."""
    keys = _span_keys(task, texts, span)
    out: list[float | None] = [None] * len(texts)
    for g in range(0, len(texts), group_size):
        rows = range(g, min(g + group_size, len(texts)))
        for i in rows:
            if keys[i] is None:
                continue
            same = [values[j] for j in rows if keys[j] == keys[i]]
            out[i] = values[i] - sum(same) / len(same)
    return out


def token_advantages(task, tokenizer, completions: list, components: list[dict[str, float]],
                     credit: dict[str, str], group_size: int,
                     estimator: Callable[[torch.Tensor, int], torch.Tensor],
                     options: bool = False, modal: bool = False) -> torch.Tensor:
    """``[N, T]``: for each row's tokens, the advantage of the component whose span
    (``task.credit_spans``) covers the token (:func:`span_advantages`; 0 with ``options``,
    ``train.credit_options``: the span learns from every option's value instead,
    trainer/credit_options.py; 0 with ``modal`` on a row whose earlier decisions are not
    its group's most frequent: :func:`modal_rows`), else of the components ``credit`` does
    not send anywhere (``estimator``: rewards ``[N]`` and the group size -> advantages ``[N]``).
    ``components``: each row's weighted components."""
    credited = set(credit)
    rest = torch.tensor([sum(v for k, v in c.items() if k not in credited)
                         for c in components])
    base = estimator(rest, group_size)
    rows = [[float(base[i])] * len(c.token_ids) for i, c in enumerate(completions)]
    texts = [c.text for c in completions]
    for component, span in credit.items():
        own = ([0.0 if task.credit_spans(t).get(span) else None for t in texts] if options
               else span_advantages(task, texts, [c.get(component, 0.0) for c in components],
                                    span, group_size))
        if modal:
            own = [None if o is None else (o if m else 0.0)
                   for o, m in zip(own, modal_rows(task, texts, span, group_size), strict=True)]
        for i, c in enumerate(completions):
            if own[i] is None:
                continue
            marks = span_marks(tokenizer, c.token_ids,
                               lambda text, s=span: task.credit_spans(text).get(s, []))
            rows[i] = [own[i] if m > 0 else a for a, m in zip(rows[i], marks, strict=True)]
    return right_pad_floats(rows)
