"""runs/<demo>/SUMMARY.md: the model beside the Bayes rule and the baselines on the same
windows, and a plain verdict on the real prices."""

import json

from launch.run.demo import summary


def _same(verdicts: dict[str, str]) -> dict:
    return {name: {"n": 100, "accuracy": 0.55, "roc_auc": 0.5, "diff": -0.06 if v == "worse"
                   else 0.1, "diff_lo": -0.1 if v == "worse" else 0.02,
                   "diff_hi": -0.01 if v == "worse" else 0.2, "verdict": v}
            for name, v in verdicts.items()}


def _write(run, metrics: dict) -> None:
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "test.json").write_text(json.dumps({"metrics": metrics}))


def test_summary_uses_the_realised_bayes_and_says_when_the_model_does_not_beat(tmp_path):
    s1, s2 = tmp_path / "stage1", tmp_path / "stage2"
    real = s2 / "bundled-data"
    _write(s1, {"n": 256, "accuracy": 0.84, "format_valid": 1.0, "roc_auc": 0.9,
                "bayes_rule_accuracy": 0.84, "of_bayes_rule": 1.0,
                "bayes_expected_accuracy": 0.8, "bayes_roc_auc": 0.912, "ece": 0.21,
                "bayes_ece": 0.034,
                "same_samples": _same({"majority": "better", "logistic": "better",
                                       "bayes_rule": "no clear difference"})})
    _write(s2, {"n": 256, "accuracy": 0.7})
    _write(real, {"n": 124, "accuracy": 0.492, "roc_auc": 0.485,
                  "same_samples": _same({"majority": "worse", "logistic": "worse"})})
    text = summary(tmp_path, s1, s2, real, {"passed": True}, 1.0)
    assert "| model / Bayes rule | 100.0% | >= 90.0% |" in text
    assert "| the Bayes rule on the same windows (exact posterior) | 84.0% | |" in text
    assert "expected accuracy on those windows (mean of max(p, 1 - p)) | 80.0% |" in text
    assert "Learning target (synthetic market) met: **yes**" in text
    assert "| Stage I ROC-AUC of the stated P(UP) (exact posterior's: the ceiling) | 0.900 " \
           "(0.912) | |" in text
    assert "| Stage I ECE of the stated P(UP) (exact posterior's) | 0.210 (0.034) | |" in text
    assert "majority 55.0%: model better (+10.0 pts, 95% [+2.0, +20.0])" in text
    assert "bayes_rule" not in text.split("| Stage I against")[1].split("\n")[0]
    assert "On the bundled real prices the model **does not beat the baselines**" in text
    assert "logistic 55.0%: model worse (-6.0 pts, 95% [-10.0, -1.0])" in text
