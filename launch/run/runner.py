"""Run a stage from a :class:`launch.run.plan.Plan`: run folder, workers, learner, teardown.

The launcher owns the worker processes and the ``accelerate launch`` learner tree on its
node. Workers and learners each run in their own process session; on every exit path
(normal end, exception, Ctrl-C, SIGTERM) both trees are terminated, and each child also gets
SIGTERM from the kernel if the launcher itself dies.

While the learner runs, a supervisor thread (rollout/supervisor.py) health-checks the
workers and restarts a dead or hung one on its port with the current adapter; events go to
``faults.jsonl`` and worker states to ``workers_status.json`` in the run folder. When the
learner fails, the launcher names the last complete checkpoint and the command that resumes.

Slurm jobs run ``launch/slurm/job.py`` on every node (``srun stonk slurm``), built from
the parts here.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from common.processes import die_with_parent, group_alive
from launch.run.cpu_cores import BIND_VAR, allowed_cpus, worker_bindings
from launch.run.plan import LearnerSlot, Plan, WorkerSlot
from rollout.server import StartAborted, WorkerError, WorkerPool, WorkerSpec
from rollout.supervisor import Supervisor
from trainer.config import ConfigError, StageConfig, mixed_precision, save_config
from trainer.run_folder import RunFolder

REPO_ROOT = Path(__file__).resolve().parents[2]
DONE = "DONE"


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


def run_dir_for(cfg: StageConfig, stage: str, job_id: str | None = None) -> Path:
    stamp = f"job{job_id}" if job_id else time.strftime("%Y%m%d-%H%M%S")
    return Path(cfg.run.output_dir) / (cfg.run.name or f"{stage}-{stamp}")


RUN_MARKS = ("config.yaml", "metrics.jsonl", "adapters", "checkpoints", "stage2.json")


def fresh_run_problem(run_dir: Path, stage: str) -> str | None:
    """Why a new run may not start in ``run_dir`` (it holds an earlier run's files, which a
    new run would mix with: adapter versions, checkpoints, metrics), or None."""
    held = [m for m in RUN_MARKS if (run_dir / m).exists()]
    if not held:
        return None
    return (f"{run_dir} already holds a run ({', '.join(held)}): continue it with "
            f"RESUME={run_dir} (stonk {stage} --resume {run_dir}), or start a new one with "
            "--set run.name=<a new name>")


def api_key(cfg: StageConfig, plan: Plan) -> str | None:
    if not plan.api_key_required:
        return None
    key = os.environ.get(cfg.rollout.api_key_env)
    if not key:
        raise ConfigError(
            f"rollout.api_key_env: workers serve other hosts here, so they need an API key: "
            f"export {cfg.rollout.api_key_env}=<secret> (the Slurm batch files make one)")
    return key


def chunked_prefill(cfg: StageConfig) -> bool | None:
    """rollout.chunked_prefill resolved: None leaves vLLM's default."""
    rc = cfg.rollout
    if rc.chunked_prefill is None and cfg.launch.device == "cpu" and rc.seed_requests:
        return False
    return rc.chunked_prefill


def worker_specs(cfg: StageConfig, slots: list[WorkerSlot], key: str | None,
                 probe_ports: bool) -> list[WorkerSpec]:
    """Specs for the workers of this node. Local runs move to a free port if one is taken;
    multi-node runs keep the planned ports (the learner nodes expect them)."""
    rc = cfg.rollout
    taken: set[int] = set()
    specs = []
    binds: list[str | None] = [None] * len(slots)
    if cfg.launch.device == "cpu" and rc.cpu_bind:
        binds = worker_bindings(len(slots), rc.env, allowed_cpus())
    for i, slot in enumerate(slots):
        address = slot.bind or slot.host
        port = free_port(slot.port, address, taken) if probe_ports else slot.port
        taken.add(port)
        specs.append(WorkerSpec(
            model=cfg.model.name_or_path, port=port, host=address, max_lora_rank=cfg.lora.r,
            max_model_len=cfg.model.max_model_len, dtype=rc.dtype,
            gpu_memory_utilization=rc.gpu_memory_utilization, enforce_eager=rc.enforce_eager,
            seed=cfg.train.seed + i, api_key=key, trust_remote_code=cfg.model.trust_remote_code,
            tensor_parallel_size=rc.tensor_parallel_size, devices=slot.devices,
            chunked_prefill=chunked_prefill(cfg), extra_args=list(rc.extra_args),
            env={**worker_flags(cfg), **rc.env,
                 **({} if binds[i] is None else {BIND_VAR: binds[i]})},
        ))
    return specs


def worker_flags(cfg: StageConfig) -> dict[str, str]:
    """Environment our vLLM plugins read: on CPU workers, the dense LoRA ops and the forked
    engine core."""
    from rollout import cpu_engine_fork, dense_lora

    cpu = cfg.launch.device == "cpu"
    return {dense_lora.ENV: "1" if cpu and cfg.rollout.cpu_dense_lora else "0",
            cpu_engine_fork.ENV: "1" if cpu and cfg.rollout.cpu_engine_fork else "0"}


def accelerate_files(cfg: StageConfig, slot: LearnerSlot) -> tuple[str, str]:
    """(accelerate config, DeepSpeed config), repo-relative, resolving "auto"."""
    la = cfg.launch
    acc = la.accelerate_config
    if acc == "auto":
        if la.device == "cpu":
            name = "cpu_deepspeed"
        elif slot.num_machines > 1:
            name = "multinode_zero2"
        elif la.zero_stage == 3:
            name = "node_zero3"
        else:
            name = "gpu_single" if slot.num_processes == 1 else "node_zero2"
        acc = f"launch/accelerate/{name}.yaml"
    ds = la.ds_config
    if ds == "auto":
        ds = "launch/accelerate/ds_zero3.json" if la.zero_stage == 3 else "ds_config.json"
    return acc, ds


def learner_command(cfg: StageConfig, run_dir: Path, module: str, slot: LearnerSlot,
                    probe_port: bool = True, resume: bool = False) -> list[str]:
    port = free_port(slot.main_process_port) if probe_port else slot.main_process_port
    acc, ds = accelerate_files(cfg, slot)
    cmd = [
        # accelerate launch, but a clean stop exits with its own code and no torchrun
        # traceback above the ranks' one-line reason (launch/run/learner_launch.py)
        sys.executable, "-m", "launch.run.learner_launch",
        "--config_file", str(REPO_ROOT / acc),
        "--deepspeed_config_file", str(REPO_ROOT / ds),
        "--mixed_precision", mixed_precision(cfg),
        "--num_processes", str(slot.num_processes),
        "--num_machines", str(slot.num_machines),
        "--machine_rank", str(slot.machine_rank),
        "--main_process_ip", slot.main_process_ip,
        "--main_process_port", str(port),
    ]
    return cmd + ["-m", module, "--run-dir", str(run_dir)] + (["--resume"] if resume else [])


def learner_env(cfg: StageConfig, slot: LearnerSlot) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    if cfg.launch.device == "cpu":
        env["DS_ACCELERATOR"] = "cpu"
        env.setdefault("CUDA_VISIBLE_DEVICES", "")
        if cfg.launch.learner_threads:
            env["OMP_NUM_THREADS"] = str(cfg.launch.learner_threads)
    elif slot.devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = slot.devices
    return env


def dry_run(cfg: StageConfig, plan: Plan, module: str, run_dir: Path) -> str:
    """The exact processes this node would start, without starting any."""
    key = "<$" + cfg.rollout.api_key_env + ">" if plan.api_key_required else None
    lines = [plan.describe()]
    for spec in worker_specs(cfg, plan.local_workers, key, probe_ports=False):
        lines.append(f"start worker (CUDA_VISIBLE_DEVICES={spec.devices or ''}): "
                     + " ".join(spec.command()))
    if plan.learner:
        env = learner_env(cfg, plan.learner)
        cmd = learner_command(cfg, run_dir, module, plan.learner, probe_port=False)
        lines.append(f"start learner (CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES', '')}): "
                     + " ".join(cmd))
    from launch.planning.memory import describe  # here: dry_run is its only use in this module

    lines.append(describe(cfg))
    return "\n".join(lines)


def stop_tree(proc: subprocess.Popen, grace: float = 20.0) -> None:
    if proc.poll() is None or group_alive(proc.pid):
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and group_alive(proc.pid):
                time.sleep(0.1)
    proc.poll()


def start_learner(cfg: StageConfig, run_dir: Path, module: str, slot: LearnerSlot,
                   probe_port: bool, resume: bool = False) -> subprocess.Popen:
    return subprocess.Popen(learner_command(cfg, run_dir, module, slot, probe_port, resume),
                            env=learner_env(cfg, slot), cwd=REPO_ROOT, start_new_session=True,
                            preexec_fn=die_with_parent)


def supervise(cfg: StageConfig, pool: WorkerPool, key: str | None, run_dir: Path | None,
              tag: str = "[launch]") -> Supervisor:
    """Start the worker supervisor; with a run folder it loads restarted workers with the
    run's newest adapter and records events and states there."""
    rc = cfg.rollout
    adapters = (Path(cfg.run.adapter_dir) if cfg.run.adapter_dir else
                RunFolder(run_dir).adapters if run_dir else None)
    return Supervisor(
        pool, adapter_dir=adapters, api_key=key, interval=rc.health_check_interval_s,
        health_timeout=rc.health_timeout_s, unhealthy_after=rc.unhealthy_after,
        max_restarts=rc.max_worker_restarts, startup_timeout=rc.startup_timeout_s,
        events_path=RunFolder(run_dir).faults if run_dir else None,
        status_path=RunFolder(run_dir).worker_status if run_dir else None,
        manifest_path=RunFolder(run_dir).workers if run_dir else None, tag=tag).start()


def _start_pool(pool: WorkerPool, cfg: StageConfig, while_loading=None,
                stop_waiting=None) -> bool:
    """Start the workers; on failure say why, with the settings to change if it was memory.
    ``StartAborted`` (``stop_waiting`` gave a reason) is left to the caller."""
    from launch.planning.preflight import worker_failure_hint

    try:
        pool.start(while_loading, stop_waiting)
        return True
    except WorkerError as exc:
        logs = "".join(w.log_path.read_text(errors="replace") for w in pool.workers
                       if w.log_path.is_file())  # the root cause is often above the tail
        hint = worker_failure_hint(f"{exc}\n{logs}", cfg)
        print(f"[launch] error: {exc}" + (f"\n[launch] {hint}" if hint else ""),
              file=sys.stderr, flush=True)
        return False


def learner_failed(code: int, run_dir: Path, stage: int) -> None:
    from trainer.checkpoint import latest, read_state

    last = latest(run_dir)
    where = (f"the last complete checkpoint is {last} (step {read_state(last)['step']}); "
             f"continue with: make stage{stage} RESUME={run_dir}" if last else
             "no checkpoint was written")
    print(f"[launch] learner exited with code {code}; {where}", file=sys.stderr, flush=True)


def prepare_run(cfg: StageConfig, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, RunFolder(run_dir).config)
    print(f"[launch] run folder {run_dir}", flush=True)


def guarded(body) -> int:
    """Run ``body(cleanups)`` with SIGTERM turned into an exception; run cleanups always."""
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    cleanups: list = []
    try:
        return body(cleanups)
    except (KeyboardInterrupt, Terminated) as exc:
        print(f"[launch] interrupted ({exc or 'Ctrl-C'}); stopping learner and workers",
              file=sys.stderr, flush=True)
        return 130
    finally:
        for fn in reversed(cleanups):
            fn()
        signal.signal(signal.SIGTERM, previous)


def run_stage(cfg: StageConfig, stage: str, module: str, plan: Plan,
              run_dir: Path | None = None, resume: bool = False) -> int:
    """One node does everything: start workers, run the learner, tear down. ``resume``:
    the learner continues from the run folder's latest checkpoint."""
    run_dir = run_dir or run_dir_for(cfg, stage)
    key = api_key(cfg, plan)
    prepare_run(cfg, run_dir)
    return guarded(StageOnNode(cfg, module, plan, run_dir, resume, key).run)


class StageOnNode:
    """A stage on one node: the workers, and the learner ranks while they load (or once
    they are up, when they share GPUs); every part started registers its stop in
    ``cleanups`` (run by :func:`guarded`, newest first)."""

    def __init__(self, cfg: StageConfig, module: str, plan: Plan, run_dir: Path, resume: bool,
                 key: str | None):
        self.cfg, self.module, self.plan, self.run_dir = cfg, module, plan, run_dir
        self.resume, self.key = resume, key
        self.learner: subprocess.Popen | None = None
        self.cleanups: list = []

    def run(self, cleanups: list) -> int:
        cfg, run_dir = self.cfg, self.run_dir
        self.cleanups = cleanups
        self.pool = pool = WorkerPool(worker_specs(cfg, self.plan.local_workers, self.key,
                                                   probe_ports=True),
                                      run_dir / "logs", cfg.rollout.startup_timeout_s)
        cleanups.append(lambda: (pool.stop(), print("[launch] workers stopped", flush=True)))
        t0 = time.perf_counter()
        print(f"[launch] starting {len(pool.workers)} vLLM worker(s): {', '.join(pool.urls)} "
              f"(logs in {run_dir / 'logs'})", flush=True)
        # The ranks load their model while the workers load theirs (the learner waits for
        # them before its first publish): on 2 CPU cores a vLLM start is mostly one
        # single-threaded import after another. Not when they share GPUs: vLLM sizes its
        # KV cache from the memory it finds free. A learner that exits while they load ends
        # the wait at once (a crash, a bad config): the user hears of it now, not once the
        # workers are up.
        early = None if cfg.launch.colocate else \
            (lambda: self.start_learner("while the workers load"))
        try:
            if not _start_pool(pool, cfg, early, self.learner_gone):
                return 1
        except StartAborted:
            code = self.learner.returncode
            print("[launch] the learner exited while the workers loaded; stopping them",
                  file=sys.stderr, flush=True)
            learner_failed(code, run_dir, cfg.stage)
            return code or 1
        pool.write_manifest(RunFolder(run_dir).workers)
        supervisor = supervise(cfg, pool, self.key, run_dir)
        cleanups.append(supervisor.stop)
        print(f"[launch] workers healthy after {time.perf_counter() - t0:.0f}s", flush=True)
        if self.learner is None:
            self.start_learner("now that they are")
        code = self.learner.wait()
        if code != 0:
            learner_failed(code, run_dir, cfg.stage)
        return code

    def start_learner(self, when: str) -> None:
        self.pool.write_manifest(RunFolder(self.run_dir).workers)  # the learner reads the URLs
        print(f"[launch] starting {self.plan.learner.num_processes} learner rank(s) {when}",
              flush=True)
        learner = start_learner(self.cfg, self.run_dir, self.module, self.plan.learner,
                                 probe_port=True, resume=self.resume)
        self.learner = learner
        self.cleanups.append(lambda: stop_tree(learner))

    def learner_gone(self) -> str | None:
        code = self.learner.poll() if self.learner is not None else None
        return None if code is None else f"the learner exited with code {code}"


def serve_workers(cfg: StageConfig, plan: Plan, log_dir: Path) -> int:
    """Start this node's workers and serve until Ctrl-C or SIGTERM (``stonk workers``)."""
    key = api_key(cfg, plan)

    def body(cleanups) -> int:
        pool = WorkerPool(worker_specs(cfg, plan.local_workers, key, probe_ports=False),
                          log_dir, cfg.rollout.startup_timeout_s)
        cleanups.append(lambda: (pool.stop(), print("[workers] stopped", flush=True)))
        if not _start_pool(pool, cfg):
            return 1
        supervisor = supervise(cfg, pool, key, None, tag="[workers]")
        cleanups.append(supervisor.stop)
        print(f"[workers] serving {','.join(pool.urls)} (logs in {log_dir}); Ctrl-C stops",
              flush=True)
        while not supervisor.all_failed():
            time.sleep(2)
        print("[workers] every worker failed and could not be restarted", file=sys.stderr,
              flush=True)
        return 1

    return guarded(body)
