"""The GRPO recipe for both stages. Read top to bottom: config, setup, loop, checkpoint,
final evaluation (and, after Stage I, the promotion gate), report.

Stage I trains a LoRA on the base model with the balanced set; Stage II runs the same recipe
on the merged Stage I model (prepared by ``launch/stage2.py``) with its own config: natural
distribution, smaller LoRA, lower learning rate, enhanced reward. The stage only changes
what the config says, never the code path.

Started through ``accelerate launch``, one process per learner rank: by the launcher
(``launch/runner.py``), which first starts the vLLM workers and writes ``workers.json`` and
the resolved ``config.yaml`` into the run folder, or by hand with ``--config`` and
``--workers`` next to workers served by ``stonk workers``. Machinery lives in modules; this
file is the recipe.

Deliberate simplifications (see trainer/grpo.py for departures in the math):
- One optimizer step per rollout batch (no PPO epochs): the old policy is the current one.
- Each rank samples its own prompts and groups, so advantages need no cross-rank traffic.
- Rank 0 publishes the adapter; every rank verifies the workers serve it before sampling.

Reliability (docs/reliability.md): ``--resume`` continues from the latest checkpoint
(trainer/checkpoint.py) with the workers serving its adapter before anything is sampled;
per-request seeds make a step's samples independent of which worker serves them, so a
request lost with a worker is retried elsewhere (rollout/client.py) with the same result.
A failed checkpoint write or the loss of every worker stops the run cleanly (exit code 3)
with the previous checkpoint intact. SIGUSR1 (Slurm's warning before the time limit,
``launch/slurm_job.py``) stops it cleanly too, after the current step and its checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import threading
from pathlib import Path

import torch

from rollout.adapter_store import AdapterStore
from rollout.client import NoWorkersError, RolloutClient
from trainer import checkpoint, trackers
from trainer.config import ConfigError, load_config, mixed_precision, save_config
from trainer.dist import mean_across_ranks, rank_and_world
from trainer.evaluate import eval_samples, keep_best, run_eval, save_eval, scalar_metrics
from trainer.learner import Learner, OutOfMemory
from trainer.metrics import MetricsWriter, PhaseTimer, Progress, gpu_memory
from trainer.parity import ParityAlarm, ParityError
from trainer.rollouts import (
    Background,
    PromptSampler,
    StepRollout,
    anchor_batch,
    build_batch,
    informative_groups,
    sample_groups,
    write_rollouts,
)
from trainer.run_folder import RunFolder
from trainer.tasks import build_task

EXIT_STOPPED = 3  # a clean stop: checkpoint write failed, every worker gone, out of memory


class TimeLimitStop(RuntimeError):
    """SIGUSR1 arrived: the run stopped after a step, with that step's checkpoint."""


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
    run_dir = Path(args.run_dir)
    # Slurm's time-limit warning (launch/slurm_job.py): finish the step, checkpoint, stop.
    # First thing: the launcher starts the ranks with SIGUSR1 ignored until they get here
    warned = threading.Event()
    signal.signal(signal.SIGUSR1, lambda signum, frame: warned.set())

    # ---- config
    folder = RunFolder(run_dir)
    cfg = load_config(args.config or folder.config, args.set)
    tc, rc = cfg.train, cfg.rollout
    if cfg.launch.learner_threads:
        torch.set_num_threads(cfg.launch.learner_threads)

    # ---- setup: accelerator, task, learner, workers, adapter store
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
        folder.workers.write_text(json.dumps(
            {"workers": [{"url": u} for u in args.workers.split(",")]}, indent=2))
    trackers.start(acc, run_dir.name, cfg.to_dict())
    task = build_task(cfg)
    sampler = PromptSampler(task.split("train")[rank::world], seed=tc.seed + rank,
                            key=task.stratum)
    learner = Learner(cfg, acc)
    urls = (args.workers.split(",") if args.workers else
            [w["url"] for w in json.loads(folder.workers.read_text())["workers"]])
    store = AdapterStore(cfg.run.adapter_dir or folder.adapters)
    client = RolloutClient(urls, timeout=rc.request_timeout_s,
                           max_concurrency=rc.max_concurrent_requests,
                           api_key=os.environ.get(rc.api_key_env) or None,
                           retries=rc.request_retries, adapter_root=store.root,
                           status_path=folder.worker_status,
                           wait_for_workers_s=rc.startup_timeout_s,
                           health_timeout=rc.health_timeout_s)
    rollouts_path = folder.rollouts(rank)
    tag = f"[stage{cfg.stage}]"
    watch = eval_samples(task, cfg, cfg.eval.split, cfg.eval.num_samples)  # fixed eval subset
    if rank == 0:
        d = task.describe()
        sizes = {k: v for k, v in d.items() if k.endswith(("_size", "_up_ratio", "source"))}
        print(f"{tag} {world} learner rank(s), {len(urls)} worker(s), data {sizes}", flush=True)

    def publish(version: int) -> None:
        """Rank 0 stores v(version) and loads it on the workers; then every rank makes sure
        every live worker serves it (also one back from a restart) before sampling."""
        state = learner.adapter_state()  # collective under ZeRO-3
        # every rank's sampling is over before the workers' adapter changes (with
        # rollout.overlap a rank may still be sampling when rank 0 is done training)
        acc.wait_for_everyone()
        if rank == 0:
            store.publish(version, lambda d: learner.save_adapter(d, state))
            client.sync(version, store.path(version))
            store.prune(cfg.run.keep_adapter_versions, version)
        acc.wait_for_everyone()
        client.sync(version, store.path(version))

    # ---- start: a fresh adapter v0, or everything from the latest checkpoint
    # started while the workers load (launch.runner). Each rank polls for itself (one GET a
    # second): a barrier instead would wait under the process group's timeout, which can be
    # shorter than rollout.startup_timeout_s
    client.wait_ready(rc.startup_timeout_s)
    start = 0
    if args.resume:
        ckpt, _ = checkpoint.resume_point(run_dir, cfg, world)
        start = checkpoint.load(ckpt, cfg, learner=learner, sampler=sampler, rank=rank)["step"]
        checkpoint.rollback(run_dir, ckpt, start, rank, store)
        acc.wait_for_everyone()
        client.sync(start, store.path(start))  # the checkpoint's adapter, before any sample
        if rank == 0:
            print(f"{tag} resumed from {ckpt} at step {start}; the workers serve its adapter "
                  f"as v{start}", flush=True)
    else:
        publish(0)  # v0: the fresh adapter (identical to the base), so workers serve the policy
    metrics = MetricsWriter(folder.metrics) if rank == 0 else None
    progress = Progress(tc.steps, start_step=start)

    # ---- loop
    def rollout(step: int, samples: list) -> StepRollout:
        """Sample and score step ``step``'s groups under the adapter the workers serve now
        (with rollout.dynamic_sampling, drawing more prompts for groups without a gradient);
        per-request seeds depend on (train.seed, step, rank, round) only."""
        def draw(chosen: list, round_: int):
            seed = ((tc.seed * 1_000_003 + step * 7_919 + rank * 104_729 + round_ * 15_485_863)
                    % 2**31 if rc.seed_requests else None)
            return sample_groups(task, chosen, client, learner.tokenizer,
                                 group_size=rc.group_size, max_tokens=rc.max_tokens,
                                 temperature=rc.temperature, top_p=rc.top_p, seed=seed,
                                 overlong_buffer=cfg.reward.overlong_buffer,
                                 overlong_coef=cfg.reward.overlong_coef)

        stats = {}
        if rc.dynamic_sampling:
            samples, drawn, stats = informative_groups(samples, draw, sampler.next,
                                                       rc.max_extra_draws)
        else:
            drawn = draw(samples, 0)
        batch = build_batch(task, learner.tokenizer, drawn, group_size=rc.group_size,
                            advantage=tc.advantage, pad_id=learner.pad_id,
                            mark_decisions=tc.pg_tokens == "decision")
        return StepRollout(samples, batch, drawn[2], drawn[1], stats)

    # rollout.overlap: the next step's batch, sampled while this step trained (samples,
    # result, seconds it took); None at the start, after a resume, or without overlap
    ready = None
    parity = ParityAlarm(rc.max_logp_gap, rc.logp_gap_steps)
    for step in range(start + 1, tc.steps + 1):
        timer = PhaseTimer()
        if ready is None:
            with timer("generate"):
                got = rollout(step, sampler.next(tc.prompts_per_rank))
        else:
            got, timer.seconds["generate"] = ready
            ready = None
        samples, batch, components, groups = got.samples, got.batch, got.components, got.groups
        position = sampler.snapshot()  # what a checkpoint of this step records
        prefetch = None
        if rc.overlap and step < tc.steps:  # sample step + 1 under v(step - 1) meanwhile
            upcoming = sampler.next(tc.prompts_per_rank)  # extra draws: in the thread
            prefetch = Background(lambda s=step + 1, x=upcoming: rollout(s, x))
        with timer("reward"):
            local = {"reward/mean": float(batch.rewards.mean()),
                     "reward/std": float(batch.rewards.std()),
                     "completion_tokens": float(batch.completion_mask.sum(1).mean()),
                     "truncated_frac": sum(c.finish_reason == "length" for g in groups
                                           for c in g) / len(batch)}
            for name in components[0]:
                local[f"reward/{name}"] = sum(c[name] for c in components) / len(components)
            # counts: this rank's times the world size, so the mean below is the sum
            local.update({k: v * world for k, v in got.stats.items()})
            diags = [task.diagnostics(s, c.text) for s, g in zip(samples, groups, strict=True)
                     for c in g]
            local.update({f"task/{k}": v for k, v in task.aggregate(diags).items()})
            if cfg.run.log_rollouts_every and step % cfg.run.log_rollouts_every == 0:
                write_rollouts(rollouts_path, step, samples, batch, groups, components)
        with timer("learner"):
            # the anchor's random choices depend only on (seed, rank, step): resumable
            anchor = (anchor_batch(task, samples, batch.prompt_ids[::batch.group_size],
                                   learner.tokenizer, learner.pad_id,
                                   random.Random(f"anchor:{tc.seed}:{rank}:{step}"))
                      if tc.anchor_coef > 0 or tc.balance_coef > 0 else None)
            local["lr"] = learner.set_step(step)
            local.update(learner.train_step(batch, anchor))
        if prefetch is not None:
            with timer("rollout_wait"):  # the part of the next batch's sampling not hidden
                ready = (prefetch.result(), prefetch.seconds)
        with timer("sync"):
            publish(step)
        local.update(timer.as_metrics())
        local.update(gpu_memory(learner.device))  # the mean over ranks of each rank's peak
        # faults/*: this rank's counts times the world size, so the mean below is the sum
        local.update({f"faults/{k}": float(v * world) for k, v in client.take_faults().items()})
        local["stop_requested"] = float(warned.is_set())
        record = mean_across_ranks(local, learner.device)
        # any rank warned: all stop after this step (a rank may have missed the signal)
        stop_now = record.pop("stop_requested") > 0 and step < tc.steps
        # the same gap on every rank: all stop together, after rank 0 has logged the step
        mismatch = parity.update(step, record["logp_gap"])
        if rank == 0:
            record.update(step=step, adapter_version=step,
                          sampled_with_version=int(batch.adapter_version.max()),
                          **supervisor_counts(folder.worker_status))
            if (cfg.eval.every_steps and step % cfg.eval.every_steps == 0 and not mismatch
                    and not stop_now):
                with timer("eval"):
                    ev = run_eval(task, watch, client, learner.tokenizer, cfg)["metrics"]
                record.update(scalar_metrics(ev, "eval/"))
                record["time/eval"] = round(timer.seconds["eval"], 4)
                value = ev.get(cfg.eval.best_metric)
                if isinstance(value, (int, float)) and keep_best_or_stop(
                        cfg, run_dir, store.path(step), step, float(value)):
                    record["eval/new_best"] = 1.0
            metrics.write(record)
            trackers.log(acc, record, step)
            print(progress.line(step, record), flush=True)
            if step == 1:
                print(base_gap_line(cfg, record["logp_gap"]), flush=True)
        if mismatch:
            raise mismatch if rank == 0 else ParityError("see rank 0")

        # ---- checkpoint (collective: every rank writes its part of the optimizer state)
        if step % cfg.run.checkpoint_every == 0 or step == tc.steps or stop_now:
            checkpoint.save(cfg, run_dir, step, learner=learner, sampler=position,
                            adapter_dir=store.path(step), rank=rank, world=world)
        acc.wait_for_everyone()
        if stop_now:
            raise TimeLimitStop("see rank 0") if rank else TimeLimitStop(
                f"SIGUSR1 (Slurm's time-limit warning): stopped after step {step} with its "
                f"checkpoint; the requeued job continues from it (or: make stage{cfg.stage} "
                f"RESUME={run_dir})")

    if rank == 0:
        served = {url: client.served_adapter_path(url) for url in client.live()}
        folder.served_adapters.write_text(json.dumps(served, indent=2))
        metrics.close()
        print(f"{tag} done: {tc.steps} steps; final evaluation", flush=True)
        finish(cfg, task, client, learner.tokenizer, run_dir, tag)
    acc.wait_for_everyone()
    acc.end_training()


def keep_best_or_stop(cfg, run_dir: Path, adapter: Path, step: int, value: float) -> bool:
    try:
        return keep_best(run_dir, adapter, step, value, cfg.eval.best_metric)
    except OSError as exc:
        raise checkpoint.CheckpointError(checkpoint.failure_message(
            cfg, run_dir, step, RunFolder(run_dir).best, str(exc))) from None


def base_gap_line(cfg, gap: float) -> str:
    """Step 1 samples under v0, whose LoRA is still zero: the learner/worker log-prob gap is
    then the gap between the two bases (a 4-bit base quantizes what the workers serve in
    full precision), which the importance weight (train.is_cap) corrects for all run long."""
    base = "nf4 4-bit" if cfg.model.load_in_4bit else cfg.model.dtype
    return (f"[stage{cfg.stage}] step 1: learner ({base} base) vs workers ({cfg.rollout.dtype}) "
            f"log-prob gap {gap:.2e} per token, the adapter still zero (logp_gap)")


def supervisor_counts(status: Path) -> dict[str, float]:
    """Cumulative worker faults the launcher's supervisor saw (died, hung, restarted, ...)."""
    try:
        counts = json.loads(status.read_text())["counts"]
    except (OSError, ValueError, KeyError):
        return {}
    return {f"faults/workers_{k}": float(v) for k, v in counts.items()}


def finish(cfg, task, client, tokenizer, run_dir: Path, tag: str) -> None:
    """Final evaluation on eval.split and test, the gate after Stage I, the report; then
    the test splits of eval.also_on's sources."""
    from trainer.evaluate import evaluate_on_source
    from trainer.gate import check_gate, write_gate

    folder = RunFolder(run_dir)
    evals = {}
    for split in dict.fromkeys([cfg.eval.split, "test"]):
        samples = eval_samples(task, cfg, split, cfg.eval.final_samples)
        if samples:
            evals[split] = run_eval(task, samples, client, tokenizer, cfg)
            save_eval(folder.eval_file(split), evals[split])
    gate = None
    if cfg.stage == 1:
        rows = [json.loads(x) for x in folder.metrics.read_text().splitlines()]
        gate = check_gate(rows, evals.get(cfg.eval.split, {}).get("metrics", {}), cfg.gate)
        write_gate(run_dir, gate)
        print(f"{tag} promotion gate: {'PASSED' if gate['passed'] else 'not passed'} "
              f"({run_dir / 'gate.json'})", flush=True)
    report = task.write_report(run_dir, evals, gate=gate,
                               notes=getattr(task, "report_notes", lambda: [])())
    for split, ev in evals.items():
        m = ev["metrics"]
        print(f"{tag} {split}: accuracy {m.get('accuracy', float('nan')):.3f}, format valid "
              f"{m.get('format_valid', float('nan')):.3f}, n={m.get('n')}", flush=True)
    print(f"{tag} report: {report}", flush=True)
    for source in cfg.eval.also_on:
        result, report = evaluate_on_source(cfg, source, client, tokenizer,
                                            folder.source_dir(source),
                                            cfg.eval.final_samples)
        m = result["metrics"]
        print(f"{tag} {source} data, test: accuracy {m.get('accuracy', float('nan')):.3f}, "
              f"ROC-AUC {m.get('roc_auc')}, n={m.get('n')}; report: {report}", flush=True)


if __name__ == "__main__":
    main()
