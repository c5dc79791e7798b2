"""Learning-rate schedules: the learning rate of optimizer step ``k`` as a pure function.

``lr(k) = train.learning_rate x factor(k)``, for steps ``k = 1 .. train.steps``: a linear
warm-up over ``train.warmup_steps`` steps, then the registered shape down to
``train.min_lr_ratio`` of the peak (reached just after the last step). A function of the step alone, so a
resumed run needs no scheduler state: the checkpoint's step says where it is.

Why a schedule at all: GRPO on a small policy keeps moving at a constant rate after it has
learned the decision (Adam's step size does not shrink with the gradient), and the learned
lean drifts away again (docs/known-limits.md). A decay holds what was learned.
"""

from __future__ import annotations

import math
from collections.abc import Callable

ShapeFn = Callable[[float], float]  # progress 0..1 after warm-up -> factor 1..0

LR_SCHEDULES: dict[str, ShapeFn] = {}


def register_schedule(name: str) -> Callable[[ShapeFn], ShapeFn]:
    def deco(fn: ShapeFn) -> ShapeFn:
        LR_SCHEDULES[name] = fn
        return fn

    return deco


@register_schedule("constant")
def constant(progress: float) -> float:
    return 1.0


@register_schedule("linear")
def linear(progress: float) -> float:
    return 1.0 - progress


@register_schedule("cosine")
def cosine(progress: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_factor(step: int, total: int, schedule: str, warmup: int = 0,
              min_ratio: float = 0.0) -> float:
    """Factor of the peak learning rate at optimizer step ``step`` (1-based) of ``total``."""
    if warmup and step <= warmup:
        return step / warmup
    # the first step after warm-up runs at the peak; the last one just above min_ratio
    progress = min(max((step - warmup - 1) / max(total - warmup, 1), 0.0), 1.0)
    return min_ratio + (1.0 - min_ratio) * LR_SCHEDULES[schedule](progress)
