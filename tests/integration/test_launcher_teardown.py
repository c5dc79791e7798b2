"""No orphans: workers and learner ranks are stopped on Ctrl-C, SIGTERM and learner crash."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from tests.integration.helpers import alive, processes_mentioning, start_cli, worker_pids

pytestmark = pytest.mark.integration


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(1.0)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _ps() -> str:
    return subprocess.run(["ps", "-eo", "pid,pgid,stat,etime,args"], capture_output=True,
                          text=True).stdout[-4000:]


def _learner_ranks(run_dir):
    return processes_mentioning(str(run_dir.resolve())) + processes_mentioning(str(run_dir))


# SIGTERM (what Slurm sends at the time limit) mid-training; Ctrl-C while the workers still
# load and the learner ranks, started alongside, wait for them
@pytest.mark.parametrize("sig,when", [(signal.SIGTERM, "step"), (signal.SIGINT, "loading")],
                         ids=["SIGTERM-mid-run", "Ctrl-C-while-loading"])
def test_signal_stops_everything(tmp_path, warm_model, sig, when):
    run_dir = tmp_path / "sig"
    log = tmp_path / "launcher.log"
    proc = start_cli(tmp_path, "sig", "train.steps=200", log=log)
    try:
        if when == "step":
            _wait_for(lambda: (run_dir / "metrics.jsonl").exists()
                      and (run_dir / "metrics.jsonl").read_text().strip(), 600, "a first step")
        else:
            _wait_for(lambda: _learner_ranks(run_dir), 300, "the learner ranks")
        learners = _learner_ranks(run_dir)
        assert learners, "learner ranks should be running"
        if when == "loading":
            assert "workers healthy" not in log.read_text()
        proc.send_signal(sig)
        t0 = time.monotonic()
        try:
            code = proc.wait(timeout=300)  # learner, supervisor, worker: each bounded (<= 30 s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"launcher still running 300 s after {sig.name}; "
                                 f"processes: {_ps()}\n{log.read_text()[-3000:]}") from None
        assert code == 130, log.read_text()[-3000:]
        print(f"teardown after {sig.name}: {time.monotonic() - t0:.1f}s")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "stopping learner and workers" in log.read_text()
    assert not [pid for pid in worker_pids(run_dir) if alive(pid)]
    assert not [p.pid for p in learners if alive(p.pid)]


def test_learner_crash_stops_workers(tmp_path, warm_model):
    run_dir = tmp_path / "crash"
    log = tmp_path / "launcher.log"
    # the worker's engine core spawned, not forked: its start (~41 s here) outlasts the
    # learner's load-and-crash (~20 s); a forked one (~23 s) can be healthy first, and then
    # there is no loading left to stop waiting for
    proc = start_cli(tmp_path, "crash", "lora.target_modules=[no_such_proj]",
                     "rollout.cpu_engine_fork=false", log=log)
    assert proc.wait(timeout=600) not in (0, 130)
    text = log.read_text()
    assert "learner exited with code" in text and "workers stopped" in text
    # it crashed while the workers loaded: the launcher stopped waiting for them at once
    assert "the learner exited while the workers loaded" in text
    assert "workers healthy" not in text
    assert not [pid for pid in worker_pids(run_dir) if alive(pid)]
    assert not processes_mentioning(str(run_dir))
