"""The ``prompts`` task's config: its data section (a dataset and its prompt column), its
reward fields (reward functions by import path) and their checks, and its registration as
task ``prompts`` (``trainer/tasks/registry.py``). Light on purpose: every config load of a
``task: prompts`` config reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from trainer.config.fields import setting
from trainer.config.sections import ConfigError, RewardConfig
from trainer.tasks.registry import TaskEntry, register_task

EXAMPLE = "data/examples/arithmetic.jsonl"  # the shipped example (trainer/tasks/prompts/arithmetic.py)
REPO = Path(__file__).resolve().parents[3]


def local_path(name: str) -> str:
    """A relative path as the prompts task reads it (a dataset, a reward function's file):
    from the current folder, else from the repository (the shipped example); anything that
    is neither (a hub id, a missing file) unchanged."""
    if Path(name).exists() or Path(name).is_absolute():
        return name
    return str(REPO / name) if (REPO / name).exists() else name


@dataclass
class PromptsDataConfig:
    """A dataset of prompts (``trainer/tasks/prompts/task.py``)."""

    # a hub dataset id, a folder written by Dataset.save_to_disk, or a .jsonl/.json/.csv/
    # .parquet file; a relative path is read from the current folder, else the repository
    dataset: str = EXAMPLE
    config_name: str = ""  # hub: the dataset's configuration (empty: its default)
    split: str = "train"  # the split the training prompts come from
    # splits of their own for validation and test; empty: val_size / test_size rows are
    # held out of split (after a shuffle with seed), never trained on
    val_split: str = ""
    test_split: str = ""
    val_size: int = setting(64, ge=0, hint="held out of split where val_split is empty")
    test_size: int = setting(64, ge=0, hint="held out of split where test_split is empty")
    # the prompt: a string, or a list of chat messages ({"role", "content"}: TRL's
    # conversational format); every other column reaches the reward functions by name
    prompt_column: str = "prompt"
    # a system message before a string prompt (empty: none)
    system_prompt: str = ""
    max_samples: int = setting(0, ge=0, hint="0: all")  # rows read from each split
    seed: int = 0  # the shuffle before holding out validation and test rows


@dataclass
class PromptsRewardConfig(RewardConfig):
    # reward functions, "package.module:function" or "path/to/file.py:function"; each is
    # called as TRL calls one, f(prompts=[...], completions=[...], **columns) -> one float
    # (or None: not applicable, 0) per completion; reward.weights names them by function
    # name (missing: weight 1)
    functions: list[str] = field(default_factory=lambda: [
        "trainer.tasks.prompts.arithmetic:exact_answer",
        "trainer.tasks.prompts.arithmetic:close_answer"])
    # a completion passes when its total reward is at least this: evaluation's accuracy
    pass_threshold: float = 1.0


def validate(cfg) -> None:
    """The prompts task's checks: its reward functions resolve (imported here, so a typo
    fails at load, not at step 1), reward.weights names them, and the decision machinery
    (which needs a task that marks decisions) is off."""
    from trainer.tasks.prompts.rewards import load_functions

    if not cfg.reward.functions:
        raise ConfigError("reward.functions: the prompts task needs at least one reward "
                          "function (\"package.module:function\" or \"file.py:function\")")
    names = [name for name, _ in load_functions(cfg.reward.functions)]
    unknown = sorted(set(cfg.reward.weights) - set(names) - {"overlong"})
    if unknown:
        raise ConfigError(f"reward.weights.{unknown[0]}: no reward function of that name; "
                          f"reward.functions gives {', '.join(names)}")
    if cfg.eval.also_on:
        raise ConfigError("eval.also_on: the prompts task has no other data sources; leave "
                          "it empty")
    d = cfg.data
    if not d.dataset:
        raise ConfigError("data.dataset: name a hub dataset or a local file or folder")
    if not d.prompt_column:
        raise ConfigError("data.prompt_column: name the column that holds the prompts")


def data_problem(cfg) -> str | None:
    """The launcher's check before anything starts: the dataset can be read."""
    from trainer.tasks.hub import missing_dataset
    return missing_dataset(local_path(cfg.data.dataset), "data.dataset")


register_task(TaskEntry(
    "prompts", {"data": PromptsDataConfig, "reward": PromptsRewardConfig},
    build="trainer.tasks.prompts.task:from_config", validate=validate, preflight=data_problem,
    doc="any datasets dataset with a prompt column, scored by your reward functions"))
