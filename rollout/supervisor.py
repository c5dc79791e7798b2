"""Keep a WorkerPool serving: detect dead or hung workers, restart them with the current adapter.

Runs in the launcher (the process that owns the worker processes), as one thread. Every
``interval`` seconds it looks at each worker:

- up: the process exited -> "died"; ``/health`` failed ``unhealthy_after`` times in a row
  (each waits ``health_timeout``) -> "hung", and the process group is killed. Either way the
  worker is restarted on the same port, at most ``max_restarts`` times; then it is "failed".
- starting: healthy -> the adapter store's newest version is loaded (under its version's name) and verified
  ("restarted"); exited or past ``startup_timeout`` -> "restart_failed" and another try.

Events go to ``events_path`` (one JSON line each, e.g. ``faults.jsonl`` in the run folder) and
the console; each worker's state goes to ``status_path`` (replaced atomically), which the
learner's RolloutClient reads to stop waiting once every worker has failed for good. The
learner never talks to the supervisor: it retries lost requests on live workers and re-checks
a returning worker's adapter itself (rollout/client.py).

One long-lived thread on purpose: workers ask the kernel for SIGTERM when the thread that
spawned them exits (PR_SET_PDEATHSIG), so restarts must not happen on short-lived threads.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from common.files import atomic_write_text
from rollout.adapter_store import AdapterStore
from rollout.server import WorkerError, WorkerPool, WorkerProcess


@dataclass
class _Watch:
    state: str = "up"  # up | starting | failed
    failed_checks: int = 0
    restarts: int = 0
    since: float = field(default_factory=time.monotonic)
    deadline: float = 0.0


class Supervisor:
    def __init__(self, pool: WorkerPool, *, adapter_dir: Path | None, api_key: str | None,
                 interval: float, health_timeout: float, unhealthy_after: int,
                 max_restarts: int, startup_timeout: float, events_path: Path | None = None,
                 status_path: Path | None = None, manifest_path: Path | None = None,
                 tag: str = "[launch]"):
        self.pool = pool
        self.adapter_dir = Path(adapter_dir) if adapter_dir else None
        self.api_key = api_key
        self.interval = interval
        self.health_timeout = health_timeout
        self.unhealthy_after = unhealthy_after
        self.max_restarts = max_restarts
        self.startup_timeout = startup_timeout
        self.events_path = events_path
        self.status_path = status_path
        self.manifest_path = manifest_path  # workers.json: URLs and the current pids
        self.tag = tag
        self.watch = [_Watch() for _ in pool.workers]
        self.counts = {"died": 0, "hung": 0, "restarted": 0, "restart_failed": 0, "gave_up": 0}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Supervisor:
        self._write_status()
        self._thread = threading.Thread(target=self._run, name="worker-supervisor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.health_timeout * len(self.watch) + 10)

    def all_failed(self) -> bool:
        return all(w.state == "failed" for w in self.watch)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for i, worker in enumerate(self.pool.workers):
                if self._stop.is_set():
                    return
                try:
                    self._check(i, worker)
                except WorkerError as exc:  # closed during shutdown
                    if not self._stop.is_set():
                        self._event(i, "restart_failed", str(exc))

    # ------------------------------------------------------------------ one worker
    def _check(self, i: int, worker: WorkerProcess) -> None:
        w = self.watch[i]
        if w.state == "up":
            if not worker.alive():
                self._event(i, "died", f"exit code {worker.returncode}")
                self._restart(i, worker)
            elif worker.healthy(timeout=self.health_timeout):
                w.failed_checks = 0
            else:
                w.failed_checks += 1
                if w.failed_checks >= self.unhealthy_after:
                    self._event(i, "hung", f"/health failed {w.failed_checks} times in a row "
                                           f"({self.health_timeout:.0f}s timeout each)")
                    self._restart(i, worker)
        elif w.state == "starting":
            if not worker.alive():
                self._event(i, "restart_failed", f"exited with code {worker.returncode} while "
                                                 f"starting; see {worker.log_path}")
                self._restart(i, worker)
            elif worker.healthy(timeout=self.health_timeout):
                self._serve_current_adapter(i, worker)
            elif time.monotonic() > w.deadline:
                self._event(i, "restart_failed", f"not healthy after {self.startup_timeout:.0f}s "
                                                 f"(rollout.startup_timeout_s)")
                self._restart(i, worker)

    def _restart(self, i: int, worker: WorkerProcess) -> None:
        w = self.watch[i]
        worker.stop(grace=2.0)  # the whole process group, also when stopped or hung
        if w.restarts >= self.max_restarts:
            w.state = "failed"
            self._event(i, "gave_up", f"restarted {w.restarts} time(s) already "
                                      f"(rollout.max_worker_restarts={self.max_restarts})")
            return
        w.restarts += 1
        w.state, w.failed_checks = "starting", 0
        w.since, w.deadline = time.monotonic(), time.monotonic() + self.startup_timeout
        worker.start()
        if self.manifest_path is not None:
            self.pool.write_manifest(self.manifest_path)
        self._write_status()

    def _serve_current_adapter(self, i: int, worker: WorkerProcess) -> None:
        from rollout.client import RolloutClient

        w = self.watch[i]
        detail = "no adapter published yet"
        store = AdapterStore(self.adapter_dir) if self.adapter_dir else None
        version = store.latest() if store else None
        if version is not None:
            try:
                RolloutClient([worker.url], timeout=120, api_key=self.api_key).publish(
                    version, store.path(version))
            except WorkerError as exc:  # e.g. pruned meanwhile, or died again: next tick
                self._event(i, "restart_failed", f"loading adapter v{version}: {exc}")
                self._restart(i, worker)
                return
            detail = f"serving adapter v{version}"
        w.state, w.failed_checks = "up", 0
        self._event(i, "restarted", f"{detail}, {time.monotonic() - w.since:.0f}s after the "
                                    f"fault (restart {w.restarts}/{self.max_restarts})")

    # ------------------------------------------------------------------ records
    def _event(self, i: int, kind: str, detail: str) -> None:
        worker = self.pool.workers[i]
        self.counts[kind] = self.counts.get(kind, 0) + 1
        record = {"time": time.time(), "worker": worker.url, "event": kind, "detail": detail,
                  "pid": worker.pid}
        print(f"{self.tag} worker {worker.url}: {kind}: {detail}", file=sys.stderr, flush=True)
        if self.events_path is not None:
            with open(self.events_path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
        self._write_status()

    def _write_status(self) -> None:
        if self.status_path is None:
            return
        workers = {wp.url: {"state": w.state, "restarts": w.restarts, "pid": wp.pid}
                   for wp, w in zip(self.pool.workers, self.watch, strict=True)}
        atomic_write_text(self.status_path, json.dumps(
            {"workers": workers, "counts": self.counts, "updated": time.time()}, indent=1))
