"""What learns: the demo's Stage I with the seed's reward against an accuracy-only reward.

On the majority market the coherence reward pays the Bayes lean (the majority of the shown
moves) without reading any label, and data usage pays citing the prices. This runs the
demo's whole Stage I (``configs/demo/stage1.yaml``: 24 steps, its final evaluation on 256
test windows) once per arm and seed, the arms alternating within each seed (which arm goes
first flips from seed to seed):

- ``seed``: the config's reward (accuracy, data usage, coherence, confidence, diversity);
- ``accuracy_only``: ``reward.weights.data_usage=0`` and ``reward.weights.coherence=0``.

Per run: test accuracy, what the Bayes rule scored on the same windows, their ratio, the
verdict against the logistic baseline and the 5-day trend on the same windows, the gate.

    .venv/bin/python benchmarks/reward_share.py --seeds 0,1,2
Writes ``benchmarks/results/reward_share.json``; each run's folder and log under
``benchmarks/results/``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, RESULTS, parser, save, stage1_command, table  # noqa: E402

ARMS = {"seed": [], "accuracy_only": ["reward.weights.data_usage=0",
                                      "reward.weights.coherence=0"]}


def arm_order(seed: int) -> list[str]:
    """Both arms, the first flipping with the seed (alternating sides)."""
    names = list(ARMS)
    return names if seed % 2 == 0 else names[::-1]


def test_figures(run_dir: Path) -> dict:
    """A finished run's test evaluation, same-sample figures and gate (empty without one)."""
    test = run_dir / "eval" / "test.json"
    if not test.is_file():
        return {}
    m = json.loads(test.read_text())["metrics"]
    same = m.get("same_samples", {})
    gate_file = run_dir / "gate.json"  # Stage II has no gate of its own
    gate = json.loads(gate_file.read_text()) if gate_file.is_file() else {"passed": None}
    return dict(n=m["n"], accuracy=m["accuracy"], bayes_rule=m.get("bayes_rule_accuracy"),
                of_bayes_rule=m.get("of_bayes_rule"), parse=m["format_valid"],
                agreement=m.get("bayes_agreement"), gate=gate["passed"],
                roc_auc=m.get("roc_auc"), bayes_roc_auc=m.get("bayes_roc_auc"),
                ece=m.get("ece"), bayes_ece=m.get("bayes_ece"),
                p_up_values=m.get("p_up_values"),
                **{f"vs_{b}": same.get(b, {}).get("verdict") for b in ("logistic", "trend5")},
                **{f"{b}_acc": same.get(b, {}).get("accuracy") for b in ("logistic", "trend5")})


def run_logged(cmd: list[str], name: str) -> dict:
    """Run ``cmd`` (a stonk command writing run folder ``RESULTS/name``) with its output in
    ``RESULTS/name.log``: its folder, exit code, minutes, command, and on success the run's
    :func:`test_figures`."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(RESULTS / f"{name}.log", "w") as log:
        code = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode
    out = {"run": str(RESULTS / name), "exit_code": code,
           "minutes": (time.perf_counter() - t0) / 60, "command": " ".join(cmd)}
    return {**out, **(test_figures(RESULTS / name) if code == 0 else {})}


def run_one(config: str, arm: str, seed: int, sets: list[str],
            arm_sets: list[str] | None = None, tag: str = "reward-share") -> dict:
    """One whole Stage I of ``arm`` (``arm_sets``, else ``ARMS[arm]``): exit code, minutes,
    command, and the test evaluation's same-sample figures and the gate."""
    name = f"{tag}-{arm}-s{seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    arm_sets = ARMS[arm] if arm_sets is None else arm_sets
    cmd = stage1_command(config, [*sets, *arm_sets, f"train.seed={seed}",
                                  f"run.output_dir={RESULTS}", f"run.name={name}"])
    print(f"[{tag}] {arm}, seed {seed}: {' '.join(cmd)}", flush=True)
    out = {"arm": arm, "seed": seed, **run_logged(cmd, name)}
    print(f"[{tag}] {arm}, seed {seed}: exit {out['exit_code']}, "
          f"accuracy {out.get('accuracy')}, of Bayes rule {out.get('of_bayes_rule')}",
          flush=True)
    return out


def main() -> int:
    p = parser(__doc__, model=False)
    p.add_argument("--seeds", default="0,1,2")
    a = p.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    runs = [run_one(a.config, arm, seed, a.set) for seed in seeds for arm in arm_order(seed)]
    rows = [[r["arm"], r["seed"], r.get("accuracy"), r.get("bayes_rule"),
             r.get("of_bayes_rule"), r.get("agreement"), r.get("logistic_acc"),
             r.get("vs_logistic"), r.get("trend5_acc"), r.get("vs_trend5"), r.get("parse"),
             r.get("gate"), round(r["minutes"], 1)] for r in runs]
    print("\nStage I of the demo, seed's reward vs accuracy only (test windows, same samples)")
    print(table(["arm", "train.seed", "accuracy", "Bayes rule", "of Bayes rule",
                 "agrees with Bayes", "logistic", "model vs logistic", "5-day trend",
                 "model vs trend", "parse", "gate", "min"], rows))
    save("reward_share", {"config": a.config, "sets": a.set, "seeds": seeds, "runs": runs})
    return 0 if all(r["exit_code"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
