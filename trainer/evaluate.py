"""Evaluation through the workers: generate one answer per sample, let the task score it.

Used by the training loop (every ``eval.every_steps`` on a fixed subset, and at the end) and
by ``stonk eval`` on a finished run. Generation goes through the same vLLM workers and the
same published adapter as training, greedy by default (``eval.temperature: 0``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from common.files import atomic_write_text
from rollout.source import RolloutSource
from trainer.config import StageConfig
from trainer.rollouts import encode_prompt
from trainer.run_folder import RunFolder
from trainer.tasks.base import Sample


def eval_samples(task, cfg: StageConfig, split: str, limit: int) -> list[Sample]:
    """The split's first ``limit`` samples (0: all): a fixed subset, comparable across steps."""
    samples = task.split(split)
    return samples[:limit] if limit else samples


def run_eval(task, samples: list[Sample], client: RolloutSource, tokenizer,
             cfg: StageConfig) -> dict[str, Any]:
    """{"metrics": task metrics, "records": one record per sample} for these samples."""
    if not samples:
        return {"metrics": {"n": 0}, "records": []}
    ec = cfg.eval
    prompts = [encode_prompt(tokenizer, s) for s in samples]
    groups = client.generate(prompts, n=1, max_tokens=ec.max_tokens or cfg.rollout.max_tokens,
                             temperature=ec.temperature, top_p=1.0)
    records = task.eval_records(samples, [g[0].text for g in groups])
    for rec, g in zip(records, groups, strict=True):
        rec["adapter_version"] = g[0].adapter_version
        rec["text"] = g[0].text
    return {"metrics": task.summarize(records), "records": records}


def evaluate_and_report(task, cfg: StageConfig, client: RolloutSource, tokenizer, out: Path,
                        splits: list[str], limit: int, notes: list[str],
                        gate: Any = None) -> tuple[dict[str, dict[str, Any]], Path]:
    """Each split's first ``limit`` samples through the served adapter, saved as
    ``out/eval/<split>.json``, then one report in ``out`` beside the task's baselines.
    Shared by ``stonk eval`` and ``eval.also_on``."""
    evals = {}
    for split in splits:
        evals[split] = run_eval(task, eval_samples(task, cfg, split, limit), client, tokenizer,
                                cfg)
        save_eval(out / "eval" / f"{split}.json", evals[split])
    report = task.write_report(out, evals, gate=gate, notes=notes)
    return evals, report


def evaluate_on_source(cfg: StageConfig, source: str, client: RolloutSource, tokenizer,
                       out: Path, limit: int) -> tuple[dict[str, Any], Path]:
    """The served adapter on another data source's test split (``eval.also_on``): its
    result and the report written in ``out`` beside that source's baselines."""
    from dataclasses import replace

    from trainer.config import validate
    from trainer.tasks import build_task

    other = replace(cfg, data=replace(cfg.data, source=source))
    other.eval = replace(cfg.eval, also_on=[])
    validate(other)  # the source's own requirements (paths, columns), named as config errors
    notes = [f"data source: {source} (the run trained on {cfg.data.source}); the run's "
             "final adapter"]
    evals, report = evaluate_and_report(build_task(other), other, client, tokenizer, out,
                                        ["test"], limit, notes)
    return evals["test"], report


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def headline(m: dict[str, Any]) -> str:
    """One line of an evaluation's metrics, those the task reports: accuracy, ROC-AUC,
    format valid, reward, n."""
    shown = [f"{k.replace('_', ' ')} {m[k]:.3f}" for k in
             ("accuracy", "roc_auc", "format_valid", "reward") if _number(m.get(k))]
    return ", ".join([*shown, f"n={m.get('n')}"])


def scalar_metrics(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    """The numeric top-level entries, prefixed, for metrics.jsonl."""
    return {f"{prefix}{k}": float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def save_eval(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(result, indent=1, default=str))


def keep_best(run_dir: Path, adapter_dir: Path, step: int, value: float, metric: str) -> bool:
    """Copy the adapter to checkpoints/best (atomically) if ``value`` beats the best so far.
    A failed copy raises OSError and leaves the previous best/ untouched."""
    folder = RunFolder(run_dir)
    ckpt, best_dir = folder.checkpoints, folder.best
    info_path = ckpt / "best.json"
    best = json.loads(info_path.read_text())["value"] if info_path.exists() else None
    if best is not None and value <= best:
        return False
    ckpt.mkdir(parents=True, exist_ok=True)
    tmp = ckpt / f".tmp-best-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(adapter_dir, tmp / "adapter")
        for f in (tmp / "adapter").iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    except OSError:  # no space, read-only: the previous best/ stays as it was
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = ckpt / ".old-best"
    shutil.rmtree(old, ignore_errors=True)
    if best_dir.exists():
        os.rename(best_dir, old)
    os.rename(tmp, best_dir)
    shutil.rmtree(old, ignore_errors=True)
    atomic_write_text(info_path, json.dumps({"step": step, "metric": metric, "value": value}))
    return True


def final_evaluation(cfg: StageConfig, task, client: RolloutSource, tokenizer, run_dir: Path,
                     tag: str) -> None:
    """The end of a run (rank 0): eval.split and test through the last adapter, the
    promotion gate after Stage I, the report; then the test splits of eval.also_on's
    sources."""
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
        gate = check_gate(rows, evals.get(cfg.eval.split, {}).get("metrics", {}), cfg.gate,
                          getattr(task, "gate_indicators", lambda: None)())
        write_gate(run_dir, gate)
        print(f"{tag} promotion gate: {'PASSED' if gate['passed'] else 'not passed'} "
              f"({folder.gate})", flush=True)
    report = task.write_report(run_dir, evals, gate=gate,
                               notes=getattr(task, "report_notes", lambda: [])())
    for split, ev in evals.items():
        m = ev["metrics"]
        print(f"{tag} {split}: {headline(m)}", flush=True)
    print(f"{tag} report: {report}", flush=True)
    for source in cfg.eval.also_on:
        result, report = evaluate_on_source(cfg, source, client, tokenizer,
                                            folder.source_dir(source), cfg.eval.final_samples)
        m = result["metrics"]
        print(f"{tag} {source} data, test: accuracy {m.get('accuracy', float('nan')):.3f}, "
              f"ROC-AUC {m.get('roc_auc')}, n={m.get('n')}; report: {report}", flush=True)
