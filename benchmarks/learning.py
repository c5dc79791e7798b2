"""Learning efficiency on the synthetic market: steps and training time to reach 90% of the
Bayes-optimal accuracy, ours against TRL's GRPOTrainer with matched hyper-parameters.

Both sides train ``--steps`` steps on the same config (``benchmarks/trl_grpo.py`` maps it onto
TRL) and every ``--eval-every`` steps answer the same fixed validation subset greedily (the
first ``eval.num_samples`` of ``eval.split``): ours through the workers (``eval/accuracy``
in ``metrics.jsonl``), TRL's with transformers ``generate``. The bar is ``--fraction`` x what the
Bayes rule scored on that subset (the likelier direction under the synthetic market's exact
P(UP) per window, against the windows' labels).
Training time is the sum of step times with evaluation excluded (ours: step 1 counts its
phases, not start-up). A side that never reaches the bar is reported as "not reached in N
steps" with the best accuracy it showed.

    .venv/bin/python benchmarks/learning.py --steps 200 --eval-every 10
Writes ``benchmarks/results/learning.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    REPO,
    RESULTS,
    cumulative,
    first_crossing,
    parser,
    phase_sum,
    run_ours,
    run_trl,
    save,
    table,
)


def ours_points(run: dict) -> list[tuple[int, float, float]]:
    """(step, training seconds so far, eval accuracy) of our run's evaluated steps."""
    rows = run["rows"]
    secs = [phase_sum(rows[0])] + [w - r.get("time/eval", 0.0)
                                   for w, r in zip(run["wall"][1:], rows[1:], strict=True)]
    return [(r["step"], t, r["eval/accuracy"]) for r, t in zip(rows, cumulative(secs),
                                                                strict=True)
            if r.get("eval/accuracy") is not None]


def trl_points(run: dict) -> list[tuple[int, float, float]]:
    steps = run["steps"]
    return [(r["step"], t, r["eval/accuracy"])
            for r, t in zip(steps, cumulative([r["seconds"] for r in steps]), strict=True)
            if "eval/accuracy" in r]


def summary(points: list[tuple[int, float, float]], bar: float, steps: int) -> dict:
    hit = first_crossing(points, bar)
    best = max(points, key=lambda p: p[2]) if points else None
    return {"reached": hit is not None, "step": hit and hit[0], "seconds": hit and hit[1],
            "best_accuracy": best and best[2], "best_step": best and best[0],
            "final_accuracy": points[-1][2] if points else None, "steps": steps,
            "curve": points}


def main() -> int:
    p = parser(__doc__, model=False)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--fraction", type=float, default=0.9)
    p.add_argument("--sides", default="ours,trl")
    a = p.parse_args()
    from trainer.config import load_config
    from trainer.evaluate import eval_samples
    from trainer.tasks import build_task
    from trainer.tasks.stock.same_samples import bayes_rule_accuracy

    cfg = load_config(REPO / a.config, a.set)
    task = build_task(cfg)
    watch = eval_samples(task, cfg, cfg.eval.split, cfg.eval.num_samples)
    if not watch or "up_prob" not in watch[0].meta:
        raise SystemExit("needs data.source: synthetic (the Bayes-optimal accuracy is known)")
    bayes = bayes_rule_accuracy(watch)  # what the rule scored on these very windows
    bar = a.fraction * bayes
    sides = a.sides.split(",")
    result = {"config": a.config, "sets": a.set, "eval_samples": len(watch),
              "bayes_rule_accuracy": bayes, "bar": bar, "fraction": a.fraction}
    if "ours" in sides:
        run = run_ours(a.config, a.steps, [*a.set, f"eval.every_steps={a.eval_every}"],
                       "learning-ours")
        result["ours"] = {**summary(ours_points(run), bar, a.steps),
                          "command": run["command"], "exit_code": run["exit_code"]}
    if "trl" in sides:
        run = run_trl(a.config, a.steps, a.set, RESULTS / "learning-trl.json",
                      ["--eval-every", str(a.eval_every)])
        result["trl"] = {**summary(trl_points(run), bar, a.steps), "command": run["command"]}
    print(f"\nLearning efficiency ({cfg.model.name_or_path}, synthetic market, {len(watch)} "
          f"{cfg.eval.split} windows; the Bayes rule scored {bayes:.3f} on them, bar "
          f"{a.fraction:.0%} of it = {bar:.3f}; eval every {a.eval_every} steps)")
    rows = []
    for side in sides:
        s = result[side]
        reached = (f"step {s['step']}" if s["reached"] else
                   f"not reached in {s['steps']} steps")
        rows.append([side, reached, s["seconds"], s["best_accuracy"], s["best_step"],
                     s["final_accuracy"]])
    print(table(["side", "90% of Bayes", "training s to bar", "best acc", "at step",
                 "final acc"], rows))
    save("learning", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
