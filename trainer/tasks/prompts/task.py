"""PromptsTask: a dataset's prompts, scored by the configured reward functions.

Built once per process: it reads ``data.dataset`` (``trainer/tasks/hub.py``), holds out the
validation and test rows (or reads their own splits) and keeps every row's other columns for
the reward functions. Scoring calls each function once per batch (``rewards.py``).
Evaluation reports the mean reward, each function's mean and the pass rate (``accuracy``:
the share of answers whose total reward reaches ``reward.pass_threshold``), which the
promotion gate reads as its accuracy.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from common.files import atomic_write_text
from trainer.tasks.base import Sample
from trainer.tasks.hub import DataError, open_dataset
from trainer.tasks.prompts.config import PromptsDataConfig, PromptsRewardConfig, local_path
from trainer.tasks.prompts.rewards import call_functions, load_functions

SPLITS = ("train", "val", "test")


def _messages(prompt: Any, system: str, where: str) -> list[dict[str, str]]:
    if isinstance(prompt, str):
        return ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}]
    if (isinstance(prompt, list) and prompt
            and all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in prompt)):
        return [{"role": str(m["role"]), "content": str(m["content"])} for m in prompt]
    raise DataError(f"{where}: the prompt is neither a string nor a list of "
                    f"{{\"role\", \"content\"}} messages: {str(prompt)[:80]!r}")


class PromptsTask:
    def __init__(self, data: PromptsDataConfig, reward: PromptsRewardConfig):
        self.cfg = data
        self.reward = reward
        self.functions = load_functions(reward.functions)
        name = local_path(data.dataset)
        rows = self._rows(name, data.split)
        rng = random.Random(data.seed)
        rng.shuffle(rows)
        held = {}
        for split, own, size in (("test", data.test_split, data.test_size),
                                 ("val", data.val_split, data.val_size)):
            if own:
                held[split] = self._rows(name, own)
            else:
                held[split], rows = rows[:size], rows[size:]
        if not rows:
            raise DataError(f"{data.dataset}: no training prompts left after holding out "
                            f"{data.val_size} validation and {data.test_size} test rows "
                            f"(data.val_size, data.test_size)")
        self._splits = {"train": rows, **held}

    def _rows(self, name: str, split: str) -> list[Sample]:
        ds = open_dataset(name, split, config_name=self.cfg.config_name, setting="data.dataset",
                          split_setting="data.split")
        column = self.cfg.prompt_column
        if column not in ds.column_names:
            raise DataError(f"{name}: no column {column!r} (data.prompt_column); columns: "
                            f"{', '.join(ds.column_names)}")
        if self.cfg.max_samples:
            ds = ds.select(range(min(self.cfg.max_samples, len(ds))))
        out = []
        for i, row in enumerate(ds):
            where = f"{name} ({split}), row {i}, column {column!r}"
            out.append(Sample(id=f"{split}:{i}",
                              messages=_messages(row[column], self.cfg.system_prompt, where),
                              meta={"prompt": row[column],
                                    "columns": {k: v for k, v in row.items() if k != column}}))
        return out

    # ---- what training reads
    def split(self, name: str) -> list[Sample]:
        if name not in self._splits:
            raise KeyError(f"split {name!r}: use one of {', '.join(SPLITS)}")
        return self._splits[name]

    def _completions(self, sample: Sample, texts: list[str]) -> list[Any]:
        if isinstance(sample.meta["prompt"], str):
            return list(texts)
        return [[{"role": "assistant", "content": t}] for t in texts]

    def _score_flat(self, samples: list[Sample], texts: list[str]) -> list[dict[str, float]]:
        completions = [c for s, t in zip(samples, texts, strict=True)
                       for c in self._completions(s, [t])]
        keys = samples[0].meta["columns"].keys() if samples else []
        columns = {k: [s.meta["columns"].get(k) for s in samples] for k in keys}
        return call_functions(self.functions, [s.meta["prompt"] for s in samples], completions,
                              columns, self.reward.weights)

    def score(self, sample: Sample, completion: str) -> dict[str, float]:
        return self._score_flat([sample], [completion])[0]

    def score_batch(self, samples: list[Sample],
                    completions: list[list[str]]) -> list[list[dict[str, float]]]:
        flat = iter(self._score_flat([s for s, g in zip(samples, completions, strict=True)
                                      for _ in g], [c for g in completions for c in g]))
        return [[next(flat) for _ in group] for group in completions]

    def stratum(self, sample: Sample) -> str | None:
        return None

    def diagnostics(self, sample: Sample, completion: str) -> dict[str, float]:
        return {}

    def aggregate(self, diags: list[dict[str, float]]) -> dict[str, float]:
        return {}

    # ---- evaluation
    def eval_records(self, samples: list[Sample], completions: list[str]) -> list[dict]:
        scored = self._score_flat(samples, completions) if samples else []
        out = []
        for s, c, comps in zip(samples, completions, scored, strict=True):
            total = sum(comps.values())
            out.append({"id": s.id, "completion": c, "components": comps, "reward": total,
                        "passed": total >= self.reward.pass_threshold})
        return out

    def summarize(self, records: list[dict]) -> dict[str, Any]:
        n = len(records)
        if not n:
            return {"n": 0}
        out: dict[str, Any] = {"n": n,
                               "accuracy": sum(r["passed"] for r in records) / n,
                               "reward": sum(r["reward"] for r in records) / n}
        for name, _ in self.functions:
            out[f"reward/{name}"] = sum(r["components"].get(name, 0.0) for r in records) / n
        return out

    def write_report(self, out: Path, evals: dict[str, dict], gate: dict | None = None,
                     notes: list[str] | None = None) -> Path:
        """report.md (a table per split, the gate's verdict, a few answers) and
        metrics.json."""
        out.mkdir(parents=True, exist_ok=True)
        metrics = {split: ev["metrics"] for split, ev in evals.items()}
        atomic_write_text(out / "metrics.json", json.dumps(
            {"splits": metrics, "gate": gate}, indent=2, default=str))
        lines = ["# Evaluation report (task: prompts)", "", *(f"- {n}" for n in notes or [])]
        for split, m in metrics.items():
            lines += ["", f"## {split}", "", "| metric | value |", "| --- | --- |"]
            lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
                      for k, v in m.items()]
        if gate is not None:
            lines += ["", f"## Promotion gate: {'passed' if gate['passed'] else 'not passed'}",
                      "", "| indicator | value | threshold | passed |", "| --- | --- | --- | --- |"]
            lines += [f"| {i['label']} | {i['value']} | {i['op']} {i['threshold']} | "
                      f"{i['passed']} |" for i in gate["indicators"]]
        for split, ev in evals.items():
            lines += ["", f"## {split}: first answers", ""]
            lines += [f"- reward {r['reward']:.3f}: {r['completion'][:160]!r}"
                      for r in ev["records"][:5]]
        path = out / "report.md"
        atomic_write_text(path, "\n".join(lines) + "\n")
        return path

    def gate_indicators(self) -> dict[str, Any]:
        from trainer.gate import VAL_ACCURACY

        return dict(VAL_ACCURACY)

    def describe(self) -> dict[str, Any]:
        return {"dataset": self.cfg.dataset, "prompt_column": self.cfg.prompt_column,
                "reward_functions": [name for name, _ in self.functions],
                **{f"{name}_size": len(xs) for name, xs in self._splits.items()}}


def from_config(cfg) -> PromptsTask:
    """The task a StageConfig with ``task: prompts`` names (``registry.build_task``)."""
    return PromptsTask(cfg.data, cfg.reward)
