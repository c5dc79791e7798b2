"""Run a stage: run folder, vLLM workers, the ``accelerate launch`` learner, clean teardown.

Topology (DESIGN.md): the launcher owns the worker processes and the learner process tree.
Workers and learners each run in their own process session; on every exit path (normal end,
exception, Ctrl-C, SIGTERM) both trees are terminated, and each child also gets SIGTERM from
the kernel if the launcher itself dies.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from rollout.server import WorkerPool, WorkerSpec, _die_with_parent, _group_alive
from trainer.config import StageConfig, save_config

REPO_ROOT = Path(__file__).resolve().parents[1]


class Terminated(Exception):
    """Raised in the launcher when it receives SIGTERM, so cleanup runs."""


def _on_sigterm(signum, frame):
    raise Terminated(f"received signal {signum}")


def free_port(start: int, host: str = "127.0.0.1", taken: set[int] | None = None) -> int:
    port = start
    while True:
        if port not in (taken or set()):
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((host, port))
                    return port
                except OSError:
                    pass
        port += 1


def make_run_dir(cfg: StageConfig, stage: str) -> Path:
    name = cfg.run.name or f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(cfg.run.output_dir) / name
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def worker_specs(cfg: StageConfig) -> list[WorkerSpec]:
    rc = cfg.rollout
    ports: set[int] = set()
    specs = []
    for i in range(rc.num_workers):
        port = free_port(rc.base_port + i, rc.host, ports)
        ports.add(port)
        specs.append(WorkerSpec(
            model=cfg.model.name_or_path, port=port, host=rc.host, max_lora_rank=cfg.lora.r,
            max_model_len=cfg.model.max_model_len, dtype=rc.dtype,
            gpu_memory_utilization=rc.gpu_memory_utilization, enforce_eager=rc.enforce_eager,
            seed=cfg.train.seed + i, trust_remote_code=cfg.model.trust_remote_code,
            extra_args=list(rc.extra_args), env=dict(rc.env),
        ))
    return specs


def learner_command(cfg: StageConfig, run_dir: Path, module: str) -> list[str]:
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO_ROOT / cfg.launch.accelerate_config),
        "--deepspeed_config_file", str(REPO_ROOT / cfg.launch.ds_config),
        "--num_processes", str(cfg.launch.num_processes),
        "--main_process_port", str(free_port(29500)),
        "-m", module, "--run-dir", str(run_dir),
    ]


def learner_env(cfg: StageConfig) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    if cfg.launch.device == "cpu":
        env["DS_ACCELERATOR"] = "cpu"
        env.setdefault("CUDA_VISIBLE_DEVICES", "")
        if cfg.launch.learner_threads:
            env["OMP_NUM_THREADS"] = str(cfg.launch.learner_threads)
    return env


def _stop_tree(proc: subprocess.Popen, grace: float = 20.0) -> None:
    if proc.poll() is None or _group_alive(proc.pid):
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and _group_alive(proc.pid):
                time.sleep(0.1)
    proc.poll()


def run_stage(cfg: StageConfig, stage: str, module: str) -> int:
    """Start workers, run the learner to completion, tear everything down; returns exit code."""
    run_dir = make_run_dir(cfg, stage)
    save_config(cfg, run_dir / "config.yaml")
    print(f"[launch] run folder {run_dir}", flush=True)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    pool = WorkerPool(worker_specs(cfg), run_dir / "logs", cfg.rollout.startup_timeout_s)
    learner: subprocess.Popen | None = None
    try:
        t0 = time.perf_counter()
        print(f"[launch] starting {len(pool.workers)} vLLM worker(s): "
              f"{', '.join(pool.urls)} (logs in {run_dir / 'logs'})", flush=True)
        pool.start()
        pool.write_manifest(run_dir / "workers.json")
        print(f"[launch] workers healthy after {time.perf_counter() - t0:.0f}s; starting "
              f"{cfg.launch.num_processes} learner rank(s)", flush=True)
        learner = subprocess.Popen(learner_command(cfg, run_dir, module), env=learner_env(cfg),
                                   cwd=REPO_ROOT, start_new_session=True,
                                   preexec_fn=_die_with_parent)
        code = learner.wait()
        if code != 0:
            print(f"[launch] learner exited with code {code}", file=sys.stderr, flush=True)
        return code
    except (KeyboardInterrupt, Terminated) as exc:
        print(f"[launch] interrupted ({exc or 'Ctrl-C'}); stopping learner and workers",
              file=sys.stderr, flush=True)
        return 130
    finally:
        if learner is not None:
            _stop_tree(learner)
        pool.stop()
        signal.signal(signal.SIGTERM, previous)
        print("[launch] workers stopped", flush=True)
