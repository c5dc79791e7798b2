"""Tasks: what to prompt and how to score, behind :class:`trainer.tasks.base.Task`.

The GRPO machinery only sees the interface; market details live in ``stock/``.
"""

from __future__ import annotations

from trainer.config import StageConfig
from trainer.tasks.base import Task


def build_task(cfg: StageConfig) -> Task:
    from trainer.tasks.stock.task import StockTask

    return StockTask(cfg.data, cfg.reward)
