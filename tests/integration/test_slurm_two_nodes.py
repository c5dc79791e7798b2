"""A two-node Slurm job on one machine: `stonk slurm` as srun starts it on each node, with
the job's environment; node 0 (``localhost``) serves the worker, node 1 (``127.0.0.1``) runs
the learner ranks against it over the API key, both in one run folder (the shared
filesystem). The learner ranks load while the worker node starts; the worker node stops when
the learner node marks the run done."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.integration.helpers import DEMO, REPO, TEST_SETS, alive, processes_mentioning, set_flags

pytestmark = pytest.mark.integration
PORT = 8460


def test_worker_node_and_learner_node_run_one_job(tmp_path, warm_model):
    sets = ["launch.slurm_worker_nodes=1", f"rollout.base_port={PORT}",
            "launch.main_process_port=29660", f"run.output_dir={tmp_path}", "train.steps=1",
            *TEST_SETS]
    cmd = [sys.executable, "-m", "launch.cli", "slurm", "--config", DEMO,
           *set_flags(*sets)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", SLURM_JOB_NODELIST="localhost,127.0.0.1",
               SLURM_NNODES="2", SLURM_JOB_ID="4242", STONK_API_KEY="test-secret")
    logs = [tmp_path / f"node{i}.log" for i in (0, 1)]
    nodes = [subprocess.Popen(cmd, cwd=REPO, env=dict(env, SLURM_NODEID=str(i)),
                              stdout=open(logs[i], "w"), stderr=subprocess.STDOUT)
             for i in (0, 1)]
    try:
        assert nodes[1].wait(timeout=900) == 0, logs[1].read_text()[-4000:]
        assert nodes[0].wait(timeout=120) == 0, logs[0].read_text()[-4000:]
    finally:
        for p in nodes:
            if p.poll() is None:
                p.kill()
    worker_log, learner_log = (p.read_text() for p in logs)
    run_dir = tmp_path / "stage1-job4242"
    url = f"http://localhost:{PORT}"
    assert f"serving {url} (bound to 127.0.0.1) until" in worker_log  # routes to 127.0.0.1
    assert "rank(s) while the workers start" in learner_log
    assert "workers healthy after" in learner_log
    assert json.loads((run_dir / "served_adapters.json").read_text()) == {
        url: str((run_dir / "adapters/v000001").resolve())}
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1] and rows[-1]["logp_gap"] < 1e-3
    assert (run_dir / "DONE").is_file()  # the learner node marked the run done
    assert (run_dir / "logs" / "localhost").is_dir()  # each worker node logs in its own folder
    assert not [p for p in processes_mentioning(str(run_dir)) if alive(p.pid)]


def test_a_node_whose_peers_never_come_stops_naming_what_it_waited_for(tmp_path, warm_model):
    """launch.node_wait_s bounds every wait between nodes: a learner node without node 0
    waits for node 0's start decision; a worker node whose learner never shows a sign of
    life (no workers.json, no metrics) stops its workers."""
    sets = ["launch.slurm_worker_nodes=1", f"rollout.base_port={PORT + 5}",
            f"run.output_dir={tmp_path}", "launch.node_wait_s=4", *TEST_SETS]
    cmd = [sys.executable, "-m", "launch.cli", "slurm", "--config", DEMO, *set_flags(*sets)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", SLURM_JOB_NODELIST="localhost,127.0.0.1",
               SLURM_NNODES="2", SLURM_JOB_ID="4343", STONK_API_KEY="test-secret")
    learner = subprocess.run(cmd, cwd=REPO, env=dict(env, SLURM_NODEID="1"),
                             capture_output=True, text=True, timeout=120)
    assert learner.returncode == 2, learner.stdout + learner.stderr
    assert ("waited 4s (launch.node_wait_s) for node 0's start decision for attempt 0"
            in learner.stderr)
    worker = subprocess.run(cmd, cwd=REPO, env=dict(env, SLURM_NODEID="0"),
                            capture_output=True, text=True, timeout=600)
    assert worker.returncode == 1, worker.stdout + worker.stderr
    assert "no learner activity (metrics.jsonl, workers.json) for 4s" in worker.stderr
    assert not [p for p in processes_mentioning(str(tmp_path)) if alive(p.pid)]
