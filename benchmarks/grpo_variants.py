"""The GRPO variants on the demo's Stage I: steps to the bar and final same-sample accuracy.

Each arm runs ``configs/demo/stage1.yaml``'s whole Stage I (24 steps, its final evaluation on
256 test windows) with the same ``train.seed``, evaluating every ``--eval-every`` steps on
the fixed first 64 validation windows; the arms' order rotates with the seed (alternating
sides). Arms:

- ``grpo``: the config as it is (the default variant);
- ``dapo``: ``train.policy_loss=dapo`` (clip 0.2 / 0.28, token-mean), overlong shaping over
  the last 16 of 96 tokens, dynamic sampling;
- ``gspo``: ``train.policy_loss=gspo`` (sequence ratio, clip 3e-4 / 4e-4);
- ``cispo``: ``train.policy_loss=cispo`` (clipped detached IS weight on REINFORCE);
- ``grpo_x2``: ``train.updates_per_batch=2``.

The bar is benchmarks/learning.py's: 0.9 x what the Bayes rule scored on those 64 windows.
Per run: the first evaluated step at or above it, the best validation accuracy, the final
test accuracy beside the Bayes rule's on the same windows, groups dynamic sampling dropped,
minutes.

    .venv/bin/python benchmarks/grpo_variants.py --seeds 0 [--arms grpo,dapo]
Writes ``benchmarks/results/grpo_variants.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, first_crossing, parser, save, table  # noqa: E402
from benchmarks.reward_share import run_one  # noqa: E402

ARMS = {
    "grpo": [],
    "dapo": ["train.policy_loss=dapo", "reward.overlong_buffer=16",
             "rollout.dynamic_sampling=true"],
    "gspo": ["train.policy_loss=gspo"],
    "cispo": ["train.policy_loss=cispo"],
    "grpo_x2": ["train.updates_per_batch=2"],
}


def curve(run_dir: Path) -> tuple[list[tuple[int, float, float]], float]:
    """(step, 0, val accuracy) at each periodic evaluation, and the groups dropped in all."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    points = [(r["step"], 0.0, r["eval/accuracy"]) for r in rows if "eval/accuracy" in r]
    return points, sum(r.get("rollout/filtered_groups", 0.0) for r in rows)


def main() -> int:
    p = parser(__doc__, model=False)
    p.add_argument("--seeds", default="0")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--eval-every", type=int, default=4)
    p.add_argument("--fraction", type=float, default=0.9)
    a = p.parse_args()
    from trainer.config import load_config
    from trainer.evaluate import eval_samples
    from trainer.tasks import build_task
    from trainer.tasks.stock.same_samples import bayes_rule_accuracy

    cfg = load_config(REPO / a.config, a.set)
    watch = eval_samples(build_task(cfg), cfg, cfg.eval.split, cfg.eval.num_samples)
    bar = a.fraction * bayes_rule_accuracy(watch)
    arms, seeds = a.arms.split(","), [int(s) for s in a.seeds.split(",")]
    sets = [*a.set, f"eval.every_steps={a.eval_every}"]
    runs = []
    for seed in seeds:
        k = seed % len(arms)
        for arm in arms[k:] + arms[:k]:
            run = run_one(a.config, arm, seed, sets, ARMS[arm], tag="grpo-variants")
            if run["exit_code"] == 0:
                points, dropped = curve(Path(run["run"]))
                hit = first_crossing(points, bar)
                run.update(curve=points, bar_step=hit and hit[0], filtered_groups=dropped,
                           best_val=max((q[2] for q in points), default=None))
            runs.append(run)
    rows = [[r["arm"], r["seed"], r.get("bar_step") or "not reached", r.get("best_val"),
             r.get("accuracy"), r.get("bayes_rule"), r.get("of_bayes_rule"), r.get("parse"),
             r.get("filtered_groups"), r.get("gate"), round(r["minutes"], 1)] for r in runs]
    print(f"\nGRPO variants on the demo's Stage I (bar {bar:.3f} = {a.fraction:.0%} of the Bayes "
          f"rule on {len(watch)} {cfg.eval.split} windows; test: 256 windows, same samples)")
    print(table(["arm", "train.seed", "step at bar", "best val acc", "test accuracy",
                 "Bayes rule (same windows)", "of Bayes rule", "parse", "groups dropped",
                 "gate", "min"], rows))
    save("grpo_variants", {"config": a.config, "sets": sets, "seeds": seeds, "bar": bar,
                           "runs": runs})
    return 0 if all(r["exit_code"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
