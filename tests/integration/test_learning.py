"""The demo's Stage I learns: `stonk stage1` on configs/demo/stage1.yaml exactly as `make demo`
runs it (its steps, prompts, seed and learning rate; only the output folder and the ports
moved), then its final evaluation on the 256 synthetic test windows against the Bayes rule on
the same windows.

Part of `make test` (CI) since forked worker starts made room for it; `make test-learning`
(marker ``learning``) runs it alone: the run takes ~3.5 min on 2 cores. The bar follows from
the task and the measured spread, not from one run: the Bayes rule is the best any policy can
do on these windows, and over train.seed 0-9 the recipe's worst run reached 92.1 % of it
(BENCHMARKS.md 12f; median 100 %), so below 90 % learning broke (a sign flipped, an advantage
zeroed, an adapter not pushed). On the earlier shipped model (lean after the up count digit)
the same run at `train.learning_rate=1e-9` (the warm start's answers) scored 0.621, 74.0 % of
the Bayes rule, ROC-AUC 0.512, gate not passed: each learning assertion here fails on it. Issue
32 asks 95 % of every seed; the bar rises to it once the recipe holds it. The stated P(UP) must
rank the windows (ROC-AUC >= 0.70: the posterior's 0.842; 12f's seed 0 0.777), which it does
only when the lean follows the evidence and the figures hold; in 12f two of ten seeds fall
under it (seed 4 0.616, seed 2 0.25, its figures collapsed to 0-10 %) and issue 32's "within
0.03 of the posterior's" holds in 2 of 10.
Nothing is compared exactly: floating point differs between CPUs, the margin over the bar is
what holds on any box.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.integration.helpers import DEMO, REPO, set_flags

pytestmark = [pytest.mark.integration, pytest.mark.learning]
OF_BAYES = 0.90
MIN_ROC_AUC = 0.70


@pytest.fixture(scope="module")
def demo_stage1(tmp_path_factory, warm_model):
    root = tmp_path_factory.mktemp("learning")
    cmd = [sys.executable, "-m", "launch.cli", "stage1", "--config", DEMO,
           *set_flags(f"run.output_dir={root}", "run.name=s1", "rollout.base_port=8500",
                      "launch.main_process_port=29680")]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1500,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    out = proc.stdout + proc.stderr
    (root / "s1.log").write_text(out)
    assert proc.returncode == 0, out[-4000:]
    return root / "s1"


def _test_metrics(run):
    return json.loads((run / "eval" / "test.json").read_text())["metrics"]


def test_the_demos_stage1_nears_the_bayes_rule_and_passes_its_gate(demo_stage1):
    m = _test_metrics(demo_stage1)
    assert m["n"] == 256 and m["format_valid"] >= 0.99, m
    # the realised Bayes rule on these windows (0.840 on the shipped data), not its 0.8 in
    # expectation: the model is held to what was reachable on the same samples
    assert m["of_bayes_rule"] == pytest.approx(m["accuracy"] / m["bayes_rule_accuracy"])
    assert m["of_bayes_rule"] >= OF_BAYES, (m["accuracy"], m["bayes_rule_accuracy"])
    gate = json.loads((demo_stage1 / "gate.json").read_text())
    assert gate["passed"], [i for i in gate["indicators"] if not i["passed"]]


def test_the_stated_confidence_ranks_the_windows_with_the_evidence(demo_stage1):
    m = _test_metrics(demo_stage1)
    assert m["roc_auc"] >= MIN_ROC_AUC, (m["roc_auc"], m["bayes_roc_auc"])
