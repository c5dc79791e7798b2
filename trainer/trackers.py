"""Experiment trackers (``run.report_to``): TensorBoard, Weights & Biases, MLflow and trackio
through accelerate's own trackers, on rank 0 only. ``metrics.jsonl`` stays the source of
truth: every record written there is also logged to each tracker at its step (its numbers),
and the resolved config is the run's hyper-parameters.

Everything stays on disk by default, under ``<run folder>/trackers/`` (no network needed):
TensorBoard's event files there; W&B in offline mode unless ``WANDB_API_KEY`` or
``WANDB_MODE`` is set (``wandb sync`` uploads later); MLflow to a file store there unless
``MLFLOW_TRACKING_URI`` is set; trackio's own local store.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path
from typing import Any

# run.report_to name -> the package it needs
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow",
                    "trackio": "trackio"}


def missing_packages(names: list[str]) -> list[str]:
    """The packages ``names`` need that are not installed (what preflight refuses)."""
    return [TRACKER_PACKAGES[n] for n in names
            if importlib.util.find_spec(TRACKER_PACKAGES[n]) is None]


def accelerator_kwargs(names: list[str], run_dir: Path) -> dict[str, Any]:
    """``Accelerator(**...)`` arguments for ``names``; sets the offline defaults (module
    doc) in this process's environment first."""
    if not names:
        return {}
    from trainer.run_folder import RunFolder

    folder = RunFolder(run_dir).trackers
    if "wandb" in names and not os.environ.get("WANDB_API_KEY"):
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_DIR", str(folder))
    if "mlflow" in names:
        os.environ.setdefault("MLFLOW_TRACKING_URI", (folder / "mlruns").resolve().as_uri())
    return {"log_with": list(names), "project_dir": str(folder)}


def hyperparameters(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The config as flat ``section.field`` keys with values every tracker takes (bool,
    int, float, str, None): lists and mappings as JSON text."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and not prefix:
            out.update(hyperparameters(value, f"{name}."))
        elif isinstance(value, (list, dict)):
            out[name] = json.dumps(value, sort_keys=True)
        else:
            out[name] = value
    return out


def _rank0(acc) -> bool:
    """Trackers live on rank 0 of the process group. Not ``acc.is_main_process``: on CPU the
    accelerator can count one process while the group has several (trainer/dist.py), and
    accelerate 1.15 creates a tracker's files (TensorBoard's event files) on every rank that
    calls ``init_trackers``."""
    from trainer.dist import rank_and_world  # torch: not at import (preflight imports this)

    return bool(acc.log_with) and rank_and_world()[0] == 0


def start(acc, project: str, config: dict[str, Any]) -> None:
    """Every rank may call it; the trackers start on rank 0 only."""
    if _rank0(acc):
        acc.init_trackers(project, config=hyperparameters(config))


def numbers(record: dict[str, Any]) -> dict[str, float]:
    """A metrics record's finite numbers (what a tracker can plot)."""
    return {k: float(v) for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def log(acc, record: dict[str, Any], step: int) -> None:
    if _rank0(acc):
        acc.log(numbers(record), step=step)
