"""The evaluation report of a run folder: ``report.md``, ``metrics.json`` and PNG plots.

:func:`write_report` reads the run's ``metrics.jsonl`` when there is one (per-step rows; some
may carry ``eval/<metric>`` keys from periodic evaluation) and is given the evaluations, the
baselines, the gate result and free notes. It writes into the run folder:

- ``report.md``: training summary, one column of metrics per evaluation, the confusion
  matrix of the last evaluation, per evaluation the model beside every baseline on the same
  windows (``same_samples`` in its metrics: difference, interval, verdict), the baselines on
  the full splits (labelled as such), the gate table, the plots and the notes (verbatim).
- ``metrics.json``: every number above (evaluations without their per-answer records).
- ``curves.png`` (``reward/mean``, ``task/accuracy`` and any ``eval/accuracy`` over steps) and
  ``components.png`` (each ``reward/<component>``): only when metrics.jsonl has rows.
- ``roc.png``, ``reliability.png`` (one curve per evaluation) and ``confusion.png`` (the last
  evaluation): only when there are evaluations.

Inputs: ``evals`` maps a label ("val", "test", "stage2/test") to ``{"metrics": ...,
"records": ...}`` as ``StockTask.evaluate`` / ``eval_records`` return them (records need
``label`` and ``p_up``). ``baselines`` is ``StockTask.describe()["baselines"]`` (the full
splits): name -> {"val_acc", "val_auc", "test_acc", ...}.
A crash can cut the last line of metrics.jsonl; unreadable lines are skipped and counted.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from common.files import atomic_write_text

STEPS_FILE = "metrics.jsonl"
CURVES = ("reward/mean", "task/accuracy")  # curves.png lines; eval/accuracy adds points
TRAIN_PREFIXES, TRAIN_SCALARS = ("reward/", "task/"), ("loss", "kl")  # training table rows
SUMMARY_TAIL = 10  # the training table's "mean of the last N steps"


def read_steps(run_dir: str | Path) -> tuple[list[dict], int]:
    """The rows of ``run_dir/metrics.jsonl`` (none if absent) and how many lines were bad."""
    path = Path(run_dir) / STEPS_FILE
    if not path.is_file():
        return [], 0
    rows, bad = [], 0
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad += bool(line.strip())
    return rows, bad


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of ``key`` over the rows that carry a finite value of it."""
    pts = [(r.get("step", i + 1), r[key]) for i, r in enumerate(rows) if _finite(r.get(key))]
    return [float(x) for x, _ in pts], [float(y) for _, y in pts]


def roc_points(records: list[dict]) -> tuple[list[float], list[float]] | None:
    """ROC points of P(UP) against the labels (UP positive), ties taken as one step (so the
    trapezoid area equals the rank ROC-AUC); None with one class only."""
    s = np.array([r["p_up"] for r in records], float)
    y = np.array([r["label"] == "UP" for r in records])
    pos, neg = int(y.sum()), int((~y).sum())
    if not pos or not neg:
        return None
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    ends = np.r_[np.diff(s) != 0, True]  # the last answer of each run of equal scores
    fpr, tpr = np.cumsum(~y)[ends] / neg, np.cumsum(y)[ends] / pos
    return [0.0, *map(float, fpr)], [0.0, *map(float, tpr)]


def _clean(x: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, non-finite floats to None."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    return None if isinstance(x, float) and not math.isfinite(x) else x


# ---- markdown


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v).replace("|", "\\|")  # a pipe would end the table cell


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows] + [""]


def _training_md(rows: list[dict], bad: int) -> list[str]:
    if not rows:
        return ["## Training", "", f"No {STEPS_FILE}: step plots skipped.", ""]
    keys = list(dict.fromkeys(k for r in rows for k in r
                              if k.startswith(TRAIN_PREFIXES) or k in TRAIN_SCALARS))
    table = []
    for key in keys:
        _, ys = series(rows, key)
        if ys:
            tail = ys[-SUMMARY_TAIL:]
            table.append([key, ys[0], ys[-1], sum(tail) / len(tail)])
    out = ["## Training", "", f"{len(rows)} rows in {STEPS_FILE}"
           + (f" ({bad} unreadable line(s) skipped)" if bad else "") + ".", ""]
    return out + _table(["metric", "first", "last", f"mean of last {SUMMARY_TAIL}"], table)


def _evals_md(evals: dict[str, dict]) -> list[str]:
    if not evals:
        return ["## Evaluation", "", "No evaluation given.", ""]
    metrics = {label: e["metrics"] for label, e in evals.items()}
    keys = list(dict.fromkeys(k for m in metrics.values() for k, v in m.items()
                              if not isinstance(v, (dict, list))))
    rows = [[k, *(m.get(k) for m in metrics.values())] for k in keys]
    out = ["## Evaluation", ""] + _table(["metric", *metrics], rows)
    for label, m in metrics.items():
        if m.get("p_up_values") == 1 and m.get("n"):
            out += [f"{label}: every answer gave the same P(UP) (the stated confidence never "
                    "moved), so ROC-AUC has nothing to rank and is 0.5 by construction; "
                    "accuracy is the measure here.", ""]
    label, last = list(metrics.items())[-1]
    if "confusion" in last:
        matrix = last["confusion"]
        cols = list(next(iter(matrix.values())))
        out += [f"Confusion ({label}; rows: true, columns: predicted):", ""]
        out += _table(["true \\ predicted", *cols],
                      [[t, *(matrix[t][c] for c in cols)] for t in matrix])
    return out


def _pts(x: float) -> str:
    return f"{100 * x:+.1f}"


def same_samples_rows(m: dict) -> list[list[Any]]:
    """The model and each baseline on the model's own windows: name, accuracy, ROC-AUC,
    model minus baseline with its interval (points), verdict."""
    rows: list[list[Any]] = [["**model**", m.get("accuracy"), m.get("roc_auc"), None, None]]
    for name, v in (m.get("same_samples") or {}).items():
        rows.append([name, v["accuracy"], v["roc_auc"],
                     f"{_pts(v['diff'])} pts [{_pts(v['diff_lo'])}, {_pts(v['diff_hi'])}]",
                     v["verdict"]])
    return rows


def _same_md(label: str, m: dict) -> list[str]:
    out = [f"### On the model's own {m.get('n')} windows ({label})", "",
           "Each baseline fitted on train and scored on exactly the windows the model "
           "answered. Model - baseline: accuracy points with a 95% paired bootstrap interval; "
           "the model is better or worse only when the interval excludes 0.", ""]
    out += _table(["", "accuracy", "ROC-AUC", "model - baseline", "model is"],
                  same_samples_rows(m))
    if m.get("bayes_expected_accuracy") is not None:
        out += [f"bayes_rule is what the Bayes rule scored on these windows; model / Bayes "
                f"rule: {_fmt(m.get('of_bayes_rule'))}. Its expected accuracy here (mean of "
                f"max(p, 1 - p), before the labels are drawn): "
                f"{_fmt(m.get('bayes_expected_accuracy'))}.", ""]
    if m.get("bayes_ece") is not None:
        out += [f"Stated confidence against the exact posterior's on these windows (the "
                f"ceiling): ROC-AUC {_fmt(m.get('roc_auc'))} (posterior "
                f"{_fmt(m.get('bayes_roc_auc'))}), ECE {_fmt(m.get('ece'))} (posterior "
                f"{_fmt(m.get('bayes_ece'))}).", ""]
    return out


def _baselines_md(baselines: dict | None, evals: dict[str, dict]) -> list[str]:
    out = ["## Baselines", ""]
    for label, e in evals.items():
        if e["metrics"].get("same_samples"):
            out += _same_md(label, e["metrics"])
    if not baselines:
        return out + ["No full-split baselines given.", ""]
    cols = list(dict.fromkeys(k for by in baselines.values() for k in by))
    splits = list(dict.fromkeys(c.rsplit("_", 1)[0] for c in cols))
    cols = [f"{s}_{m}" for s in splits for m in ("acc", "auc")]
    rows = [[name, *(by.get(c) for c in cols)] for name, by in baselines.items()]
    header = ["", *(c.replace("_acc", " accuracy").replace("_auc", " ROC-AUC") for c in cols)]
    return out + ["### Full splits", "", "Fitted on train, scored on every window of each "
                  "split (not only those the model answered): not comparable with the "
                  "model's figures above.", ""] + _table(header, rows)


def _gate_md(gate: dict | None) -> list[str]:
    if gate is None:
        return []
    rows = [[i.get("label", i["name"]), i["value"], f"{i['op']} {i['threshold']:g}",
             "pass" if i["passed"] else "FAIL"] for i in gate["indicators"]]
    verdict = "PASSED" if gate["passed"] else "NOT PASSED"
    out = ["## Promotion gate (Super Saiyan)", "", f"Verdict: **{verdict}**", ""]
    out += _table(["indicator", "value", "needs", "verdict"], rows)
    notes = [f"- {n}" for n in gate.get("notes", [])]
    return out + (notes + [""] if notes else [])


# ---- plots


def _plots(run_dir: Path, rows: list[dict], evals: dict[str, dict]) -> list[Path]:
    from trainer.tasks.stock import plots  # matplotlib only when a report is written

    out = []
    if rows:
        lines = {k: xy for k in CURVES if (xy := series(rows, k))[0]}
        points = {k: xy for k in ("eval/accuracy",) if (xy := series(rows, k))[0]}
        out.append(plots.step_lines(run_dir / "curves.png", "Reward and accuracy", lines,
                                    points))
        comps = [k for k in dict.fromkeys(k for r in rows for k in r)
                 if k.startswith("reward/") and k not in ("reward/mean", "reward/std")]
        out.append(plots.step_lines(run_dir / "components.png", "Reward components",
                                    {k: series(rows, k) for k in comps}, ylabel="reward"))
    if evals:
        out += _eval_plots(plots, run_dir, evals)
    return out


def _eval_plots(plots, run_dir: Path, evals: dict[str, dict]) -> list[Path]:
    rocs, rel = {}, {}
    for label, e in evals.items():
        m, pts = e["metrics"], roc_points(e.get("records") or [])
        if pts is not None:
            rocs[f"{label} (AUC {_fmt(m.get('roc_auc'))})"] = pts
        for who, key, ece in (("", "reliability", "ece"),
                              (" Bayes posterior", "bayes_reliability", "bayes_ece")):
            bins = [b for b in m.get(key) or [] if b["count"]]
            if bins:
                rel[f"{label}{who} (ECE {_fmt(m.get(ece))})"] = (
                    [b["mean_p"] for b in bins], [b["frac_up"] for b in bins])
    out = [
        plots.against_diagonal(run_dir / "roc.png", "ROC (positive: UP, score: P(UP))",
                               "false positive rate", "true positive rate", rocs, "chance"),
        plots.against_diagonal(run_dir / "reliability.png", "Reliability (10 bins of P(UP))",
                               "mean P(UP) in bin", "share of UP in bin", rel,
                               "perfectly calibrated", style="o-")]
    label, last = list(evals.items())[-1]
    matrix = last["metrics"].get("confusion")
    if matrix:
        cols = list(next(iter(matrix.values())))
        out.append(plots.confusion(run_dir / "confusion.png", f"Confusion ({label})",
                                   list(matrix), cols,
                                   [[matrix[t][c] for c in cols] for t in matrix]))
    return out


# ---- the report


def write_report(run_dir: str | Path, evals: dict[str, dict], baselines: dict | None = None,
                 gate: dict | None = None, notes: list[str] | None = None) -> Path:
    """Write report.md, metrics.json and the PNG plots into ``run_dir``; return report.md."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    rows, bad = read_steps(run_dir)
    pngs = _plots(run_dir, rows, evals)
    md = [f"# Evaluation report: {run_dir.name}", ""]
    md += _training_md(rows, bad) + _evals_md(evals) + _baselines_md(baselines, evals)
    md += _gate_md(gate)
    md += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in pngs] + [""]
    if notes:
        md += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    report = run_dir / "report.md"
    atomic_write_text(report, "\n".join(md))
    summary = {"evals": {k: e["metrics"] for k, e in evals.items()}, "baselines": baselines,
               "gate": gate, "notes": notes or [], "plots": [p.name for p in pngs],
               "training": {"rows": len(rows), "unreadable_lines": bad,
                            "last": rows[-1] if rows else None}}
    atomic_write_text(run_dir / "metrics.json",
                      json.dumps(_clean(summary), indent=2, allow_nan=False) + "\n")
    return report
