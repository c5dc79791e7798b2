"""The stock task's config: its data section, its reward and gate fields, their checks, and
its registration as task ``stock`` (``trainer/tasks/registry.py``). Light on purpose (no
data, no torch): every config load reads it.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Literal

from trainer.config.fields import setting
from trainer.config.sections import ConfigError, GateConfig, RewardConfig
from trainer.tasks.registry import TaskEntry, register_task

# The components trainer/tasks/stock/rewards registers (a test holds the two equal; named
# here so a config validates without importing the rewards' numpy code).
REWARD_COMPONENTS = ("accuracy", "accuracy_skew", "data_usage", "coherence", "confidence",
                     "calibration", "magnitude", "diversity")
# the fields data.columns may map (a test holds them to the sources' tables and prompts)
DATA_COLUMN_FIELDS = ("ticker", "date", "close", "adj_close", "name", "info", "news", "prompt",
                      "label", "change_pct")


@dataclass
class DataConfig:
    """Where market data comes from and how it is cut (see ``trainer/tasks/stock/data.py``)."""

    # bundled | synthetic | local | hf (data/README.md)
    source: Literal["bundled", "synthetic", "local", "hf"] = "bundled"
    path: str = ""  # local: a CSV/Parquet file (long table) or a folder with one file per ticker
    hf_name: str = ""  # hf: hub id, a folder written by save_to_disk, or a .parquet/.jsonl/.csv
    hf_split: str = "train"  # hf: the split to read
    columns: dict[str, str] = field(default_factory=dict)  # our field -> source column
    tickers: list[str] = field(default_factory=list)  # empty: every ticker of the source
    window: int = setting(5, ge=2, hint="days")  # trading days shown in each prompt
    balance: bool = True  # Stage I: exactly 50/50 UP/DOWN in every split
    # with balance: each rank's training draws alternate UP and DOWN, so every step's
    # prompts are 50/50 too (trainer/rollouts.PromptSampler)
    balanced_batches: bool = True
    start: str = ""  # first date any window may touch (empty: the data's first)
    train_end: str = "2012-12-31"  # last date a training window may touch
    val_end: str = "2015-12-31"  # last date a validation window may touch; test comes after
    test_end: str = ""  # last date a test window may touch (empty: the data's last)
    synthetic_days: int = 4000  # synthetic: days generated per ticker
    # the synthetic market's rule (trainer/tasks/stock/synthetic.py): "majority" (momentum of
    # the last three signs) or "streak" (mixed follow their majority, streaks of three revert)
    synthetic_rule: Literal["majority", "streak"] = "majority"
    seed: int = 0  # synthetic: the market's random seed


SOURCES = typing.get_args(typing.get_type_hints(DataConfig)["source"])  # data.source's names


@dataclass
class StockRewardConfig(RewardConfig):
    # component -> weight (trainer/tasks/stock/rewards: accuracy, accuracy_skew, data_usage,
    # coherence, confidence, calibration, magnitude, diversity); Stage II's weights there
    weights: dict[str, float] = field(
        default_factory=lambda: {"accuracy": 1.0, "data_usage": 1.0, "coherence": 1.0,
                                 "confidence": 1.0, "diversity": 1.0})
    # Stage II: read a stated confidence against the natural up ratio instead of 50/50
    # (prior shift, trainer/tasks/stock/rewards/probability.py); feeds the confidence and
    # calibration rewards, ROC-AUC and calibration in evaluation.
    market_aware_confidence: bool = False
    # the stated confidence figure is a decision too (the stock task's decision_spans): with
    # train.pg_tokens decision its digits carry the policy gradient (among the warm start's
    # figures, 50..90%), so a proper scoring rule on it (the calibration component) can
    # teach it; off: only the direction is learned and the figure stays the warm start's
    confidence_is_decision: bool = False


@dataclass
class StockGateConfig(GateConfig):
    min_reasoning_quality: float = 0.5  # reasoning quality score of that evaluation, 0..1


def validate(cfg) -> None:
    """The stock task's checks across fields: data dates and sources, eval.also_on's."""
    for i, source in enumerate(cfg.eval.also_on):
        if source not in SOURCES:
            raise ConfigError(f"eval.also_on[{i}]: {source!r} is not a data source; use any of "
                              f"{', '.join(SOURCES)}")
    if cfg.data.source in cfg.eval.also_on:
        raise ConfigError(f"eval.also_on: {cfg.data.source!r} is the run's own data source "
                          "(data.source); list other sources only")
    _validate_data(cfg.data)


def _validate_data(d: DataConfig) -> None:
    unknown = sorted(set(d.columns) - set(DATA_COLUMN_FIELDS))
    if unknown:
        raise ConfigError(f"data.columns.{unknown[0]}: unknown field; "
                          f"map any of {', '.join(DATA_COLUMN_FIELDS)}")
    for name in ("start", "train_end", "val_end", "test_end"):
        value = getattr(d, name)
        if value or name in ("train_end", "val_end"):
            try:
                date.fromisoformat(value)
            except ValueError:
                raise ConfigError(f"data.{name}: {value!r} is not a date; use YYYY-MM-DD") from None
    order = [(n, getattr(d, n)) for n in ("start", "train_end", "val_end", "test_end")
             if getattr(d, n)]
    for (a, va), (b, vb) in zip(order, order[1:], strict=False):
        if not va < vb:
            raise ConfigError(f"data.{b}: {vb} must come after data.{a} ({va})")
    if d.source == "local" and not d.path:
        raise ConfigError("data.path: source 'local' needs a CSV/Parquet file or a folder")
    if d.source == "hf" and not d.hf_name:
        raise ConfigError("data.hf_name: source 'hf' needs a dataset name or a local copy")
    if d.source == "synthetic" and d.window < 3:
        raise ConfigError("data.window: the synthetic market's rule reads the last three "
                          "days; show at least 3")
    if d.source == "synthetic" and d.synthetic_days < d.window + 2:
        raise ConfigError(f"data.synthetic_days: must be at least data.window + 2 "
                          f"= {d.window + 2}")


def data_problem(cfg) -> str | None:
    """The launcher's check before anything starts: the data source can be read."""
    from trainer.tasks.hub import missing_dataset

    d = cfg.data
    if d.source == "local" and not Path(d.path).exists():
        return f"data.path: {d.path} does not exist (data.source: local)"
    if d.source != "hf":
        return None
    return missing_dataset(d.hf_name, "data.hf_name", "or use data.source: bundled / synthetic")


register_task(TaskEntry(
    "stock", {"data": DataConfig, "reward": StockRewardConfig, "gate": StockGateConfig},
    build="trainer.tasks.stock.task:from_config", validate=validate,
    reward_components=REWARD_COMPONENTS, decisions=True, preflight=data_problem,
    contributions=("trainer.tasks.decisions",), credit_spans=("confidence",),
    usage="trainer.tasks.stock.usage:StockUsage",
    doc="a company's recent market data -> the next day's direction, a confidence and a "
        "data-grounded reasoning"))
