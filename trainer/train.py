"""The learner ranks' entry point: build the recipe's parts from the config and run it.

Started through ``accelerate launch``, one process per learner rank: by the launcher
(``launch/run/runner.py``), which first starts the vLLM workers and writes ``workers.json`` and
the resolved ``config.yaml`` into the run folder, or by hand with ``--config`` and
``--workers`` next to workers served by ``stonk workers``. The recipe itself, phase by
phase, is ``trainer/recipe.py``; both stages run it (Stage II on the merged Stage I model,
prepared by ``launch/run/stage2.py``): the stage only changes what the config says.

Deliberate simplifications (see trainer/grpo.py for departures in the math):
- One optimizer step per rollout batch unless ``train.updates_per_batch`` > 1.
- Each rank samples its own prompts and groups, so advantages need no cross-rank traffic.
- Rank 0 publishes the adapter; every rank verifies the workers serve it before sampling.

Reliability (docs/reliability.md): ``--resume`` continues from the latest checkpoint
(trainer/checkpoint.py) with the workers serving its adapter before anything is sampled;
per-request seeds make a step's samples independent of which worker serves them, so a
request lost with a worker is retried elsewhere (rollout/client.py) with the same result.
A failed checkpoint write or the loss of every worker stops the run cleanly (exit code 3)
with the previous checkpoint intact. SIGUSR1 (Slurm's warning before the time limit,
``launch/slurm/job.py``) stops it cleanly too, after the current step and its checkpoint.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

import torch

from rollout.adapter_store import AdapterStore
from rollout.client import NoWorkersError, RolloutClient
from rollout.manifest import worker_urls, write_workers
from trainer import checkpoint, trackers
from trainer.config import ConfigError, load_config, mixed_precision, save_config
from trainer.dist import rank_and_world
from trainer.learner import Learner, OutOfMemory
from trainer.parity import ParityError
from trainer.recipe import GRPORecipe, TimeLimitStop
from trainer.run_folder import RunFolder
from trainer.tasks import build_task

# a clean stop: time limit, parity alarm, checkpoint write failed, every worker gone, out of
# memory (launch/run/learner_launch.py passes it on without torchrun's traceback)
EXIT_STOPPED = 3
RANK0_FIRST_S = 2.0  # how long the other ranks wait in a clean stop, so rank 0 says why first


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="GRPO learner ranks (one per process)")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--config", help="config file (default: <run-dir>/config.yaml, "
                                         "written by the launcher)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--workers", help="comma-separated worker URLs (default: "
                                          "<run-dir>/workers.json, written by the launcher)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from <run-dir>/checkpoints/LATEST")
    args = parser.parse_args(argv)
    try:
        train(args)
    except ConfigError as exc:  # bad settings: one clear line (rank 0), no traceback
        if rank_and_world()[0] == 0:
            print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    except (checkpoint.CheckpointError, NoWorkersError, OutOfMemory, ParityError,
            TimeLimitStop) as exc:  # clean stops
        if str(exc) != "see rank 0":  # the other ranks leave the explaining to rank 0
            print(f"[stop] rank {rank_and_world()[0]}: {stop_message(exc, Path(args.run_dir))}",
                  file=sys.stderr, flush=True)
        else:  # and let it go first: torchrun ends every rank at the first exit
            time.sleep(RANK0_FIRST_S)
        sys.exit(EXIT_STOPPED)


def stop_message(exc: Exception, run_dir: Path) -> str:
    if not isinstance(exc, NoWorkersError):
        return str(exc)  # checkpoint errors already say what is intact and what to do
    last = checkpoint.latest(run_dir)
    kept = f"the last checkpoint {last} is intact" if last else "no checkpoint was written yet"
    stage = load_config(RunFolder(run_dir).config).stage
    return (f"{exc}. Training stopped; {kept}. When workers can run again: "
            f"make stage{stage} RESUME={run_dir}")


def train(args: argparse.Namespace) -> None:
    """Build the recipe's parts from the config and run it."""
    run_dir = Path(args.run_dir)
    # Slurm's time-limit warning (launch/slurm/job.py): finish the step, checkpoint, stop.
    # First thing: the launcher starts the ranks with SIGUSR1 ignored until they get here
    warned = threading.Event()
    signal.signal(signal.SIGUSR1, lambda signum, frame: warned.set())

    folder = RunFolder(run_dir)
    cfg = load_config(args.config or folder.config, args.set)
    rc = cfg.rollout
    if cfg.launch.learner_threads:
        torch.set_num_threads(cfg.launch.learner_threads)

    from accelerate import Accelerator

    # precision from the config, not the launch command: accelerate refuses a config file's
    # mixed_precision beside a DeepSpeed config file, so launch/accelerate/*.yaml carry none
    acc = Accelerator(mixed_precision=mixed_precision(cfg),
                      **trackers.accelerator_kwargs(cfg.run.report_to, run_dir))
    rank, world = rank_and_world()
    if rank == 0 and args.config:  # started by hand (accelerate launch): record the inputs
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, folder.config)
    if rank == 0 and args.workers:
        write_workers(folder.workers, [{"url": u} for u in args.workers.split(",")])
    trackers.start(acc, run_dir.name, cfg.to_dict())
    task = build_task(cfg)
    learner = Learner(cfg, acc)
    urls = args.workers.split(",") if args.workers else worker_urls(folder.workers)
    store = AdapterStore(cfg.run.adapter_dir or folder.adapters)
    client = RolloutClient(urls, timeout=rc.request_timeout_s,
                           max_concurrency=rc.max_concurrent_requests,
                           api_key=os.environ.get(rc.api_key_env) or None,
                           retries=rc.request_retries, adapter_root=store.root,
                           status_path=folder.worker_status,
                           wait_for_workers_s=rc.startup_timeout_s,
                           health_timeout=rc.health_timeout_s)
    recipe = GRPORecipe(cfg, run_dir, accelerator=acc, task=task, learner=learner,
                        source=client, store=store, stop_requested=warned)
    if rank == 0:
        d = recipe.record_data()
        sizes = {k: v for k, v in d.items() if k.endswith(("_size", "_up_ratio", "source"))}
        print(f"{recipe.tag} {world} learner rank(s), {len(urls)} worker(s), data {sizes}",
              flush=True)
    recipe.run(recipe.start(args.resume))
    if rank == 0:
        recipe.finish()
    acc.wait_for_everyone()
    acc.end_training()


if __name__ == "__main__":
    main()
