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
from dataclasses import dataclass
from pathlib import Path

from common.files import read_json
from launch.run.plan import Plan
from rollout.manifest import attempt_of, write_workers
from rollout.server import health_ok
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


@dataclass
class SlurmNode:
    """This node's part of one attempt of the job, and what its two roles read."""

    cfg: StageConfig
    module: str
    plan: Plan
    run_dir: Path
    attempt: int
    resume: bool
    job_id: str
    key: str | None
    tag: str

    @property
    def done(self) -> Path:
        """The learner's end of this attempt, for the worker nodes: it names the attempt."""
        from launch.run.runner import DONE

        return self.run_dir / DONE


def run_slurm_node(cfg: StageConfig, stage: str, module: str, plan: Plan, run_dir: Path,
                   attempt: int, resume: bool, job_id: str) -> int:
    """This node's part of attempt ``attempt`` of the job (every node runs this under srun):
    worker nodes serve until the learner writes this attempt's ``DONE``; learner nodes start
    their ranks (continuing from the latest checkpoint when ``resume``)."""
    from launch.run import runner as r

    tag = f"[launch] {plan.this_node}:"
    ignore_time_limit_warning(tag)
    if len(plan.nodes) == 1:
        code = r.run_stage(cfg, stage, module, plan, run_dir, resume=resume)
        return _after_learner(code, cfg, run_dir, job_id)
    node = SlurmNode(cfg, module, plan, run_dir, attempt, resume, job_id, r.api_key(cfg, plan),
                     tag)
    if plan.learner is not None and plan.learner.machine_rank == 0:
        r.prepare_run(cfg, run_dir)
    role = learner_node if plan.learner is not None else worker_node
    return r.guarded(lambda cleanups: role(node, cleanups))


def worker_node(node: SlurmNode, cleanups: list) -> int:
    """Serve this node's workers until the learner ends the attempt (or shows no sign of
    life for launch.node_wait_s, or every worker failed for good)."""
    from launch.run import runner as r
    from rollout.server import WorkerPool

    cfg, plan, run_dir, tag = node.cfg, node.plan, node.run_dir, node.tag
    pool = WorkerPool(r.worker_specs(cfg, plan.local_workers, node.key, probe_ports=False),
                      run_dir / "logs" / plan.this_node, cfg.rollout.startup_timeout_s)
    cleanups.append(pool.stop)
    pool.start()
    supervisor = r.supervise(cfg, pool, node.key, None, tag=tag)
    supervisor.adapter_dir = (Path(cfg.run.adapter_dir) if cfg.run.adapter_dir
                              else RunFolder(run_dir).adapters)  # shared with the learner nodes
    cleanups.append(supervisor.stop)
    bound = sorted({w.bind or w.host for w in plan.local_workers})
    print(f"{tag} serving {', '.join(w.url for w in plan.local_workers)} (bound to "
          f"{', '.join(bound)}) until {node.done} names attempt {node.attempt}", flush=True)
    signs = [RunFolder(run_dir).metrics, RunFolder(run_dir).workers]
    since = time.time()  # an earlier attempt's files may be hours old
    wait_s = cfg.launch.node_wait_s
    while not (node.done.is_file() and node.done.read_text().strip() == str(node.attempt)):
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


def learner_node(node: SlurmNode, cleanups: list) -> int:
    """Start this node's learner ranks (the first learner node names the attempt's workers
    and, at its end, writes DONE); said which workers never came up if they did not."""
    from launch.run import runner as r

    cfg, plan, run_dir, tag = node.cfg, node.plan, node.run_dir, node.tag
    urls = [w.url for w in plan.workers]
    manifest = RunFolder(run_dir).workers
    if plan.learner.machine_rank == 0:
        write_workers(manifest, [{"url": u} for u in urls], attempt=node.attempt)
        cleanups.append(lambda: node.done.write_text(f"{node.attempt}\n"))
    wait_for(lambda: attempt_of(manifest) == node.attempt, cfg.launch.node_wait_s,
             f"the first learner node's {manifest} for attempt {node.attempt}")
    # As on one node, the ranks load their model while the worker nodes load theirs (the
    # learner waits for every worker's /health before its first publish); this node
    # watches the same, to name the workers that never came up
    print(f"{tag} starting {plan.learner.num_processes} learner rank(s) while the workers "
          f"start: {', '.join(urls)}", flush=True)
    learner = r.start_learner(cfg, run_dir, node.module, plan.learner, probe_port=False,
                               resume=node.resume)
    cleanups.append(lambda: r.stop_tree(learner))
    if not workers_up(node, urls, learner):
        return 1
    code = learner.wait()
    if code != 0 and not WARNED:
        r.learner_failed(code, run_dir, cfg.stage)
    return _after_learner(code, cfg, run_dir, node.job_id) if plan.learner.machine_rank == 0 \
        else code


def workers_up(node: SlurmNode, urls: list[str], learner) -> bool:
    """Wait until every worker answers /health (True), the learner exits first (True: its
    exit code tells) or rollout.startup_timeout_s passes (False, naming those still down)."""

    timeout, t0 = node.cfg.rollout.startup_timeout_s, time.monotonic()
    while down := [u for u in urls if not health_ok(u, node.key)]:
        if learner.poll() is not None:
            return True
        if time.monotonic() - t0 > timeout:
            print(f"{node.tag} error: workers not healthy after {timeout:.0f}s "
                  f"(rollout.startup_timeout_s): {', '.join(down)}; see the worker nodes' "
                  f"logs in {node.run_dir / 'logs'}", file=sys.stderr, flush=True)
            return False
        time.sleep(2)
    print(f"{node.tag} workers healthy after {time.monotonic() - t0:.0f}s", flush=True)
    return True
