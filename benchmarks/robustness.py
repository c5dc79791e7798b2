"""Does the demo learn at every seed? The demo's Stage I over many ``train.seed`` values.

Runs ``configs/demo/stage1.yaml`` whole (its steps, its final evaluation on the 256 synthetic
test windows, its gate) once per seed, on the shipped embedded model, and prints per run:
test accuracy, what the Bayes rule scored on the same windows, their ratio, agreement with
the rule, the verdicts against logistic regression and the 5-day trend on the same windows,
the stated P(UP)'s ROC-AUC and ECE beside the exact posterior's, and the gate; then the
min / median / max of each figure. The issue's bar: every run >= 95 % of the realised Bayes
rule with the gate passed, ROC-AUC within 0.03 of the posterior's and ECE <= 0.05; the
table says per run whether it holds.

    .venv/bin/python benchmarks/robustness.py --seeds 0-9        # ~4 min a seed on 2 cores
    .venv/bin/python benchmarks/robustness.py --seeds 0-2 --stage2 configs/demo/stage2.yaml

``--stage2 CONFIG`` also runs Stage II from each seed's Stage I (``--force``: measured whether
or not the gate passed; same ``train.seed``; ``--stage2-set`` overrides its config) and prints
the same figures for it, on the natural distribution's test windows; ``--stage1-from NAME``
takes the Stage I runs of an earlier matrix (results/NAME.json) instead of running them. Writes
``benchmarks/results/robustness.json`` (``--name``: another name) after every run; each
run's folder and log under ``benchmarks/results/``.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, parser, save, table  # noqa: E402
from benchmarks.reward_share import run_logged, run_one  # noqa: E402

OF_BAYES = 0.95
AUC_GAP = 0.03
ECE_MAX = 0.05
FIGURES = ("accuracy", "bayes_rule", "of_bayes_rule", "agreement", "roc_auc",
           "bayes_roc_auc", "ece", "bayes_ece")


def seeds_of(text: str) -> list[int]:
    """``0-9`` or ``0,3,5`` (or both: ``0-2,7``)."""
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    return out


def bars(r: dict) -> dict[str, bool | None]:
    """Which of the issue's bars a run meets (None: the figure is missing)."""
    def ok(cond, *keys):
        return None if any(r.get(k) is None for k in keys) else bool(cond())

    return {"decision": ok(lambda: r["of_bayes_rule"] >= OF_BAYES and r.get("gate") is not False,
                           "of_bayes_rule"),  # gate None: a Stage II run, which has none
            "confidence": ok(lambda: r["bayes_roc_auc"] - r["roc_auc"] <= AUC_GAP
                             and r["ece"] <= ECE_MAX, "roc_auc", "bayes_roc_auc", "ece")}


def run_stage2(config: str, stage1: dict, sets: list[str], tag: str) -> dict:
    """Stage II from ``stage1``'s run folder, forced past its gate, at its seed."""
    seed = stage1["seed"]
    name = f"{tag}-stage2-s{seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    cmd = [sys.executable, "-m", "launch.cli", "stage2", "--config", config, "--stage1-run",
           stage1["run"], "--force"]
    for s in [*sets, f"train.seed={seed}", f"run.output_dir={RESULTS}", f"run.name={name}"]:
        cmd += ["--set", s]
    print(f"[{tag}] stage 2, seed {seed}: {' '.join(cmd)}", flush=True)
    out = {"arm": "stage2", "seed": seed, **run_logged(cmd, name)}
    print(f"[{tag}] stage 2, seed {seed}: exit {out['exit_code']}, accuracy {out.get('accuracy')}, "
          f"of Bayes rule {out.get('of_bayes_rule')}", flush=True)
    return out


def stage1_runs(name: str) -> dict[int, dict]:
    """{seed: its Stage I run} from an earlier matrix's results/NAME.json."""
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        raise SystemExit(f"--stage1-from {name}: {path} does not exist")
    return {r["seed"]: r for r in json.loads(path.read_text())["runs"] if r["exit_code"] == 0}


def spread(runs: list[dict]) -> list[list]:
    rows = []
    for name, pick in (("min", min), ("median", statistics.median), ("max", max)):
        row: list = [name]
        for key in FIGURES:
            vals = [r[key] for r in runs if r.get(key) is not None]
            row.append(round(pick(vals), 3) if vals else None)
        rows.append(row)
    return rows


def report(title: str, runs: list[dict]) -> None:
    rows = [[r["seed"], r.get("accuracy"), r.get("bayes_rule"), r.get("of_bayes_rule"),
             r.get("agreement"), r.get("vs_logistic"), r.get("vs_trend5"), r.get("roc_auc"),
             r.get("bayes_roc_auc"), r.get("ece"), r.get("bayes_ece"), r.get("gate"),
             r.get("decision"), r.get("confidence"), round(r["minutes"], 1)] for r in runs]
    print(f"\n{title}")
    print(table(["train.seed", "accuracy", "Bayes rule", "of Bayes", "agrees", "vs logistic",
                 "vs trend5", "ROC-AUC", "posterior AUC", "ECE", "posterior ECE", "gate",
                 f">= {OF_BAYES:.0%} + gate", "confidence bar", "min"], rows))
    print(table(["", *FIGURES], spread(runs)))
    met = sum(bool(r.get("decision")) for r in runs)
    print(f"decision bar met in {met} of {len(runs)} runs; confidence bar in "
          f"{sum(bool(r.get('confidence')) for r in runs)} of {len(runs)}")


def main() -> int:
    p = parser(__doc__, model=False)
    p.add_argument("--seeds", default="0-9", help="e.g. 0-9 or 0,1,2")
    p.add_argument("--name", default="robustness", help="results/<name>.json and run tag")
    p.add_argument("--stage2", metavar="CONFIG", help="also Stage II from each Stage I")
    p.add_argument("--stage2-set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--stage1-from", metavar="NAME",
                   help="take each seed's Stage I from results/NAME.json instead of running it")
    a = p.parse_args()
    earlier = stage1_runs(a.stage1_from) if a.stage1_from else {}
    runs: list[dict] = []
    runs2: list[dict] = []
    for seed in seeds_of(a.seeds):
        if a.stage1_from and seed not in earlier:
            raise SystemExit(f"--stage1-from {a.stage1_from}: no Stage I run of seed {seed}")
        runs.append(earlier.get(seed) or run_one(a.config, "seed", seed, a.set, arm_sets=[],
                                                 tag=a.name))
        runs[-1].update(bars(runs[-1]))
        if a.stage2 and runs[-1]["exit_code"] == 0:
            runs2.append(run_stage2(a.stage2, runs[-1], a.stage2_set, a.name))
            runs2[-1].update(bars(runs2[-1]))
        # after every run, so a stopped matrix keeps what it measured
        save(a.name, {"config": a.config, "sets": a.set, "seeds": seeds_of(a.seeds),
                      "runs": runs, "stage2": {"config": a.stage2, "sets": a.stage2_set,
                                               "runs": runs2}})
    report(f"The demo's Stage I over train.seed {a.seeds} ({a.config}; 256 synthetic test "
           "windows; every figure on the same windows)", runs)
    if a.stage2:
        report(f"Stage II from each ({a.stage2}; the natural distribution's test windows)",
               runs2)
    return 0 if all(r["exit_code"] == 0 for r in runs + runs2) else 1


if __name__ == "__main__":
    sys.exit(main())
