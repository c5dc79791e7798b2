"""The ``stonk`` command line (what ``make stage1``, ``make tiny-model`` ... call).

Heavy imports (torch, vLLM, DeepSpeed) happen inside the subcommands, so ``--help`` and
config errors are instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _stage(args: argparse.Namespace) -> int:
    from launch.preflight import PreflightError, check
    from trainer.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.set)
        if cfg.stage != 1:
            raise ConfigError(f"{args.config}: stage: this command runs stage 1, "
                              f"the file says stage {cfg.stage}")
        if args.dry_run:
            from launch.runner import learner_command, worker_specs

            for spec in worker_specs(cfg):
                print("worker:", " ".join(spec.command()))
            print("learner:", " ".join(learner_command(cfg, Path("<run-dir>"),
                                                       "trainer.stage1")))
            return 0
        check(cfg, args.config)
    except (ConfigError, PreflightError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from launch.runner import run_stage

    return run_stage(cfg, "stage1", "trainer.stage1")


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="stonk", description="Stonk-Trainer: GRPO for market LLMs")
    sub = p.add_subparsers(dest="cmd", required=True)
    s1 = sub.add_parser("stage1", help="run Stage I (vLLM workers + DeepSpeed learner)")
    s1.add_argument("--config", default="configs/stage1.yaml")
    s1.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field, e.g. --set train.steps=3 (repeatable)")
    s1.add_argument("--dry-run", action="store_true",
                    help="print the worker and learner commands, start nothing")
    s1.set_defaults(fn=_stage)
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
