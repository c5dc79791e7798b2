"""The ``stonk`` command line (what ``make stage1``, ``make tiny-model`` ... call).

Heavy imports (torch, vLLM, DeepSpeed) happen inside the subcommands, so ``--help``, config
errors and ``--dry-run`` are instant.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from launch.offline import commands as cli_adapter
from trainer.run_folder import RunFolder

STAGE_MODULES = {1: ("stage1", "trainer.train"), 2: ("stage2", "trainer.train")}


def set_nproc(cfg, nproc: int) -> None:
    """NPROC learner ranks per node. On GPUs they take the NPROC indices right after the
    workers' GPUs (from 0 when colocated), so workers and learners never overlap by accident."""
    from trainer.config import ConfigError, validate

    if nproc < 1:
        raise ConfigError(f"NPROC={nproc}: must be at least 1")
    cfg.launch.num_processes = nproc
    if cfg.launch.device == "cuda" and cfg.launch.learner_gpus:
        la = cfg.launch
        start = 0 if la.colocate or not la.worker_gpus else max(la.worker_gpus) + 1
        la.learner_gpus = list(range(start, start + nproc))
    validate(cfg)


def _load(args: argparse.Namespace):
    from trainer.config import ConfigError, load_config

    if getattr(args, "resume", None):
        if args.config:
            raise ConfigError("--resume continues with the run's own config.yaml; change "
                              "fields with --set (e.g. --set train.steps=N), not --config")
        args.config = str(RunFolder(args.resume).config)
    args.config = args.config or args.default_config
    cfg = load_config(args.config, args.set)
    if args.nproc is not None:
        set_nproc(cfg, args.nproc)
    if cfg.stage not in STAGE_MODULES:
        raise ConfigError(f"{args.config}: stage: stage {cfg.stage} cannot be launched yet")
    return cfg


def _stage(args: argparse.Namespace) -> int:
    from launch.planning.preflight import PreflightError, check
    from trainer.config import ConfigError

    try:
        cfg = _load(args)
        if cfg.stage != args.stage:
            raise ConfigError(f"{args.config}: stage: this command runs stage {args.stage}, "
                              f"the file says stage {cfg.stage}")
        from launch.run.plan import local_plan
        from launch.run.runner import api_key, dry_run, fresh_run_problem, run_dir_for

        plan = local_plan(cfg)
        name, module = STAGE_MODULES[cfg.stage]
        run_dir = Path(args.resume) if args.resume else run_dir_for(cfg, name)
        if args.dry_run:
            print(dry_run(cfg, plan, module, run_dir))
            return 0
        api_key(cfg, plan)  # before anything starts or merges
        if args.resume:
            _check_resume(cfg, run_dir)
        elif problem := fresh_run_problem(run_dir, name):
            raise ConfigError(problem)
        elif cfg.stage == 2:
            cfg = _stage2_prepare(cfg, args, run_dir)
        check(cfg, args.config)
    except (ConfigError, PreflightError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from launch.run.runner import run_stage

    return run_stage(cfg, name, module, plan, run_dir, resume=bool(args.resume))


def _check_resume(cfg, run_dir: Path) -> None:
    """Before anything starts: a complete checkpoint, the same world size, a compatible
    config and steps left (trainer/checkpoint.py repeats this in the learner)."""
    from trainer.checkpoint import CheckpointError, resume_point
    from trainer.config import ConfigError

    try:
        ckpt, state = resume_point(run_dir, cfg, cfg.launch.num_processes)
    except CheckpointError as exc:
        raise ConfigError(f"--resume {run_dir}: {exc}") from None
    print(f"[launch] resuming {run_dir} from {ckpt.name} (step {state['step']} of "
          f"{cfg.train.steps})", flush=True)


def _stage2_prepare(cfg, args: argparse.Namespace, run_dir: Path):
    """Gate check and merge of the Stage I model (once: node 0 under Slurm)."""
    from launch.run.stage2 import prepare
    from trainer.config import ConfigError

    if not args.stage1_run:
        raise ConfigError("stage 2 needs the Stage I run folder: --stage1-run RUN "
                          "(make stage2 STAGE1=RUN)")
    stage1 = Path(args.stage1_run)
    if os.environ.get("SLURM_NODEID", "0") == "0":
        return prepare(cfg, stage1, run_dir, args.force)
    from launch.slurm.job import wait_for  # other nodes: node 0's merge, on the shared disk

    wait_for(RunFolder(run_dir).stage2.is_file, cfg.launch.node_wait_s,
             f"node 0's Stage II merge ({run_dir / 'stage2.json'})", poll_s=5.0)
    cfg.model.name_or_path = str(RunFolder(run_dir).base)
    return cfg


def _slurm(args: argparse.Namespace) -> int:
    """This node's part of one attempt of a Slurm job (launch/slurm/job.py): node 0 decides
    whether the attempt starts fresh, resumes the run folder's latest checkpoint or has
    nothing left to do; the other nodes follow that decision."""
    from launch.planning.preflight import PreflightError, check
    from trainer.config import ConfigError

    try:
        if args.resume:  # the run's own config.yaml, whatever the batch file passes
            args.config = None
        cfg = _load(args)
        from launch.run.plan import slurm_plan
        from launch.run.runner import api_key, dry_run, run_dir_for
        from launch.slurm import job as slurm_job

        env = dict(os.environ)
        name, module = STAGE_MODULES[cfg.stage]
        job = env.get("SLURM_JOB_ID", "local")
        run_dir = Path(args.resume) if args.resume else run_dir_for(cfg, name, job)
        cfg = _run_config(args, run_dir, cfg)  # a run with a checkpoint: its own config
        plan = slurm_plan(cfg, env)
        if args.dry_run:
            print(dry_run(cfg, plan, module, run_dir))
            return 0
        api_key(cfg, plan)
        attempt = slurm_job.attempt_number(env)
        if int(env["SLURM_NODEID"]) == 0:
            start = slurm_job.decide(cfg, run_dir, plan, attempt, bool(args.resume))
        else:
            start = slurm_job.await_decision(run_dir, attempt, cfg.launch.node_wait_s)
        if start == "finished":
            print(slurm_job.finished_message(run_dir, cfg), flush=True)
            return 0
        if start == "resume":
            print(f"[launch] attempt {attempt}: continuing {run_dir} from its latest "
                  f"checkpoint", flush=True)
        elif cfg.stage == 2:
            cfg = _stage2_prepare(cfg, args, run_dir)
        check(cfg, args.config)
    except (ConfigError, PreflightError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return slurm_job.run_slurm_node(cfg, name, module, plan, run_dir, attempt,
                                    start == "resume", job)


def _run_config(args: argparse.Namespace, run_dir: Path, cfg):
    """A run folder with a checkpoint continues with its own config.yaml (and --set)."""
    from trainer.checkpoint import latest
    from trainer.config import load_config

    if not RunFolder(run_dir).config.is_file() or latest(run_dir) is None:
        return cfg
    cfg = load_config(RunFolder(run_dir).config, args.set)
    if args.nproc is not None:
        set_nproc(cfg, args.nproc)
    return cfg


def _workers(args: argparse.Namespace) -> int:
    from launch.planning.preflight import PreflightError, check
    from trainer.config import ConfigError

    try:
        cfg = _load(args)
        from launch.run.plan import local_plan
        from launch.run.runner import api_key, dry_run

        plan = local_plan(cfg)
        plan.learner = None
        if args.dry_run:
            print(dry_run(cfg, plan, "", Path(".")))
            return 0
        api_key(cfg, plan)
        check(cfg, args.config)
    except (ConfigError, PreflightError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from launch.run.runner import serve_workers

    return serve_workers(cfg, plan, Path(args.log_dir))


def _data(args: argparse.Namespace) -> int:
    from trainer.config import ConfigError, load_config
    from trainer.tasks.hub import DataError
    from trainer.tasks.registry import task_usage

    try:
        print(task_usage(load_config(args.config, args.set)).data_summary())
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _plan(args: argparse.Namespace) -> int:
    from trainer.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.set)
        if args.nproc is not None:
            set_nproc(cfg, args.nproc)
        from launch.planning.memory import plan_memory

        plan = plan_memory(cfg, args.gpu_memory)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"memory plan for {args.config}\n{plan.render()}")
    return 0 if plan.fits else 1


def _passthrough(module: str):
    """A command that owns its arguments: ``module.main(rest)``, imported only when run (its
    --help too stays light); None from main counts as success."""
    def run(rest: list[str]) -> int:
        return importlib.import_module(module).main(rest) or 0

    return run


PASSTHROUGH = {"tiny-model": _passthrough("launch.embedded.tiny_model"),
               "warmstart": _passthrough("trainer.tasks.stock.warmstart"),
               "demo": _passthrough("launch.run.demo")}


def _stage2_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stage1-run", help="Stage II: the Stage I run folder to start from")
    p.add_argument("--force", action="store_true",
                   help="Stage II: start although the Stage I gate failed (recorded)")


def _resume_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", metavar="RUN", default=None,
                   help="continue RUN from its latest checkpoint, with its config.yaml "
                        "(--set may change e.g. train.steps)")


def _common(p: argparse.ArgumentParser, default_config: str) -> None:
    p.add_argument("--config", default=None, help=f"config file (default: {default_config})")
    p.set_defaults(default_config=default_config, resume=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.steps=3 (repeatable)")
    p.add_argument("--nproc", type=int, default=None,
                   help="learner ranks (per node): sets launch.num_processes")
    p.add_argument("--dry-run", action="store_true",
                   help="print the processes, devices, ports and commands; start nothing")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="stonk", description="Stonk-Trainer: GRPO for market LLMs")
    sub = p.add_subparsers(dest="cmd", required=True)
    s1 = sub.add_parser("stage1", help="run Stage I on this node (vLLM workers + learner)")
    _common(s1, "configs/stage1.yaml")
    _resume_arg(s1)
    s1.set_defaults(fn=_stage, stage=1)
    s2 = sub.add_parser("stage2", help="run Stage II from a Stage I run that passed the gate")
    _common(s2, "configs/stage2.yaml")
    _stage2_args(s2)
    _resume_arg(s2)
    s2.set_defaults(fn=_stage, stage=2)
    sl = sub.add_parser("slurm", help="run this node's part of a Slurm job (under srun); a "
                        "requeued job continues from its run folder's latest checkpoint")
    _common(sl, "configs/multinode/stage1.yaml")
    _stage2_args(sl)
    _resume_arg(sl)
    sl.set_defaults(fn=_slurm)
    cli_adapter.add_parsers(sub)
    wk = sub.add_parser("workers", help="serve this node's vLLM workers until stopped (for "
                                        "`accelerate launch -m trainer.train --workers ...`)")
    _common(wk, "configs/stage1.yaml")
    wk.add_argument("--log-dir", default="runs/workers-logs")
    wk.set_defaults(fn=_workers)
    dt = sub.add_parser("data", help="load the data a config names; print splits, skips and "
                                     "baselines")
    dt.add_argument("--config", default="configs/stage1.yaml")
    dt.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field, e.g. --set data.source=synthetic")
    dt.set_defaults(fn=_data)
    pl = sub.add_parser("plan", help="memory per GPU of a config's workers and learner ranks "
                                     "against the GPUs' memory; exit 1 if it does not fit")
    pl.add_argument("--config", default="configs/stage1.yaml")
    pl.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field, e.g. --set train.micro_batch_size=4")
    pl.add_argument("--nproc", type=int, default=None, help="learner ranks (per node)")
    pl.add_argument("--gpu-memory", type=float, default=None, metavar="GB",
                    help="GiB per GPU to plan for (default: this machine's GPUs, else the "
                         "config's launch.gpu_memory_gb)")
    pl.set_defaults(fn=_plan)
    sub.add_parser("demo", help="both stages end to end on the embedded defaults (make demo)")
    sub.add_parser("tiny-model", help="build the embedded Qwen2-architecture model")
    sub.add_parser("warmstart", help="supervised format warm start of a model")
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in PASSTHROUGH:  # these own their arguments
        return PASSTHROUGH[argv[0]](argv[1:])
    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
