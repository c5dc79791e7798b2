"""``make demo``: both stages end to end on the embedded defaults (CPU), then a summary.

1. Stage I on the synthetic market (``configs/demo/stage1.yaml``): evaluation, gate.
2. Stage II from it (``configs/demo/stage2.yaml``); if the demo's gate did not pass, Stage II
   runs with FORCE and the summary says so (the override is recorded in the Stage II run).
3. The Stage II model evaluated on the bundled real prices, beside the baselines: Stage II's
   ``eval.also_on: [bundled]``, through its own workers at the end of its run (a separate
   ``stonk eval`` would start a worker again: ~1 min on 2 cores).
4. ``runs/<demo>/SUMMARY.md``: Stage I test accuracy against the synthetic market's exact
   Bayes-optimal accuracy (target: at least 90% of it), the parse rate (target: at least
   95%), and where every report is.
Each step runs the same commands a user would (``stonk stage1``, ``stonk stage2``,
as subprocesses, so the demo exercises the real entry points.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_OF_BAYES = 0.90
TARGET_PARSE = 0.95


def _run(args: list[str]) -> None:
    cmd = [sys.executable, "-m", "launch.cli", *args]
    print(f"[demo] $ stonk {' '.join(args)}", flush=True)
    code = subprocess.run(cmd, cwd=REPO).returncode
    if code != 0:
        raise SystemExit(f"[demo] step failed with exit code {code}: stonk {' '.join(args)}")


def _metrics(run: Path, split: str) -> dict:
    return json.loads((run / "eval" / f"{split}.json").read_text())["metrics"]


def summary(root: Path, s1: Path, s2: Path, real: Path, gate: dict, minutes: float) -> str:
    test = _metrics(s1, "test")
    bayes = test.get("bayes_accuracy")
    acc, parse = test.get("accuracy"), test.get("format_valid")
    ratio = acc / bayes if acc is not None and bayes else None
    s2_test = _metrics(s2, "test")
    real_test = _metrics(real, "test")

    def pct(x):
        return "n/a" if x is None else f"{100 * x:.1f}%"

    def num(x):
        return "n/a" if x is None else f"{x:.3f}"

    def flat(m):  # the seed's Stage I confidence reward only costs a confident wrong answer
        return (" (every answer stated the same confidence: nothing to rank)"
                if m.get("p_up_values") == 1 else "")

    verdict = (ratio is not None and ratio >= TARGET_OF_BAYES and parse is not None
               and parse >= TARGET_PARSE)
    lines = [
        "# Stonk-Trainer demo summary", "",
        f"Wall time: {minutes:.1f} min for the two stages and their evaluations on this "
        "machine (the embedded model's build and warm start run before, as their own make "
        "targets).", "",
        "| what | value | target |", "| --- | --- | --- |",
        f"| Stage I test accuracy (synthetic market) | {pct(acc)} | |",
        f"| Bayes-optimal accuracy on those samples (exact) | {pct(bayes)} | |",
        f"| accuracy / Bayes | {pct(ratio)} | >= {pct(TARGET_OF_BAYES)} |",
        f"| answers that parse | {pct(parse)} | >= {pct(TARGET_PARSE)} |",
        f"| Stage I ROC-AUC | {num(test.get('roc_auc'))}{flat(test)} | |",
        f"| promotion gate | {'passed' if gate.get('passed') else 'not passed (Stage II forced)'} | |",
        f"| Stage II test accuracy (natural distribution) | {pct(s2_test.get('accuracy'))} | |",
        f"| Stage II model on real prices (test) | {pct(real_test.get('accuracy'))}, "
        f"ROC-AUC {num(real_test.get('roc_auc'))}{flat(real_test)} | beat the baselines in its "
        "report |",
        "", f"Learning target met: **{'yes' if verdict else 'NO'}**", "",
        "Reports:",
        f"- Stage I: {s1 / 'report.md'} (gate: {s1 / 'gate.json'})",
        f"- Stage II: {s2 / 'report.md'}",
        f"- Stage II model on bundled real prices: {real / 'report.md'}",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="stonk demo", description=__doc__.splitlines()[0])
    p.add_argument("--name", default="demo")
    p.add_argument("--stage1-steps", type=int, default=None)
    p.add_argument("--stage2-steps", type=int, default=None)
    p.add_argument("--output-dir", default="runs")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override applied to every stage and evaluation")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    root = Path(a.output_dir) / a.name
    s1, s2 = root / "stage1", root / "stage2"
    real = s2 / "bundled-data"  # configs/demo/stage2.yaml: eval.also_on: [bundled]
    extra = [x for kv in a.set for x in ("--set", kv)]
    common = ["--set", f"run.output_dir={root}", *extra]
    steps1 = ["--set", f"train.steps={a.stage1_steps}"] if a.stage1_steps else []
    steps2 = ["--set", f"train.steps={a.stage2_steps}"] if a.stage2_steps else []
    _run(["stage1", "--config", "configs/demo/stage1.yaml", *common,
          "--set", "run.name=stage1", *steps1])
    gate = json.loads((s1 / "gate.json").read_text())
    force = [] if gate.get("passed") else ["--force"]
    if force:
        print("[demo] the Stage I gate did not pass; the demo continues with --force "
              "(recorded in the Stage II run)", flush=True)
    _run(["stage2", "--config", "configs/demo/stage2.yaml", "--stage1-run", str(s1), *force,
          *common, "--set", "run.name=stage2", *steps2])
    text = summary(root, s1, s2, real, gate, (time.perf_counter() - t0) / 60)
    (root / "SUMMARY.md").write_text(text)
    print("\n" + text, flush=True)
    print(f"[demo] summary: {root / 'SUMMARY.md'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
