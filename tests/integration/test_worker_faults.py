"""Worker faults on real vLLM workers (CPU).

Client and supervisor, 2 workers, in order (they share the pool):
1. a worker SIGKILLed while it serves requests: the client retries them on the live worker
   with the same seeds, so the results equal a fault-free call; the supervisor restarts the
   dead worker on its port, serving the store's newest adapter, and the client uses it again;
2. a worker that hangs (SIGSTOP): its requests time out and are retried elsewhere; failed
   health checks mark it hung, it is killed and restarted;
3. a worker that may not be restarted again ends "failed"; with both failed the client stops
   waiting at once.
End to end through the launcher: the only worker dies and may not be restarted: the run
stops with a clear message, exit code != 0, no process left, the last checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.request

import pytest
import torch

from rollout.adapter_store import AdapterStore
from rollout.client import NoWorkersError, RolloutClient
from rollout.server import WorkerPool, WorkerSpec
from rollout.supervisor import Supervisor
from tests.integration.helpers import (
    REPO,
    alive,
    cli_command,
    demo_worker_env,
    processes_mentioning,
    worker_pids,
)
from trainer import checkpoint
from trainer.config import StageConfig
from trainer.policy import load_policy

pytestmark = pytest.mark.integration
PORTS = (8680, 8681)
PROMPTS = [[1] + [40 + (i * 7 + j) % 300 for j in range(20 + i)] for i in range(16)]


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s: {what}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def setup(warm_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    cfg = StageConfig()
    cfg.model.name_or_path, cfg.model.dtype = str(warm_model), "float32"
    torch.manual_seed(0)
    model = load_policy(cfg, torch.device("cpu"))
    store = AdapterStore(root / "adapters")
    for version in (0, 1):
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1)
        store.publish(version, lambda d: model.save_pretrained(d))
    specs = [WorkerSpec(model=str(warm_model), port=port, max_model_len=1024, dtype="float32",
                        gpu_memory_utilization=0.1, enforce_eager=True, chunked_prefill=False,
                        env=demo_worker_env()) for port in PORTS]
    pool = WorkerPool(specs, root / "logs", startup_timeout=600)
    with pool:
        supervisor = Supervisor(pool, adapter_dir=store.root, api_key=None, interval=1.0,
                                health_timeout=5.0, unhealthy_after=3, max_restarts=1,
                                startup_timeout=600, events_path=root / "faults.jsonl",
                                status_path=root / "status.json").start()
        client = RolloutClient(pool.urls, timeout=30, retries=3, adapter_root=store.root,
                               status_path=root / "status.json", wait_for_workers_s=600,
                               health_timeout=5.0)
        client.sync(0, store.path(0))
        yield pool, supervisor, client, store, root
        supervisor.stop()


def _events(root):
    path = root / "faults.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []


def _generate(client):
    return client.generate(PROMPTS, n=4, max_tokens=48, seed=1234)


def _ids(groups):
    return [[c.token_ids for c in g] for g in groups]


def _running(url: str) -> float:
    """Requests the worker is decoding now, from vLLM's Prometheus ``/metrics``."""
    try:
        text = urllib.request.urlopen(f"{url}/metrics", timeout=2).read().decode()
    except OSError:
        return 0.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:num_requests_running"))


def _during(client, fault, victim_url: str):
    """Run a generate call and ``fault()`` once ``victim_url`` is decoding some of its requests
    (not after a fixed delay: a prefix-cached repeat can finish before any delay ends, and
    then nothing is lost). Returns the groups."""
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("groups", _generate(client)))
    thread.start()
    deadline = time.monotonic() + 60
    while _running(victim_url) < 1:
        assert thread.is_alive(), "the call ended before the victim had a request running"
        assert time.monotonic() < deadline, "the victim never ran a request"
        time.sleep(0.02)
    fault()
    thread.join(timeout=600)
    return out["groups"]


def test_killed_worker_requests_are_retried_and_it_comes_back_serving_the_new_adapter(setup):
    pool, supervisor, client, store, root = setup
    reference = _generate(client)
    assert {c.worker for g in reference for c in g} == set(pool.urls)
    client.take_faults()
    store.publish(2, lambda d: shutil.copytree(store.path(0), d, dirs_exist_ok=True))
    client.sync(2, store.path(2))
    victim = pool.workers[1]
    groups = _during(client, lambda: os.killpg(victim.pid, signal.SIGKILL), victim.url)
    assert _ids(groups) == _ids(reference)  # same seeds on the other worker: same samples
    assert client.take_faults()["request_retries"] > 0
    assert any(c.worker == pool.urls[0] for g in groups[1::2] for c in g)  # moved over

    _wait(lambda: [e["event"] for e in _events(root)][-1:] == ["restarted"], 600,
          "the supervisor restarting the worker")
    assert [e["event"] for e in _events(root)] == ["died", "restarted"]
    assert client.served_adapter_path(victim.url) == str(store.path(2).resolve())
    assert client.sync(2, store.path(2)) == pool.urls  # back in use
    assert _ids(_generate(client)) == _ids(reference)


def test_hung_worker_is_detected_killed_and_restarted(setup):
    pool, supervisor, client, store, root = setup
    victim = pool.workers[0]
    hung_pid = victim.pid
    reference = _generate(client)
    before = len(_events(root))
    groups = _during(client, lambda: os.kill(hung_pid, signal.SIGSTOP), victim.url)
    assert _ids(groups) == _ids(reference)

    def victim_events():
        return [e["event"] for e in _events(root)[before:] if e["worker"] == victim.url]

    _wait(lambda: victim_events()[-1:] == ["restarted"], 600, "a restart after the hang")
    assert victim_events() == ["hung", "restarted"]
    assert victim.pid != hung_pid and not alive(hung_pid)
    assert client.sync(2, store.path(2)) == pool.urls


def test_when_no_worker_can_be_restarted_the_client_stops_waiting(setup):
    pool, supervisor, client, store, root = setup
    for w in pool.workers:  # each already used its one restart
        os.killpg(w.pid, signal.SIGKILL)
    _wait(supervisor.all_failed, 60, "both workers failed")
    assert [e["event"] for e in _events(root)].count("gave_up") == 2
    t0 = time.monotonic()
    with pytest.raises(NoWorkersError, match="could not restart them"):
        _generate(client)
    assert time.monotonic() - t0 < 30  # not the 600 s wait_for_workers_s


def test_run_stops_cleanly_when_every_worker_is_gone(tmp_path, warm_model):
    run_dir = tmp_path / "gone"
    proc = subprocess.Popen(
        cli_command(tmp_path, "gone", "train.steps=4", "run.checkpoint_every=1",
                    "rollout.max_worker_restarts=0", "rollout.health_check_interval_s=1",
                    "rollout.base_port=8690"),
        cwd=REPO, stdout=open(tmp_path / "out.log", "w"), stderr=subprocess.STDOUT,
        env=dict(os.environ, PYTHONUNBUFFERED="1"))
    latest = run_dir / "checkpoints" / "LATEST"
    _wait(lambda: latest.is_file() or proc.poll() is not None, 600, "the first checkpoint")
    (worker,) = worker_pids(run_dir)
    os.killpg(worker, signal.SIGKILL)
    assert proc.wait(timeout=300) not in (0, 130)
    out = (tmp_path / "out.log").read_text()
    assert "the launcher could not restart them" in out and "Training stopped" in out
    assert f"RESUME={run_dir}" in out and "the last complete checkpoint is" in out
    assert "workers stopped" in out
    ckpt = checkpoint.latest(run_dir)
    assert ckpt is not None
    checkpoint._verify_files(ckpt, checkpoint.read_state(ckpt))
    assert not processes_mentioning(str(run_dir))
    assert [e["event"] for e in map(json.loads, (run_dir / "faults.jsonl").read_text()
                                    .splitlines())] == ["died", "gave_up"]


def test_worker_without_memory_for_its_kv_cache_names_the_setting(tmp_path, warm_model):
    """A real vLLM-CPU start failure (its RAM share cannot hold model + KV cache) becomes a
    message naming rollout.gpu_memory_utilization and its value; the learner ranks, started
    while the workers load, are stopped with them."""
    proc = subprocess.run(
        cli_command(tmp_path, "oom", "rollout.gpu_memory_utilization=0.0001",
                    "rollout.base_port=8692"),
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1
    assert "rollout.gpu_memory_utilization=0.0001" in proc.stderr, proc.stderr[-3000:]
    assert "model.max_model_len=1024" in proc.stderr
    assert "workers healthy" not in proc.stdout
    assert not processes_mentioning(str(tmp_path / "oom"))
