"""The ``stonk`` command line (what ``make stage1``, ``make tiny-model`` ... call).

Heavy imports (torch, vLLM, DeepSpeed) happen inside the subcommands, so ``--help``, config
errors and ``--dry-run`` are instant.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

STAGE_MODULES = {1: ("stage1", "trainer.stage1")}


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

    cfg = load_config(args.config, args.set)
    if args.nproc is not None:
        set_nproc(cfg, args.nproc)
    if cfg.stage not in STAGE_MODULES:
        raise ConfigError(f"{args.config}: stage: stage {cfg.stage} cannot be launched yet")
    return cfg


def _stage(args: argparse.Namespace) -> int:
    from launch.preflight import PreflightError, check
    from trainer.config import ConfigError

    try:
        cfg = _load(args)
        if cfg.stage != args.stage:
            raise ConfigError(f"{args.config}: stage: this command runs stage {args.stage}, "
                              f"the file says stage {cfg.stage}")
        from launch.plan import local_plan
        from launch.runner import dry_run, run_dir_for

        plan = local_plan(cfg)
        name, module = STAGE_MODULES[cfg.stage]
        if args.dry_run:
            print(dry_run(cfg, plan, module, run_dir_for(cfg, name)))
            return 0
        check(cfg, args.config)
    except (ConfigError, PreflightError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from launch.runner import run_stage

    return run_stage(cfg, name, module, plan)


def _slurm(args: argparse.Namespace) -> int:
    from launch.preflight import PreflightError, check
    from trainer.config import ConfigError

    try:
        cfg = _load(args)
        from launch.plan import slurm_plan
        from launch.runner import dry_run, run_dir_for

        plan = slurm_plan(cfg, dict(os.environ))
        name, module = STAGE_MODULES[cfg.stage]
        job = os.environ.get("SLURM_JOB_ID", "local")
        if args.dry_run:
            print(dry_run(cfg, plan, module, run_dir_for(cfg, name, job)))
            return 0
        check(cfg, args.config)
    except (ConfigError, PreflightError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from launch.runner import run_slurm_node

    return run_slurm_node(cfg, name, module, plan, job)


def _workers(args: argparse.Namespace) -> int:
    from launch.preflight import PreflightError, check
    from trainer.config import ConfigError

    try:
        cfg = _load(args)
        from launch.plan import local_plan
        from launch.runner import dry_run

        plan = local_plan(cfg)
        plan.learner = None
        if args.dry_run:
            print(dry_run(cfg, plan, "", Path(".")))
            return 0
        check(cfg, args.config)
    except (ConfigError, PreflightError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from launch.runner import serve_workers

    return serve_workers(cfg, plan, Path(args.log_dir))


def _data(args: argparse.Namespace) -> int:
    from trainer.config import ConfigError, load_config
    from trainer.tasks.stock.problems import DataError

    try:
        cfg = load_config(args.config, args.set)
        from trainer.tasks.stock.summary import render
        from trainer.tasks.stock.task import StockTask

        print(render(StockTask(cfg.data, cfg.reward)))
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _tiny_model(rest: list[str]) -> int:
    from launch.tiny_model import main

    main(rest)
    return 0


def _warmstart(rest: list[str]) -> int:
    from trainer.warmstart import main

    main(rest)
    return 0


PASSTHROUGH = {"tiny-model": _tiny_model, "warmstart": _warmstart}


def _common(p: argparse.ArgumentParser, default_config: str) -> None:
    p.add_argument("--config", default=default_config)
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
    s1.set_defaults(fn=_stage, stage=1)
    sl = sub.add_parser("slurm", help="run this node's part of a Slurm job (under srun)")
    _common(sl, "configs/multinode/stage1.yaml")
    sl.set_defaults(fn=_slurm)
    wk = sub.add_parser("workers", help="serve this node's vLLM workers until stopped (for "
                                        "`accelerate launch -m trainer.stage1 --workers ...`)")
    _common(wk, "configs/stage1.yaml")
    wk.add_argument("--log-dir", default="runs/workers-logs")
    wk.set_defaults(fn=_workers)
    dt = sub.add_parser("data", help="load the data a config names; print splits, skips and "
                                     "baselines")
    dt.add_argument("--config", default="configs/stage1.yaml")
    dt.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field, e.g. --set data.source=synthetic")
    dt.set_defaults(fn=_data)
    sub.add_parser("tiny-model", help="build the embedded Qwen2-architecture model")
    sub.add_parser("warmstart", help="supervised format warm start of a model")
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in PASSTHROUGH:  # these own their arguments
        return PASSTHROUGH[argv[0]](argv[1:])
    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
