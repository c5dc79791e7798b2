"""``make demo``: both stages end to end on the embedded defaults (CPU), then a summary.

1. Stage I on the synthetic market (``configs/demo/stage1.yaml``): evaluation, gate.
2. Stage II from it (``configs/demo/stage2.yaml``); if the demo's gate did not pass, Stage II
   runs with FORCE and the summary says so (the override is recorded in the Stage II run).
3. The Stage II model evaluated on the bundled real prices, beside the baselines: Stage II's
   ``eval.also_on: [bundled]``, through its own workers at the end of its run (a separate
   ``stonk eval`` would start a worker again: ~1 min on 2 cores).
4. ``runs/<demo>/SUMMARY.md``: Stage I test accuracy against what the Bayes rule scored on
   the same windows (target: at least 90% of it; its expected accuracy on its own row), the
   parse rate (target: at least 95%), each simple baseline on the same windows with the
   model's verdict, on the synthetic and the real prices, and where every report is.
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

from trainer.run_folder import RunFolder

REPO = Path(__file__).resolve().parents[2]
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


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _flat(m: dict) -> str:  # the seed's Stage I confidence reward only costs a wrong answer
    return (" (every answer stated the same confidence: nothing to rank)"
            if m.get("p_up_values") == 1 else "")


def versus(m: dict) -> str:
    """Each simple baseline on the model's own windows: its accuracy and the model's
    verdict with the difference and its 95% interval, in points."""
    from trainer.tasks.stock.same_samples import BAYES

    parts = [f"{name} {_pct(v['accuracy'])}: model {v['verdict']} "
             f"({100 * v['diff']:+.1f} pts, 95% [{100 * v['diff_lo']:+.1f}, "
             f"{100 * v['diff_hi']:+.1f}])"
             for name, v in (m.get("same_samples") or {}).items() if name != BAYES]
    return "; ".join(parts) or "n/a"


def beats_line(m: dict, where: str) -> str:
    from trainer.tasks.stock.same_samples import beats_all

    beats = beats_all(m.get("same_samples") or {})
    if beats is None:
        return f"On {where}: no baselines to compare with."
    return (f"On {where} the model **beats every simple baseline** on the same windows."
            if beats else f"On {where} the model **does not beat the baselines** (on the "
            "same windows, at 95%; each verdict in the table).")


def summary(root: Path, s1: Path, s2: Path, real: Path, gate: dict, minutes: float) -> str:
    test = _metrics(s1, "test")
    acc, parse = test.get("accuracy"), test.get("format_valid")
    ratio = test.get("of_bayes_rule")
    s2_test = _metrics(s2, "test")
    real_test = _metrics(real, "test")
    verdict = (ratio is not None and ratio >= TARGET_OF_BAYES and parse is not None
               and parse >= TARGET_PARSE)
    n, n_real = test.get("n"), real_test.get("n")
    lines = [
        "# Stonk-Trainer demo summary", "",
        f"Wall time: {minutes:.1f} min for the two stages and their evaluations on this "
        "machine. Every comparison below is on the same windows the model answered. One run "
        "is one draw: the spread over seeds is in BENCHMARKS.md (`make bench-robustness`).", "",
        "| what | value | target |", "| --- | --- | --- |",
        f"| Stage I test accuracy (synthetic market, {n} windows) | {_pct(acc)} | |",
        f"| the Bayes rule on the same windows (exact posterior) | "
        f"{_pct(test.get('bayes_rule_accuracy'))} | |",
        f"| model / Bayes rule | {_pct(ratio)} | >= {_pct(TARGET_OF_BAYES)} |",
        f"| the Bayes rule's expected accuracy on those windows (mean of max(p, 1 - p)) | "
        f"{_pct(test.get('bayes_expected_accuracy'))} | |",
        f"| answers that parse | {_pct(parse)} | >= {_pct(TARGET_PARSE)} |",
        f"| Stage I ROC-AUC of the stated P(UP) (exact posterior's: the ceiling) | "
        f"{_num(test.get('roc_auc'))}{_flat(test)} ({_num(test.get('bayes_roc_auc'))}) | |",
        f"| Stage I ECE of the stated P(UP) (exact posterior's) | {_num(test.get('ece'))} "
        f"({_num(test.get('bayes_ece'))}) | |",
        f"| Stage I against the simple baselines | {versus(test)} | |",
        f"| promotion gate | {'passed' if gate.get('passed') else 'not passed (Stage II forced)'} | |",
        f"| Stage II test accuracy (natural distribution) | {_pct(s2_test.get('accuracy'))} "
        f"(Bayes rule {_pct(s2_test.get('bayes_rule_accuracy'))}, ratio "
        f"{_pct(s2_test.get('of_bayes_rule'))}) | |",
        f"| Stage II model on real prices (test, {n_real} windows) | "
        f"{_pct(real_test.get('accuracy'))}, ROC-AUC {_num(real_test.get('roc_auc'))}"
        f"{_flat(real_test)} | beat the baselines |",
        f"| real prices: against the simple baselines | {versus(real_test)} | |",
        "", f"Learning target (synthetic market) met: **{'yes' if verdict else 'NO'}**", "",
        beats_line(real_test, "the bundled real prices"), "",
        "Reports:",
        f"- Stage I: {s1 / 'report.md'} (gate: {s1 / 'gate.json'})",
        f"- Stage II: {s2 / 'report.md'}",
        f"- Stage II model on bundled real prices: {real / 'report.md'}",
    ]
    return "\n".join(lines) + "\n"


def set_aside(root: Path) -> Path | None:
    """An earlier demo in ``root`` moves to ``root``-<its time>, so this one starts fresh
    (a run never mixes with an earlier run's files) and nothing is deleted."""
    if not root.is_dir() or not any(root.iterdir()):
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(root.stat().st_mtime))
    dest = root.with_name(f"{root.name}-{stamp}")
    n = 1
    while dest.exists():
        dest, n = root.with_name(f"{root.name}-{stamp}-{n}"), n + 1
    root.rename(dest)
    print(f"[demo] the earlier demo in {root} moved to {dest}", flush=True)
    return dest


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
    set_aside(root)
    s1, s2 = root / "stage1", root / "stage2"
    real = s2 / "bundled-data"  # configs/demo/stage2.yaml: eval.also_on: [bundled]
    extra = [x for kv in a.set for x in ("--set", kv)]
    common = ["--set", f"run.output_dir={root}", *extra]
    steps1 = ["--set", f"train.steps={a.stage1_steps}"] if a.stage1_steps else []
    steps2 = ["--set", f"train.steps={a.stage2_steps}"] if a.stage2_steps else []
    _run(["stage1", "--config", "configs/demo/stage1.yaml", *common,
          "--set", "run.name=stage1", *steps1])
    gate = json.loads(RunFolder(s1).gate.read_text())
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
