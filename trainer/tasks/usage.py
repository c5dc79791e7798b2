"""How a task presents itself outside training: ``stonk data``'s summary, ``stonk serve``'s
example request, the exported model card's lines, the notes of ``stonk eval``'s report, and
whether ``stonk predict`` (market prices in, one answer per ticker and date) applies.

:class:`TaskUsage` is what any task gets: it reads only the ``Task`` protocol. A task that
says it better subclasses it and names the class in its ``TaskEntry.usage``
(``trainer/tasks/stock/usage.py``); the launcher reaches it through
``registry.task_usage(cfg)`` and never branches on a task's name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Card:
    """The task's part of an exported model card."""

    what: str  # one sentence: what the model does
    data_lines: list[str]  # markdown bullets under "Data and splits"
    use: list[str]  # the "Intended use" paragraphs
    tags: tuple[str, ...] = field(default=())  # extra hub tags (e.g. "finance")


class TaskUsage:
    """Defaults for any task, built from its config (``cfg``, a StageConfig)."""

    # stonk predict reads market price files: only a task that answers price windows has it
    reads_prices = False

    def __init__(self, cfg) -> None:
        self.cfg = cfg

    def _task(self):
        from trainer.tasks.registry import build_task

        return build_task(self.cfg)

    def data_summary(self) -> str:
        """``stonk data``: the task's counts and facts, and its first training prompt."""
        task = self._task()
        first = task.split("train")[0].messages
        return (json.dumps(task.describe(), indent=2, default=str)
                + "\nfirst training prompt: " + json.dumps(first))

    def example_messages(self) -> list[dict[str, str]]:
        """``stonk serve``'s example request: the first test prompt (else training's)."""
        task = self._task()
        return (task.split("test") or task.split("train"))[0].messages

    def card(self) -> Card:
        """The data section and the rewards as configured."""
        cfg = self.cfg
        fields = ", ".join(f"{k}: `{v}`" for k, v in vars(cfg.data).items()
                           if v not in ("", 0, []))
        rewards = getattr(cfg.reward, "functions", None) or sorted(cfg.reward.weights)
        return Card(f"Task `{cfg.task}`.",
                    [f"- data: {fields}", f"- rewards: {', '.join(f'`{r}`' for r in rewards)}"],
                    ["Research on reinforcement learning for language models. Prompts should "
                     "look like training's (`stonk serve` writes an example request).", ""])

    def eval_notes(self) -> list[str]:
        """Lines ``stonk eval`` adds to its report's notes (where the data came from)."""
        return []
