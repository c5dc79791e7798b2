"""The evaluation report: report.md tables, metrics.json, and valid PNG plots."""

import json

import numpy as np
import pytest
from matplotlib.image import imread

from trainer.gate import check_gate
from trainer.tasks.stock.config import StockGateConfig
from trainer.tasks.stock.evaluation import GATE_INDICATORS, summarize
from trainer.tasks.stock.report import read_steps, roc_points, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STEP_PNGS = ("curves.png", "components.png")
EVAL_PNGS = ("roc.png", "reliability.png", "confusion.png")
BASELINES = {"majority": {"val_acc": 0.5, "val_auc": 0.5, "test_acc": 0.52, "test_auc": 0.5},
             "logistic": {"val_acc": 0.61, "val_auc": 0.66, "test_acc": 0.6, "test_auc": 0.64}}


def record(label: str, prediction: str | None, confidence: float | None) -> dict:
    p = 0.5 if confidence is None else confidence if prediction == "UP" else 1 - confidence
    right = prediction == label
    return {"id": "x", "label": label, "prediction": prediction, "confidence": confidence,
            "p_up": p, "format_valid": confidence is not None, "correct": right,
            "reward": 0.6 * right, "components": {"accuracy": 0.6 * right},
            "reasoning_quality": 0.5, "next_change_pct": None,
            "baselines": {"majority": {"up": True, "score": 0.0}}}


def crafted_eval(answers: list[tuple[str, str | None, float | None]]) -> dict:
    records = [record(*a) for a in answers]
    return {"metrics": summarize(records), "records": records}


VAL = crafted_eval([("UP", "UP", 0.8), ("UP", "DOWN", 0.6), ("DOWN", "DOWN", 0.7),
                    ("DOWN", "UP", 0.55), ("DOWN", None, None)])
TEST = crafted_eval([("UP", "UP", 0.9), ("UP", "UP", 0.6), ("DOWN", "DOWN", 0.8),
                     ("DOWN", "UP", 0.6)])


def write_steps(run_dir, n: int = 12, tail: str = "") -> list[dict]:
    rows = [{"step": i, "reward/mean": 0.1 * i / 2, "reward/accuracy": 0.05 * i,
             "reward/coherence": 0.1, "task/accuracy": 0.5 + 0.02 * i, "loss": 0.01,
             "kl": 0.001 * i, "time/generate": 1.0, **({"eval/accuracy": 0.6} if i % 5 == 0
                                                      else {})} for i in range(1, n + 1)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)
    return rows


def assert_png(path):
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    shape = imread(path).shape
    assert len(shape) == 3 and shape[0] > 100 and shape[1] > 100


def test_full_report(tmp_path):
    rows = write_steps(tmp_path, tail='{"step": 13, "rew')  # a crash cut the last line
    gate = check_gate(rows, VAL["metrics"], StockGateConfig(), GATE_INDICATORS)
    evals = {"val": VAL, "stage2/test": TEST}
    path = write_report(tmp_path, evals, BASELINES, gate, notes=["seed 0 | 2 ranks", "b"])
    assert path == tmp_path / "report.md"
    md = path.read_text()
    assert "12 rows in metrics.jsonl (1 unreadable line(s) skipped)." in md
    assert "| reward/mean | 0.050 | 0.600 | 0.375 |" in md  # first, last, mean of last 10
    assert "| metric | val | stage2/test |" in md
    assert "| accuracy | 0.400 | 0.750 |" in md and "| n | 5 | 4 |" in md
    assert "| UP | 2 | 0 | 0 |" in md and "| DOWN | 1 | 1 | 0 |" in md  # confusion of test
    assert ("|  | val accuracy | val ROC-AUC | test accuracy | test ROC-AUC |" in md)
    assert "| majority | 0.500 | 0.500 | 0.520 | 0.500 |" in md
    assert "| logistic | 0.610 | 0.660 | 0.600 | 0.640 |" in md
    # the model beside the baselines on its own windows only, never in the full-split table
    assert "**model (" not in md and "### Full splits" in md
    assert "### On the model's own 4 windows (stage2/test)" in md
    test_auc = TEST["metrics"]["roc_auc"]
    assert f"| **model** | 0.750 | {test_auc:.3f} | n/a | n/a |" in md
    # always UP is right on the 2 UP windows; the model differs on one of 4: +1/4, and a
    # resample of 4 windows misses it a third of the time ((3/4)^4), so the interval holds 0
    assert ("| majority | 0.500 | 0.500 | +25.0 pts [+0.0, +75.0] | no clear difference |"
            in md)
    assert "Verdict: **NOT PASSED**" in md and "| val accuracy | 0.400 | >= 0.8 | FAIL |" in md
    assert "- seed 0 | 2 ranks\n- b" in md  # notes verbatim
    for name in STEP_PNGS + EVAL_PNGS:
        assert_png(tmp_path / name)
        assert f"({name})" in md

    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["evals"]["val"] == json.loads(json.dumps(VAL["metrics"]))
    assert saved["baselines"] == BASELINES and saved["gate"] == gate
    assert saved["training"]["rows"] == 12 and saved["training"]["last"]["step"] == 12
    assert saved["plots"] == [*STEP_PNGS, *EVAL_PNGS]


def test_without_metrics_jsonl_step_plots_are_skipped(tmp_path):
    md = write_report(tmp_path, {"test": TEST}).read_text()
    assert "No metrics.jsonl: step plots skipped." in md
    assert "No full-split baselines given." in md
    for name in STEP_PNGS:
        assert not (tmp_path / name).exists()
    for name in EVAL_PNGS:
        assert_png(tmp_path / name)
    assert "Promotion gate" not in md
    assert json.loads((tmp_path / "metrics.json").read_text())["training"]["rows"] == 0


def test_without_evaluations_only_step_plots(tmp_path):
    write_steps(tmp_path)
    md = write_report(tmp_path, {}).read_text()
    assert "No evaluation given." in md
    for name in STEP_PNGS:
        assert_png(tmp_path / name)
    for name in EVAL_PNGS:
        assert not (tmp_path / name).exists()


def test_single_class_eval_still_plots(tmp_path):
    one = crafted_eval([("UP", "UP", 0.7), ("UP", "DOWN", 0.9)])
    write_report(tmp_path, {"val": one})
    for name in EVAL_PNGS:
        assert_png(tmp_path / name)


def test_a_flat_confidence_is_named_next_to_its_roc_auc(tmp_path):
    flat = crafted_eval([("UP", "UP", 0.5), ("DOWN", "DOWN", 0.5), ("DOWN", "UP", 0.5)])
    assert flat["metrics"]["p_up_values"] == 1 and flat["metrics"]["roc_auc"] == 0.5
    text = write_report(tmp_path, {"val": flat, "test": TEST}).read_text()
    assert "val: every answer gave the same P(UP)" in text
    assert "test: every answer" not in text and TEST["metrics"]["p_up_values"] == 3


def test_roc_points_area_is_the_rank_auc():
    records = VAL["records"] + TEST["records"] + [record("DOWN", "UP", 0.8)]  # ties at .8, .5
    fpr, tpr = roc_points(records)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(summarize(records)["roc_auc"])
    assert roc_points([record("UP", "UP", 0.7)]) is None


def test_metrics_json_is_plain_json(tmp_path):
    odd = {"metrics": {**TEST["metrics"], "accuracy": np.float64(0.75), "ece": float("nan")},
           "records": TEST["records"]}
    write_report(tmp_path, {"test": odd})
    saved = json.loads((tmp_path / "metrics.json").read_text())["evals"]["test"]
    assert saved["accuracy"] == 0.75 and saved["ece"] is None


def test_read_steps_skips_bad_lines(tmp_path):
    assert read_steps(tmp_path) == ([], 0)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n\n[1, 2]\nnot json\n{"step": 2}\n')
    assert read_steps(tmp_path) == ([{"step": 1}, {"step": 2}], 2)
