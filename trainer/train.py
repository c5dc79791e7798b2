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
from trainer.evaluate import eval_samples, keep_best, run_eval, save_eval, scalar_metrics
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
    parser = argparse.ArgumentParser(description="GRPO learner ranks (one per process)")
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
    tag = f"[stage{cfg.stage}]"
    watch = eval_samples(task, cfg, cfg.eval.split, cfg.eval.num_samples)  # fixed eval subset
    if rank == 0:
        d = task.describe()
        sizes = {k: v for k, v in d.items() if k.endswith(("_size", "_up_ratio", "source"))}
        print(f"{tag} {world} learner rank(s), {len(urls)} worker(s), data {sizes}", flush=True)

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
            local.update({f"task/{k}": v for k, v in task.aggregate(diags).items()})
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
            if cfg.eval.every_steps and step % cfg.eval.every_steps == 0:
                with timer("eval"):
                    ev = run_eval(task, watch, client, learner.tokenizer, cfg)["metrics"]
                record.update(scalar_metrics(ev, "eval/"))
                record["time/eval"] = round(timer.seconds["eval"], 4)
                value = ev.get(cfg.eval.best_metric)
                if isinstance(value, (int, float)) and keep_best(
                        run_dir, store.path(step), step, float(value), cfg.eval.best_metric):
                    record["eval/new_best"] = 1.0
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
        print(f"{tag} done: {tc.steps} steps; final evaluation", flush=True)
        finish(cfg, task, client, learner.tokenizer, run_dir, tag)
    acc.wait_for_everyone()
    acc.end_training()


def finish(cfg, task, client, tokenizer, run_dir: Path, tag: str) -> None:
    """Final evaluation on eval.split and test, the gate after Stage I, the report."""
    from trainer.gate import check_gate, write_gate
    from trainer.report import write_report

    evals = {}
    for split in dict.fromkeys([cfg.eval.split, "test"]):
        samples = eval_samples(task, cfg, split, cfg.eval.final_samples)
        if samples:
            evals[split] = run_eval(task, samples, client, tokenizer, cfg)
            save_eval(run_dir / "eval" / f"{split}.json", evals[split])
    gate = None
    if cfg.stage == 1:
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        gate = check_gate(rows, evals.get(cfg.eval.split, {}).get("metrics", {}), cfg.gate)
        write_gate(run_dir, gate)
        print(f"{tag} promotion gate: {'PASSED' if gate['passed'] else 'not passed'} "
              f"({run_dir / 'gate.json'})", flush=True)
    report = write_report(run_dir, evals, baselines=task.describe().get("baselines"),
                          gate=gate, notes=getattr(task, "report_notes", lambda: [])())
    for split, ev in evals.items():
        m = ev["metrics"]
        print(f"{tag} {split}: accuracy {m.get('accuracy', float('nan')):.3f}, format valid "
              f"{m.get('format_valid', float('nan')):.3f}, n={m.get('n')}", flush=True)
    print(f"{tag} report: {report}", flush=True)


if __name__ == "__main__":
    main()
