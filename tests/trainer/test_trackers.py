"""Experiment trackers (run.report_to): what reaches them from a metrics record and the
config, their offline defaults, and the one-line refusal of one whose package is missing.
The events a real run writes: tests/integration/test_stage1_e2e.py (TensorBoard)."""

from __future__ import annotations

import importlib.util
import math
import os

import pytest

from trainer import trackers
from trainer.config import ConfigError, StageConfig, from_dict


def test_the_config_becomes_flat_hyperparameters_of_plain_values():
    got = trackers.hyperparameters({"stage": 1, "train": {"steps": 4, "seed": 0},
                                    "reward": {"weights": {"b": 1.0, "a": 0.5}},
                                    "run": {"report_to": ["tensorboard"], "name": ""}})
    assert got == {"stage": 1, "train.steps": 4, "train.seed": 0,
                   "reward.weights": '{"a": 0.5, "b": 1.0}',
                   "run.report_to": '["tensorboard"]', "run.name": ""}
    flat = trackers.hyperparameters(StageConfig().to_dict())
    assert all(v is None or isinstance(v, (bool, int, float, str)) for v in flat.values())


def test_a_record_logs_its_finite_numbers_only():
    record = {"step": 3, "loss": -0.25, "eval/new_best": 1.0, "kl": math.nan,
              "note": "text", "flag": True}
    assert trackers.numbers(record) == {"step": 3.0, "loss": -0.25, "eval/new_best": 1.0}


def test_trackers_default_to_files_under_the_run(tmp_path, monkeypatch):
    for key in ("WANDB_MODE", "WANDB_DIR", "WANDB_API_KEY", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(key, raising=False)
    assert trackers.accelerator_kwargs([], tmp_path) == {}
    kw = trackers.accelerator_kwargs(["tensorboard", "wandb", "mlflow"], tmp_path)
    assert kw == {"log_with": ["tensorboard", "wandb", "mlflow"],
                  "project_dir": str(tmp_path / "trackers")}
    assert os.environ["WANDB_MODE"] == "offline"
    assert os.environ["MLFLOW_TRACKING_URI"] == (tmp_path / "trackers/mlruns").resolve().as_uri()
    monkeypatch.setenv("WANDB_MODE", "online")  # the user's own choice wins
    trackers.accelerator_kwargs(["wandb"], tmp_path)
    assert os.environ["WANDB_MODE"] == "online"


def test_report_to_names_are_checked_and_a_missing_package_is_one_line():
    from launch.planning.preflight import tracker_problem

    with pytest.raises(ConfigError, match=r"run\.report_to\[0\]: 'comet'"):
        from_dict({"run": {"report_to": ["comet"]}})
    missing = [n for n, pkg in trackers.TRACKER_PACKAGES.items()
               if importlib.util.find_spec(pkg) is None]
    if not missing:
        pytest.skip("every tracker package is installed here")
    cfg = from_dict({"run": {"report_to": [missing[0]]}})
    line = tracker_problem(cfg)
    assert line.startswith("run.report_to: ") and "\n" not in line
    assert f"pip install {trackers.TRACKER_PACKAGES[missing[0]]}" in line
    assert tracker_problem(StageConfig()) is None
