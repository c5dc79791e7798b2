"""Slurm attempts (launch/slurm/job.py): node 0's start decision, what an earlier attempt
left, the waits between nodes, the time-limit warning and the requeue. Resuming and a
finished run are exercised end to end in tests/integration/test_slurm_requeue.py."""

from __future__ import annotations

import json
import os
import signal

import pytest

from launch.run.plan import slurm_plan
from launch.slurm import job as slurm_job
from trainer.config import ConfigError, load_config

DEMO = "configs/demo/stage1.yaml"


def _plan(cfg):
    env = {"SLURM_JOB_NODELIST": "a,b", "SLURM_NNODES": "2", "SLURM_NODEID": "0"}
    return slurm_plan(cfg, env)


def test_attempt_number_counts_requeues():
    assert slurm_job.attempt_number({}) == 0
    assert slurm_job.attempt_number({"SLURM_RESTART_COUNT": "2"}) == 2


def test_a_new_run_folder_starts_fresh_and_records_the_decision(tmp_path):
    cfg = load_config(DEMO)
    run_dir = tmp_path / "stage1-job1"
    assert slurm_job.decide(cfg, run_dir, _plan(cfg), 0, resume_asked=False) == "fresh"
    assert json.loads((run_dir / "attempt.json").read_text()) == {"attempt": 0,
                                                                  "start": "fresh"}
    assert slurm_job.await_decision(run_dir, 0, timeout_s=1) == "fresh"


def test_an_attempt_without_checkpoint_is_set_aside_but_the_logs_stay(tmp_path):
    cfg = load_config(DEMO)
    run_dir = tmp_path / "run"
    (run_dir / "adapters" / "v000000").mkdir(parents=True)
    (run_dir / "logs" / "a").mkdir(parents=True)
    for name in ("config.yaml", "metrics.jsonl", "DONE", "workers.json"):
        (run_dir / name).write_text("from attempt 0\n")
    assert slurm_job.decide(cfg, run_dir, _plan(cfg), 1, resume_asked=False) == "fresh"
    assert sorted(p.name for p in run_dir.iterdir()) == ["attempt-0", "attempt.json", "logs"]
    assert sorted(p.name for p in (run_dir / "attempt-0").iterdir()) == [
        "DONE", "adapters", "config.yaml", "metrics.jsonl", "workers.json"]


def test_resume_without_a_checkpoint_is_refused(tmp_path):
    cfg = load_config(DEMO)
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        slurm_job.decide(cfg, tmp_path, _plan(cfg), 0, resume_asked=True)


def test_other_nodes_wait_for_this_attempts_decision_not_an_earlier_ones(tmp_path):
    (tmp_path / "attempt.json").write_text(json.dumps({"attempt": 0, "start": "fresh"}))
    with pytest.raises(ConfigError) as err:
        slurm_job.await_decision(tmp_path, 1, timeout_s=0.3)
    msg = str(err.value)
    assert "launch.node_wait_s" in msg and "attempt 1" in msg and "attempt.json" in msg


def test_the_launcher_lives_through_the_time_limit_warning(capsys, monkeypatch):
    monkeypatch.setattr(slurm_job, "WARNED", [])
    previous = signal.getsignal(signal.SIGUSR1)
    try:
        slurm_job.ignore_time_limit_warning("[launch] n1:")
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGUSR1)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert slurm_job.WARNED == [signal.SIGUSR1]
    assert capsys.readouterr().err.count("time-limit warning") == 1


def test_requeue_asks_scontrol_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", "/nonexistent")
    slurm_job.requeue("77", 3)
    assert "requeue or resubmit job 77: it continues from step 3" in capsys.readouterr().err
    calls = tmp_path / "calls"
    fake = tmp_path / "scontrol"  # Slurm is not installed here: a stand-in that records
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    slurm_job.requeue("77", 3)
    assert calls.read_text() == "requeue 77\n"
    assert "requeued job 77: the next attempt continues from step 3" in capsys.readouterr().err
