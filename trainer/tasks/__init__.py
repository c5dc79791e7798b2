"""Tasks: what to prompt and how to score, behind :class:`trainer.tasks.base.Task`.

The GRPO machinery only sees the interface; a config's ``task:`` picks one by name from the
registry (``registry.py``): the market task lives in ``stock/``, the bring-your-own-dataset
task in ``prompts/``.
"""

from __future__ import annotations

from trainer.tasks.registry import build_task

__all__ = ["build_task"]
