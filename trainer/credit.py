"""Credit by span (``train.credit``): a reward component credits only the tokens it is about.

GRPO gives every token of a completion one advantage, from the completion's total reward.
When one component judges one part of the answer (the stock task's calibration: a proper
scoring rule on the stated confidence figure), its signal on that part is drowned by the
others' variance (the direction's accuracy dominates every group), and the part barely
moves (BENCHMARKS.md section 12b: the figure stayed the warm start's in 40 steps). Here the
tokens of the span a component is sent to take that component's own group advantage, and the
other tokens the advantage of the remaining components, each computed as
``train.advantage`` computes the total's (per group). A completion without the span keeps the
remaining components' advantage on every token.

The result is the batch extra ``token_advantages`` ``[N, T]``, which the policy gradient
reads instead of the per-completion advantage (trainer/objective.py ``rl_term``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from trainer.spans import span_marks
from trainer.types import right_pad_floats


def token_advantages(task, tokenizer, completions: list, components: list[dict[str, float]],
                     credit: dict[str, str], group_size: int,
                     estimator: Callable[[torch.Tensor, int], torch.Tensor]) -> torch.Tensor:
    """``[N, T]``: for each row's tokens, the advantage of the component whose span
    (``task.credit_spans``) covers the token, else of the components ``credit`` does not
    send anywhere. ``components``: each row's weighted components; ``estimator``: rewards
    ``[N]`` and the group size -> advantages ``[N]``."""
    credited = set(credit)
    rest = torch.tensor([sum(v for k, v in c.items() if k not in credited)
                         for c in components])
    base = estimator(rest, group_size)
    rows = [[float(base[i])] * len(c.token_ids) for i, c in enumerate(completions)]
    for component, span in credit.items():
        own = estimator(torch.tensor([c.get(component, 0.0) for c in components]), group_size)
        for i, c in enumerate(completions):
            marks = span_marks(tokenizer, c.token_ids,
                                  lambda text, s=span: task.credit_spans(text).get(s, []))
            rows[i] = [float(own[i]) if m > 0 else a for a, m in zip(rows[i], marks,
                                                                       strict=True)]
    return right_pad_floats(rows)
