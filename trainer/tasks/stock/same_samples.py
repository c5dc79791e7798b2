"""The model against the Bayes rule and every baseline on exactly the windows it answered.

A model's accuracy on 256 test windows and a baseline's on the whole test split are not
comparable: the windows differ, and on the synthetic market the Bayes rule's *realised*
accuracy on a given set of windows moves several points around its expected value (0.840
against 0.800 on the demo's 256 windows). So each evaluation record carries what every
baseline (fitted on train) says about its window (:func:`baseline_calls`), and
:func:`compare` scores the model and each of them on the same records:

- ``accuracy`` and ``roc_auc`` of each baseline on those records;
- ``diff``: model accuracy minus the baseline's, with a 95% paired bootstrap interval
  (``diff_lo``, ``diff_hi``; resampling the windows, both sides together, seeded so the
  same records always give the same interval); 128-256 windows are few, and an interval
  that straddles 0 is not a win;
- ``verdict``: ``better`` (interval above 0), ``worse`` (below 0), or ``no clear
  difference``.

On the synthetic market the Bayes rule (predict the likelier direction under the exact
posterior) is one of the rows, ``bayes_rule``: what it actually scored on these windows.
Its expected accuracy (mean of max(p, 1 - p), conditioning on the windows, not on their
labels) is a separate figure, ``bayes_expected_accuracy``, in the metrics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from trainer.tasks.base import Sample
from trainer.tasks.stock.baselines import BASELINES, Arrays, Scorer, roc_auc

BOOTSTRAP = 2000
BOOTSTRAP_SEED = 0
LEVEL = 0.95
BAYES = "bayes_rule"
VERDICTS = ("better", "worse", "no clear difference")


@dataclass(frozen=True)
class Fitted:
    """The baselines fitted on a training split, once: the majority direction, the window
    width the fit reads, and each window baseline's scorer."""
    up_majority: bool
    width: int
    scorers: dict[str, Scorer]

    @classmethod
    def on(cls, train: list[Sample]) -> Fitted:
        arrays = Arrays.of(train)
        ys = [s.meta["label"] == "UP" for s in train]
        scorers = ({name: fit(arrays) for name, fit in BASELINES.items()}
                   if len(arrays.y) else {})
        return cls(bool(np.mean(ys) >= 0.5) if ys else True, arrays.x.shape[1], scorers)


def baseline_calls(fitted: Fitted, samples: list[Sample]) -> list[dict[str, dict]]:
    """Per sample, what each baseline says about it: name -> {"up": bool, "score": float}
    (score ranks for ROC-AUC). Samples without a price window (prompt rows), or of another
    length than train's, get ``majority`` only."""
    out: list[dict[str, dict]] = [{"majority": {"up": fitted.up_majority, "score": 0.0}}
                                  for _ in samples]
    rows = [i for i, s in enumerate(samples)
            if len(s.meta.get("changes_pct") or ()) == fitted.width]
    if not rows or not fitted.scorers:
        return out
    x = np.array([samples[i].meta["changes_pct"] for i in rows], float)
    for name, scorer in fitted.scorers.items():
        up, score = scorer(x)
        for j, i in enumerate(rows):
            out[i][name] = {"up": bool(up[j]), "score": float(score[j])}
    return out


def bayes_rule_accuracy(samples: list[Sample]) -> float:
    """What the Bayes rule scored on these synthetic windows (their ``up_prob``, labels)."""
    return float(np.mean([(s.meta["up_prob"] > 0.5) == (s.meta["label"] == "UP")
                          for s in samples]))


def paired_interval(model_right: np.ndarray, other_right: np.ndarray,
                    resamples: int = BOOTSTRAP, seed: int = BOOTSTRAP_SEED,
                    level: float = LEVEL) -> tuple[float, float, float]:
    """Mean of model_right - other_right and its paired bootstrap percentile interval."""
    d = model_right.astype(float) - other_right.astype(float)
    if not len(d):
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return float(d.mean()), float(lo), float(hi)


def verdict(lo: float, hi: float) -> str:
    if lo > 0:
        return "better"
    if hi < 0:
        return "worse"
    return "no clear difference"


def _calls(records: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Name -> (says UP, score) over every record, for the baselines every record carries."""
    names = [n for n in (records[0].get("baselines") or {})
             if all(n in (r.get("baselines") or {}) for r in records)]
    out = {n: (np.array([r["baselines"][n]["up"] for r in records], bool),
               np.array([r["baselines"][n]["score"] for r in records], float))
           for n in names}
    if all("bayes_p_up" in r for r in records):
        p = np.array([r["bayes_p_up"] for r in records], float)
        out[BAYES] = (p > 0.5, p)
    return out


def compare(records: list[dict]) -> dict[str, dict]:
    """Baseline name -> its accuracy and ROC-AUC on these records, and the model's
    difference from it with interval and verdict (see the module docstring)."""
    if not records:
        return {}
    y = np.array([r["label"] == "UP" for r in records])
    model_right = np.array([bool(r["correct"]) for r in records])
    out = {}
    for name, (up, score) in _calls(records).items():
        right = up == y
        diff, lo, hi = paired_interval(model_right, right)
        out[name] = {"n": len(records), "accuracy": float(right.mean()),
                     "roc_auc": roc_auc(score, y.astype(float)), "diff": diff,
                     "diff_lo": lo, "diff_hi": hi, "verdict": verdict(lo, hi)}
    return out


def beats_all(same: dict[str, dict]) -> bool | None:
    """Whether the model is ``better`` than every simple baseline (the Bayes rule aside);
    None when there are none."""
    simple = [v["verdict"] for k, v in same.items() if k != BAYES]
    return all(v == "better" for v in simple) if simple else None
