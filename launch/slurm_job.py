"""A Slurm job's share on this node, across the attempts Slurm makes of it.

Every node of a job runs ``stonk slurm`` under ``srun`` (``launch/slurm/*.sbatch``). Slurm
requeues a job (preemption, node failure, our own requeue before the time limit) under the
same job id with ``SLURM_RESTART_COUNT`` one higher, so every attempt finds the same run
folder (``<run.output_dir>/<stage>-job<id>``, on a filesystem all nodes see). Node 0 decides
once per attempt how this attempt starts and writes it to ``attempt.json``:
- ``finished``: the latest checkpoint is at ``train.steps``; every node exits 0;
- ``resume``: continue from the latest checkpoint (the same checks as a one-node resume:
  world size, a compatible config);
- ``fresh``: nothing to continue; files an earlier attempt left without a checkpoint are
  moved to ``attempt-<k>/`` first, so they never mix with this attempt's.
The other nodes wait for that decision (``launch.node_wait_s``). Files between nodes name
their attempt (``workers.json``, ``DONE``), so no node acts on an earlier attempt's file.

The time limit: the batch files ask Slurm for SIGUSR1 some minutes before it
(``--signal``). Every process of the step receives it: the launchers and workers ignore it,
the learner ranks finish their step, write a checkpoint and stop (trainer/train.py), and the
first learner node then asks Slurm to requeue the job (``scontrol requeue``): the next
attempt resumes from that checkpoint.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from launch.plan import Plan
from trainer.config import ConfigError, StageConfig
from trainer.run_folder import RunFolder

ATTEMPT_FILE = "attempt.json"
KEEP = ("logs",)  # what a fresh attempt leaves in place (worker nodes write there already)
WARNED: list[int] = []  # SIGUSR1 arrived at this launcher (appended by its handler)


def attempt_number(env: dict[str, str]) -> int:
    """This attempt of the job: 0 first, then one more for each requeue."""
    return int(env.get("SLURM_RESTART_COUNT") or 0)


def learner_world(cfg: StageConfig, plan: Plan) -> int:
    """Learner ranks in the whole job (what a checkpoint must have been written with)."""
    if len(plan.nodes) == 1:
        return cfg.launch.num_processes
    return cfg.launch.num_processes * (len(plan.nodes) - cfg.launch.slurm_worker_nodes)


def wait_for(done: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 1.0) -> None:
    """Wait until ``done()``; after ``timeout_s`` a ConfigError naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise ConfigError(f"waited {timeout_s:.0f}s (launch.node_wait_s) for {what}")
        time.sleep(poll_s)


def read_json(path: Path) -> dict:
    """The file's JSON object, or {} while it is missing or half written."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def set_aside(run_dir: Path, attempt: int) -> Path | None:
    """Move an earlier attempt's files (no checkpoint among them) into ``attempt-<k>/``."""
    held = [p for p in run_dir.iterdir() if p.name not in KEEP
            and not p.name.startswith("attempt-")] if run_dir.is_dir() else []
    if not held:
        return None
    dest = run_dir / f"attempt-{attempt - 1 if attempt else 0}"
    while dest.exists():
        dest = dest.with_name(dest.name + "+")
    dest.mkdir()
    for p in held:
        p.rename(dest / p.name)
    return dest


def decide(cfg: StageConfig, run_dir: Path, plan: Plan, attempt: int,
           resume_asked: bool) -> str:
    """Node 0: how this attempt starts (``finished``, ``resume`` or ``fresh``); recorded in
    ``attempt.json`` for the other nodes."""
    from trainer import checkpoint

    last = checkpoint.latest(run_dir)
    if last is None:
        if resume_asked:
            raise ConfigError(f"--resume {run_dir}: no complete checkpoint to continue from")
        moved = set_aside(run_dir, attempt)
        if moved:
            print(f"[launch] attempt {attempt}: no checkpoint in {run_dir}; the earlier "
                  f"attempt's files are in {moved}, starting fresh", flush=True)
        start = "fresh"
    elif checkpoint.read_state(last)["step"] >= cfg.train.steps:
        start = "finished"
    else:
        try:
            checkpoint.resume_point(run_dir, cfg, learner_world(cfg, plan))
        except checkpoint.CheckpointError as exc:
            raise ConfigError(f"{run_dir}: cannot continue: {exc}") from None
        start = "resume"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / ATTEMPT_FILE).write_text(json.dumps({"attempt": attempt, "start": start}))
    return start


def await_decision(run_dir: Path, attempt: int, timeout_s: float) -> str:
    """Other nodes: node 0's decision for this attempt."""
    path = run_dir / ATTEMPT_FILE
    wait_for(lambda: read_json(path).get("attempt") == attempt, timeout_s,
             f"node 0's start decision for attempt {attempt} ({path})")
    return read_json(path)["start"]


def finished_message(run_dir: Path, cfg: StageConfig) -> str:
    has_report = (run_dir / "report.md").is_file()
    return (f"[launch] {run_dir} already reached step {cfg.train.steps}: nothing to run"
            + ("" if has_report else f"; its final evaluation is missing: make eval RUN={run_dir}"))


def ignore_time_limit_warning(tag: str) -> None:
    """The launcher lives through SIGUSR1 (the learner acts on it), saying so once."""
    def note(signum, frame):
        if not WARNED:
            WARNED.append(signum)
            print(f"{tag} SIGUSR1 (Slurm's time-limit warning): the learner checkpoints at "
                  f"the end of this step and stops", file=sys.stderr, flush=True)

    signal.signal(signal.SIGUSR1, note)


def requeue(job_id: str, step: int | None) -> None:
    """Ask Slurm to run the job again (it resumes from the checkpoint just written)."""
    where = f"from step {step}" if step is not None else "from its latest checkpoint"
    if shutil.which("scontrol") is None:
        print(f"[launch] stopped before the time limit; requeue or resubmit job {job_id}: it "
              f"continues {where}", file=sys.stderr, flush=True)
        return
    proc = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    if proc.returncode == 0:
        print(f"[launch] requeued job {job_id}: the next attempt continues {where}",
              file=sys.stderr, flush=True)
    else:
        print(f"[launch] scontrol requeue {job_id} failed ({proc.stderr.strip()[:200]}); "
              f"resubmit the same batch file: it continues {where}", file=sys.stderr,
              flush=True)


def _after_learner(code: int, cfg: StageConfig, run_dir: Path, job_id: str) -> int:
    """Warned of the time limit and stopped short of the last step: requeue the job."""
    from trainer import checkpoint

    if not WARNED:
        return code
    last = checkpoint.latest(run_dir)
    step = checkpoint.read_state(last)["step"] if last else None
    if step is None or step < cfg.train.steps:
        requeue(job_id, step)
    return code


def run_slurm_node(cfg: StageConfig, stage: str, module: str, plan: Plan, run_dir: Path,
                   attempt: int, resume: bool, job_id: str) -> int:
    """This node's part of attempt ``attempt`` of the job (every node runs this under srun):
    worker nodes serve until the learner writes this attempt's ``DONE``; learner nodes start
    their ranks (continuing from the latest checkpoint when ``resume``)."""
    from launch import runner as r
    from rollout.server import WorkerPool

    tag = f"[launch] {plan.this_node}:"
    ignore_time_limit_warning(tag)
    if len(plan.nodes) == 1:
        code = r.run_stage(cfg, stage, module, plan, run_dir, resume=resume)
        return _after_learner(code, cfg, run_dir, job_id)
    key = r.api_key(cfg, plan)
    wait_s = cfg.launch.node_wait_s
    done = run_dir / r.DONE
    if plan.learner is not None and plan.learner.machine_rank == 0:
        r._prepare(cfg, run_dir)

    def worker_node(cleanups) -> int:
        pool = WorkerPool(r.worker_specs(cfg, plan.local_workers, key, probe_ports=False),
                          run_dir / "logs" / plan.this_node, cfg.rollout.startup_timeout_s)
        cleanups.append(pool.stop)
        pool.start()
        supervisor = r.supervise(cfg, pool, key, None, tag=tag)
        supervisor.adapter_dir = (Path(cfg.run.adapter_dir) if cfg.run.adapter_dir
                                  else RunFolder(run_dir).adapters)  # shared with the learner nodes
        cleanups.append(supervisor.stop)
        bound = sorted({w.bind or w.host for w in plan.local_workers})
        print(f"{tag} serving {', '.join(w.url for w in plan.local_workers)} (bound to "
              f"{', '.join(bound)}) until {done} names attempt {attempt}", flush=True)
        signs = [RunFolder(run_dir).metrics, RunFolder(run_dir).workers]
        since = time.time()  # an earlier attempt's files may be hours old
        while not (done.is_file() and done.read_text().strip() == str(attempt)):
            if supervisor.all_failed():
                print(f"{tag} every worker failed and could not be restarted",
                      file=sys.stderr, flush=True)
                return 1
            last = max([since] + [p.stat().st_mtime for p in signs if p.is_file()])
            if time.time() - last > wait_s:
                print(f"{tag} no learner activity (metrics.jsonl, workers.json) for "
                      f"{wait_s:.0f}s (launch.node_wait_s); stopping the workers",
                      file=sys.stderr, flush=True)
                return 1
            time.sleep(5)
        return 0

    def learner_node(cleanups) -> int:
        urls = [w.url for w in plan.workers]
        manifest = RunFolder(run_dir).workers
        if plan.learner.machine_rank == 0:
            manifest.write_text(json.dumps({"workers": [{"url": u} for u in urls],
                                            "attempt": attempt}, indent=2))
            cleanups.append(lambda: done.write_text(f"{attempt}\n"))
        wait_for(lambda: read_json(manifest).get("attempt") == attempt, wait_s,
                 f"the first learner node's {manifest} for attempt {attempt}")
        # As on one node, the ranks load their model while the worker nodes load theirs (the
        # learner waits for every worker's /health before its first publish); this node
        # watches the same, to name the workers that never came up
        print(f"{tag} starting {plan.learner.num_processes} learner rank(s) while the workers "
              f"start: {', '.join(urls)}", flush=True)
        learner = r._start_learner(cfg, run_dir, module, plan.learner, probe_port=False,
                                   resume=resume)
        cleanups.append(lambda: r._stop_tree(learner))
        t0 = time.monotonic()
        while down := [u for u in urls if not r._healthy(u, key)]:
            if learner.poll() is not None:
                break
            if time.monotonic() - t0 > cfg.rollout.startup_timeout_s:
                print(f"{tag} error: workers not healthy after "
                      f"{cfg.rollout.startup_timeout_s:.0f}s (rollout.startup_timeout_s): "
                      f"{', '.join(down)}; see the worker nodes' logs in {run_dir / 'logs'}",
                      file=sys.stderr, flush=True)
                return 1
            time.sleep(2)
        else:
            print(f"{tag} workers healthy after {time.monotonic() - t0:.0f}s", flush=True)
        code = learner.wait()
        if code != 0 and not WARNED:
            r._learner_failed(code, run_dir, cfg.stage)
        return _after_learner(code, cfg, run_dir, job_id) if plan.learner.machine_rank == 0 \
            else code

    return r._guarded(learner_node if plan.learner is not None else worker_node)
