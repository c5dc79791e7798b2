"""Per-step phase timings of Stage I and the adapter push's share of step time.

Runs the real recipe (launcher, vLLM worker(s), DeepSpeed learner ranks) on a config
(default: the embedded demo with 1 worker) for N steps, then reads ``metrics.jsonl`` and
prints medians over the steps after warm-up. The push ("sync") is save adapter v(k) +
load in place on every worker + verify on every rank. Target: sync < 5% of step time.

    .venv/bin/python benchmarks/step_timings.py --steps 12 --warmup 2
Writes ``benchmarks/results/step_timings.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHASES = ["generate", "reward", "learner", "sync"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/demo/stage1.yaml")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--set", action="append", default=[])
    a = p.parse_args()
    out_root = REPO / "benchmarks" / "results"
    name = f"step-timings-{time.strftime('%Y%m%d-%H%M%S')}"
    cmd = [sys.executable, "-m", "launch.cli", "stage1", "--config", a.config,
           "--set", f"train.steps={a.steps}", "--set", f"rollout.num_workers={a.workers}",
           "--set", f"run.output_dir={out_root}", "--set", f"run.name={name}"]
    for s in a.set:
        cmd += ["--set", s]
    print("running:", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)
    rows = [json.loads(x) for x in (out_root / name / "metrics.jsonl").read_text().splitlines()]
    rows = rows[a.warmup:]
    if not rows:
        raise SystemExit("no steps after warm-up: raise --steps")
    med = {ph: statistics.median(r[f"time/{ph}"] for r in rows) for ph in PHASES}
    step = sum(med.values())  # shares below are of the summed phase medians
    share = statistics.median(r["time/sync"] / sum(r[f"time/{ph}"] for ph in PHASES)
                              for r in rows)
    print(f"\nStage I step timings, median of {len(rows)} steps after {a.warmup} warm-up "
          f"({a.config}, {a.workers} worker(s))")
    print(f"| {'phase':<9} | {'seconds':>8} | {'share':>6} |")
    print(f"| {'-' * 9} | {'-' * 8} | {'-' * 6} |")
    for ph in PHASES:
        print(f"| {ph:<9} | {med[ph]:>8.3f} | {100 * med[ph] / step:>5.1f}% |")
    print(f"| {'step':<9} | {step:>8.3f} | {'100%':>6} |")
    verdict = "meets" if share < 0.05 else "MISSES"
    print(f"\nadapter push (save + load + verify): median {100 * share:.2f}% of step time "
          f"({verdict} the < 5% target)")
    result = {"config": a.config, "workers": a.workers, "steps_measured": len(rows),
              "median_seconds": med, "median_step_seconds": step, "sync_share": share,
              "command": " ".join(cmd)}
    (out_root / "step_timings.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
