"""Tasks by name: what a config's ``task:`` chooses, the config sections the task owns and how
to build it.

A task registers a :class:`TaskEntry` from a light module of its own (its ``config.py``:
dataclasses and checks, no torch, no data): the loader reads a config's ``task`` first, asks
:func:`task_entry` for it and builds the task's sections with the task's classes, so
``trainer/config`` holds no task's fields or names. The task itself (data, rewards,
evaluation) is imported only when a run builds it (:func:`build_task`).

A task owns ``data`` (entirely its own), and may extend ``reward`` and ``gate`` with fields
of its own (subclasses of ``trainer.config.RewardConfig`` / ``GateConfig``, whose generic
fields every task keeps). Built-in tasks are found by name (:data:`BUILTIN`); any other
``task:`` value is a module path, imported, that registers a task under that same path
(docs/tasks.md: bring your own task).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trainer.config.sections import ConfigError

DEFAULT_TASK = "stock"
# built-in task name -> the module that registers it (imported on first use)
BUILTIN = {"stock": "trainer.tasks.stock.config", "prompts": "trainer.tasks.prompts.config"}
SECTIONS = ("data", "reward", "gate")  # the config sections a task owns or extends


class UnknownTask(ConfigError):
    """``task:`` names no registered task; the message says which exist."""


@dataclass(frozen=True)
class TaskEntry:
    name: str
    # section name -> its dataclass: "data" (the task's own), "reward" / "gate" (subclasses
    # of trainer.config.RewardConfig / GateConfig; absent: the generic class)
    sections: dict[str, type]
    build: str  # "module:attribute", called with the StageConfig: returns the Task
    # (StageConfig) -> None: checks across the task's fields, raising trainer.config.ConfigError
    validate: Callable[[Any], None] | None = None
    # the reward components reward.weights may name (None: any name the task accepts)
    reward_components: tuple[str, ...] | None = None
    # the task marks decisions and writes reference answers (Task.decision_spans,
    # decision_options, anchor_text): train.pg_tokens decision, the anchor and balance terms
    decisions: bool = False
    # modules the learner imports for this task: they register objective terms, policy-
    # gradient views and token selections (trainer/objective.py); e.g. the decision machinery
    contributions: tuple[str, ...] = ()
    # the spans Task.credit_spans marks, by name: what train.credit may send a component to
    credit_spans: tuple[str, ...] = ()
    # (StageConfig) -> a one-line problem with the task's data before a run starts, or None
    preflight: Callable[[Any], str | None] | None = None
    # "module:Class": how the task presents itself outside training (stonk data, serve,
    # export, eval, predict), a trainer.tasks.usage.TaskUsage; the default reads only the
    # Task protocol
    usage: str = "trainer.tasks.usage:TaskUsage"
    doc: str = ""  # one line for the config reference


TASKS: dict[str, TaskEntry] = {}


def register_task(entry: TaskEntry) -> TaskEntry:
    """Register ``entry`` under its name (a module registers its task once, on import)."""
    missing = {"data"} - set(entry.sections)
    if missing or set(entry.sections) - set(SECTIONS):
        raise ValueError(f"task {entry.name!r}: sections must be data (required), reward, "
                         f"gate; got {sorted(entry.sections)}")
    TASKS[entry.name] = entry
    return entry


def task_names() -> tuple[str, ...]:
    return tuple(BUILTIN) + tuple(n for n in TASKS if n not in BUILTIN)


def task_entry(name: str) -> TaskEntry:
    """The registered task ``name``, importing its module first where needed; UnknownTask
    naming the choices when there is none."""
    if name not in TASKS:
        module = BUILTIN.get(name, name if "." in name else None)
        if module is None:
            raise UnknownTask(f"task: {name!r} is not a task; use one of "
                              f"{', '.join(task_names())}, or the module path of your own "
                              f"(docs/tasks.md)")
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise UnknownTask(f"task: {name!r}: cannot import {module} ({exc})") from None
    if name not in TASKS:
        raise UnknownTask(f"task: module {name} registers no task named {name!r} (it must "
                          f"call trainer.tasks.registry.register_task with that name)")
    return TASKS[name]


def section_class(task: str, section: str) -> type:
    """The class of ``section`` for ``task``: the task's own, else the generic one."""
    entry = task_entry(task)
    if section in entry.sections:
        return entry.sections[section]
    if section == "data":  # pragma: no cover - register_task requires it
        raise UnknownTask(f"task {task!r} has no data section")
    from trainer.config.sections import GateConfig, RewardConfig

    return {"reward": RewardConfig, "gate": GateConfig}[section]


def load_contributions(task: str) -> None:
    """Import what ``task`` contributes to the objective (``TaskEntry.contributions``)."""
    for module in task_entry(task).contributions:
        importlib.import_module(module)


def task_usage(cfg) -> Any:
    """``cfg.task``'s :class:`trainer.tasks.usage.TaskUsage` for this config."""
    module, _, attr = task_entry(cfg.task).usage.partition(":")
    return getattr(importlib.import_module(module), attr)(cfg)


def build_task(cfg) -> Any:
    """The task of ``cfg.task`` for this config (imports the task's code)."""
    module, _, attr = task_entry(cfg.task).build.partition(":")
    return getattr(importlib.import_module(module), attr)(cfg)
