"""Per-step phase timings of Stage I and the adapter push's share of step time.

Runs the real recipe (launcher, vLLM worker(s), DeepSpeed learner ranks) on a config
(default: the embedded demo with 1 worker) for N steps, then reads ``metrics.jsonl`` and
prints medians over the steps after warm-up: generate (both ranks' completions through the
workers), reward, learner (policy + reference forward, backward, optimizer step), sync (the
push: save adapter v(k) + load in place on every worker + verify on every rank), and the wall
interval between steps. Target: sync < 5% of step time. Push latency against adapter size:
``push_latency.py``.

    .venv/bin/python benchmarks/step_timings.py --steps 12 --warmup 2
    .venv/bin/python benchmarks/step_timings.py --model models/qwen2-25m --steps 8 --warmup 2
Writes ``benchmarks/results/step_timings[-<model>].json``.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    PHASES,
    median_after_warmup,
    model_sets,
    parser,
    phase_sum,
    result_tag,
    run_ours,
    save,
)


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--tag", help="results name (default: step_timings[-<model>])")
    a = p.parse_args()
    sets = [f"rollout.num_workers={a.workers}", *model_sets(a)]
    tag = a.tag or result_tag("step_timings", a)
    run = run_ours(a.config, a.steps, sets, tag)
    if run["exit_code"] != 0:
        raise SystemExit(f"the run failed (exit {run['exit_code']}): {run['run_dir']}")
    rows = run["rows"][a.warmup:]
    if not rows or a.warmup < 1:
        raise SystemExit("need --warmup >= 1 and steps after it: raise --steps")
    med = {ph: statistics.median(r[f"time/{ph}"] for r in rows) for ph in PHASES}
    step = sum(med.values())  # shares below are of the summed phase medians
    share = statistics.median(r["time/sync"] / phase_sum(r) for r in rows)
    wall = median_after_warmup(run["wall"], a.warmup)
    print(f"\nStage I step timings, median of {len(rows)} steps after {a.warmup} warm-up "
          f"({a.config}, {a.workers} worker(s))")
    print(f"| {'phase':<9} | {'seconds':>8} | {'share':>6} |")
    print(f"| {'-' * 9} | {'-' * 8} | {'-' * 6} |")
    for ph in PHASES:
        print(f"| {ph:<9} | {med[ph]:>8.3f} | {100 * med[ph] / step:>5.1f}% |")
    print(f"| {'step':<9} | {step:>8.3f} | {'100%':>6} |")
    print(f"| {'wall':<9} | {wall:>8.3f} | {'':>6} |  (interval between steps)")
    verdict = "meets" if share < 0.05 else "MISSES"
    print(f"\nadapter push (save + load + verify): median {100 * share:.2f}% of step time "
          f"({verdict} the < 5% target)")
    save(tag, {"config": a.config, "workers": a.workers, "steps_measured": len(rows),
               "median_seconds": med, "median_step_seconds": step, "median_wall_seconds": wall,
               "sync_share": share, "command": run["command"], "run_dir": run["run_dir"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
