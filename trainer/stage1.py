"""Stage I: GRPO on the balanced 50/50 set. Read top to bottom: config, setup, loop, checkpoint.

Started through ``accelerate launch``, one process per learner rank: by the launcher
(``launch/runner.py``), which first starts the vLLM workers and writes ``workers.json`` and
the resolved ``config.yaml`` into the run folder, or by hand with ``--config`` and
``--workers`` next to workers served by ``stonk workers``. Machinery lives in modules; this
file is the recipe.

Deliberate simplifications (see trainer/grpo.py for departures in the math):
- One optimizer step per rollout batch (no PPO epochs): the old policy is the current one.
- Each rank samples its own prompts and groups, so advantages need no cross-rank traffic.
- Rank 0 publishes the adapter; every rank verifies the workers serve it before sampling.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import torch

from rollout.adapter_store import AdapterStore, atomic_write_text
from rollout.client import RolloutClient
from trainer.config import load_config, save_config
from trainer.dist import mean_across_ranks, rank_and_world
from trainer.learner import Learner
from trainer.metrics import MetricsWriter, PhaseTimer, Progress
from trainer.rollouts import PromptSampler, collect, write_rollouts
from trainer.tasks import build_task


def save_checkpoint(run_dir: Path, step: int, adapter_dir: Path) -> Path:
    """Copy the published adapter into checkpoints/step_N atomically; point LATEST at it."""
    ckpt_root = run_dir / "checkpoints"
    final = ckpt_root / f"step_{step:06d}"
    tmp = ckpt_root / f".tmp-step_{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(adapter_dir, tmp / "adapter")
    (tmp / "state.json").write_text(json.dumps({"step": step, "adapter_version": step}))
    shutil.rmtree(final, ignore_errors=True)
    os.rename(tmp, final)
    atomic_write_text(ckpt_root / "LATEST", final.name + "\n")
    return final


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Stage I learner ranks (one per process)")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--config", help="config file (default: <run-dir>/config.yaml, "
                                         "written by the launcher)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--workers", help="comma-separated worker URLs (default: "
                                          "<run-dir>/workers.json, written by the launcher)")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)

    # ---- config
    cfg = load_config(args.config or run_dir / "config.yaml", args.set)
    tc, rc = cfg.train, cfg.rollout
    if cfg.launch.learner_threads:
        torch.set_num_threads(cfg.launch.learner_threads)

    # ---- setup: accelerator, task, learner, workers, adapter store
    from accelerate import Accelerator

    acc = Accelerator()
    rank, world = rank_and_world()
    if rank == 0 and args.config:  # started by hand (accelerate launch): record the inputs
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    if rank == 0 and args.workers:
        (run_dir / "workers.json").write_text(json.dumps(
            {"workers": [{"url": u} for u in args.workers.split(",")]}, indent=2))
    task = build_task(cfg)
    sampler = PromptSampler(task.split("train")[rank::world], seed=tc.seed + rank)
    learner = Learner(cfg, acc)
    urls = (args.workers.split(",") if args.workers else
            [w["url"] for w in json.loads((run_dir / "workers.json").read_text())["workers"]])
    client = RolloutClient(urls, timeout=rc.request_timeout_s,
                           max_concurrency=rc.max_concurrent_requests,
                           api_key=os.environ.get(rc.api_key_env) or None)
    store = AdapterStore(cfg.run.adapter_dir or run_dir / "adapters")
    metrics = MetricsWriter(run_dir / "metrics.jsonl") if rank == 0 else None
    rollouts_path = run_dir / f"rollouts.rank{rank}.jsonl"
    if rank == 0:
        print(f"[stage1] {world} learner rank(s), {len(urls)} worker(s), task {task.describe()}",
              flush=True)

    def publish(version: int) -> None:
        state = learner.adapter_state()  # collective under ZeRO-3
        if rank == 0:
            store.publish(version, lambda d: learner.save_adapter(d, state))
            client.publish(version, store.path(version))
            store.prune(cfg.run.keep_adapter_versions)
        acc.wait_for_everyone()
        client.verify(version, store.path(version))

    publish(0)  # v0: the fresh adapter (identical to the base), so workers serve the policy
    progress = Progress(tc.steps)

    # ---- loop
    for step in range(1, tc.steps + 1):
        timer = PhaseTimer()
        samples = sampler.next(tc.prompts_per_rank)
        with timer("generate"):
            seed = ((tc.seed * 1_000_003 + step * 7_919 + rank * 104_729) % 2**31
                    if rc.seed_requests else None)
            batch, components, groups = collect(
                task, samples, client, learner.tokenizer, group_size=rc.group_size,
                max_tokens=rc.max_tokens, temperature=rc.temperature, top_p=rc.top_p,
                seed=seed, advantage=tc.advantage, pad_id=learner.pad_id)
        with timer("reward"):
            local = {"reward/mean": float(batch.rewards.mean()),
                     "reward/std": float(batch.rewards.std()),
                     "completion_tokens": float(batch.completion_mask.sum(1).mean()),
                     "truncated_frac": sum(c.finish_reason == "length" for g in groups
                                           for c in g) / len(batch)}
            for name in components[0]:
                local[f"reward/{name}"] = sum(c[name] for c in components) / len(components)
            diags = [task.diagnostics(s, c.text) for s, g in zip(samples, groups, strict=True)
                     for c in g]
            for name in diags[0]:
                local[f"task/{name}"] = sum(d[name] for d in diags) / len(diags)
            if cfg.run.log_rollouts_every and step % cfg.run.log_rollouts_every == 0:
                write_rollouts(rollouts_path, step, samples, batch, groups, components)
        with timer("learner"):
            local.update(learner.train_step(batch))
        with timer("sync"):
            publish(step)
        local.update(timer.as_metrics())
        record = mean_across_ranks(local)
        if rank == 0:
            record.update(step=step, adapter_version=step,
                          sampled_with_version=int(batch.adapter_version.max()))
            metrics.write(record)
            print(progress.line(step, record), flush=True)

        # ---- checkpoint
        if rank == 0 and (step % cfg.run.checkpoint_every == 0 or step == tc.steps):
            save_checkpoint(run_dir, step, store.path(step))
        acc.wait_for_everyone()

    if rank == 0:
        served = {url: client.served_adapter_path(url) for url in urls}
        (run_dir / "served_adapters.json").write_text(json.dumps(served, indent=2))
        metrics.close()
        print(f"[stage1] done: {tc.steps} steps, run folder {run_dir}", flush=True)
    acc.end_training()


if __name__ == "__main__":
    main()
