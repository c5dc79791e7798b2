"""A two-node Slurm job on one machine through preemption, a time limit and requeues.

The test plays Slurm: it starts ``stonk slurm`` on node 0 (``localhost``, the worker) and
node 1 (``127.0.0.1``, 2 learner ranks) with the job's environment, and starts the same
commands again with ``SLURM_RESTART_COUNT`` one higher for each requeue, as Slurm does:
1. attempt 0 is preempted after step 3, its last checkpoint at step 2: every process of
   both nodes gets SIGTERM at once (Slurm signals the whole step), SIGKILL after a grace;
2. attempt 1 resumes from step 2 by itself; when it has resumed, every process gets SIGUSR1
   (the batch files' ``--signal``, the time-limit warning): the learner finishes step 3,
   checkpoints it and stops; without ``scontrol`` here, the node says to requeue;
3. attempt 2 resumes from step 3 and finishes step 4;
4. attempt 3 finds the run finished and exits at once.
The run must end as the session's uninterrupted reference run (same settings, one node:
the samples depend on seeds per step and rank, not on the layout): the same sampled tokens
(up to a near-tie) and rewards, metrics within the single-node resume test's tolerances.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.integration.helpers import (
    DEMO,
    REFERENCE_SETS,
    REPO,
    TEST_SETS,
    alive,
    processes_mentioning,
    set_flags,
    signal_tree,
    wait_until,
)
from tests.integration.test_resume import (
    ABS_TOL,
    FLOAT_KEYS,
    REL_TOL,
    STEPS,
    _rows,
    check_same_samples,
)
from trainer.train import EXIT_STOPPED

pytestmark = pytest.mark.integration
PORT, JOB = 8470, "5151"


def _attempt(tmp_path, n: int) -> tuple[list[subprocess.Popen], list]:
    sets = ["launch.slurm_worker_nodes=1", f"rollout.base_port={PORT}",
            "launch.main_process_port=29670", f"run.output_dir={tmp_path}",
            *REFERENCE_SETS, *TEST_SETS]
    cmd = [sys.executable, "-m", "launch.cli", "slurm", "--config", DEMO, *set_flags(*sets)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", SLURM_JOB_NODELIST="localhost,127.0.0.1",
               SLURM_NNODES="2", SLURM_JOB_ID=JOB, STONK_API_KEY="test-secret",
               SLURM_RESTART_COUNT=str(n))
    logs = [tmp_path / f"attempt{n}-node{i}.log" for i in (0, 1)]
    nodes = [subprocess.Popen(cmd, cwd=REPO, env=dict(env, SLURM_NODEID=str(i)),
                              stdout=open(logs[i], "w"), stderr=subprocess.STDOUT)
             for i in (0, 1)]
    return nodes, logs


def _finish(nodes, logs, timeout: float = 900) -> list[int]:
    try:
        return [p.wait(timeout=timeout) for p in nodes]
    finally:
        for p in nodes:
            if p.poll() is None:
                p.kill()


@pytest.fixture(scope="module")
def job(tmp_path_factory, reference_run, warm_model):
    tmp = tmp_path_factory.mktemp("requeue")
    run_dir = tmp / f"stage1-job{JOB}"
    metrics, latest = run_dir / "metrics.jsonl", run_dir / "checkpoints" / "LATEST"

    nodes, logs = _attempt(tmp, 0)  # 1. preempted after step 3
    wait_until(lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 3
               and latest.is_file(), "step 3", nodes)
    assert latest.read_text().strip() == "step_000002"
    pids = signal_tree(nodes, signal.SIGTERM)
    deadline = time.monotonic() + 30  # Slurm's KillWait
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    signal_tree(nodes, signal.SIGKILL)
    _finish(nodes, logs, 60)

    nodes, logs = _attempt(tmp, 1)  # 2. resumes; warned of the time limit at step 3
    wait_until(lambda: "resumed from" in logs[1].read_text(), "the resume", nodes)
    signal_tree(nodes, signal.SIGUSR1)
    codes = _finish(nodes, logs)
    out1 = [p.read_text() for p in logs]
    assert latest.read_text().strip() == "step_000003", out1[1][-4000:]

    nodes, logs = _attempt(tmp, 2)  # 3. resumes from step 3, finishes
    assert _finish(nodes, logs) == [0, 0], logs[1].read_text()[-4000:]
    out2 = [p.read_text() for p in logs]

    nodes, logs = _attempt(tmp, 3)  # 4. nothing left
    t = time.monotonic()
    assert _finish(nodes, logs, 120) == [0, 0], logs[1].read_text()[-4000:]
    out3 = [p.read_text() for p in logs], time.monotonic() - t
    return reference_run[0], run_dir, codes, out1, out2, out3


def test_each_attempt_continues_where_the_last_checkpoint_is(job):
    _, run_dir, codes, out1, out2, (out3, secs3) = job
    assert "continuing" in out1[1] and "resumed from" in out1[1] and "step_000002" in out1[1]
    assert "SIGUSR1 (Slurm's time-limit warning): stopped after step 3" in out1[1]
    assert "requeue or resubmit job 5151: it continues from step 3" in out1[1]
    assert codes[0] == 0, out1[0][-3000:]  # the worker node ends with the attempt
    # the time-limit stop is a clean stop: its own exit code, no torchrun traceback
    assert codes[1] == EXIT_STOPPED and "Traceback" not in out1[1], out1[1][-3000:]
    assert "resumed from" in out2[1] and "step_000003" in out2[1]
    assert all("already reached step 4" in o for o in out3) and secs3 < 60
    assert json.loads((run_dir / "attempt.json").read_text()) == {"attempt": 3,
                                                                  "start": "finished"}
    assert not [p for p in processes_mentioning(str(run_dir)) if alive(p.pid)]


def test_the_requeued_run_ends_as_the_uninterrupted_one(job, warm_model):
    reference, run_dir = job[0], job[1]
    got, ref = _rows(run_dir), _rows(reference)
    assert [r["step"] for r in got] == list(STEPS)
    # the same samples up to a near-tie (the single-node resume test's check); the float
    # metrics only before a step whose samples split, which changes every later batch
    splits = check_same_samples(warm_model, reference, run_dir, STEPS)
    split = splits[0][0] if splits else None
    for a, b in zip(ref, got, strict=True):
        if split is not None and a["step"] >= split:
            continue
        for key in FLOAT_KEYS:
            assert abs(a[key] - b[key]) <= ABS_TOL + REL_TOL * abs(a[key]), (a["step"], key)


def test_resume_by_hand_keeps_the_one_node_checks(job):
    """``stonk slurm --resume RUN`` (a job resubmitted under a new id): a finished run has
    nothing to do; a changed recipe is refused before anything starts, naming the field."""
    run_dir = job[1]
    env = dict(os.environ, SLURM_JOB_NODELIST="localhost,127.0.0.1", SLURM_NNODES="2",
               SLURM_NODEID="0", SLURM_JOB_ID="5152", STONK_API_KEY="test-secret")
    base = [sys.executable, "-m", "launch.cli", "slurm", "--config", DEMO, "--resume",
            str(run_dir)]
    done = subprocess.run(base, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "already reached step 4" in done.stdout, done.stderr
    changed = subprocess.run(base + set_flags("train.steps=6", "train.learning_rate=1.0e-3"),
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert changed.returncode == 2, changed.stdout + changed.stderr
    err = changed.stderr
    assert err.startswith(f"error: {run_dir}: cannot continue") and "Traceback" not in err
    assert "train.learning_rate: 0.005 -> 0.001" in err  # the one-node check, listing fields
