"""Honest baselines on the task's own splits: the bar a trained model must beat.

- ``majority``: always the direction most common in the training split (a constant score,
  so its ROC-AUC is 0.5).
- ``momentum``: tomorrow repeats the last shown day's direction (score: the last % change).
- ``trend5``: tomorrow follows the last five shown days' trend (score: their summed log
  return, so the direction of close[-1] against close[-6]; fewer days if the window is
  shorter).
- ``logistic``: L2-regularised logistic regression on the window's N % changes, standardised
  with training statistics, fitted by Newton's method on the training split only.
- ``bayes_oracle`` (synthetic source only): the exact posterior of the generating process;
  its accuracy is the ceiling.

Each is fitted on ``train`` and scored on ``val`` and ``test``: accuracy, and ROC-AUC by the
rank statistic (ties share their average rank). Prompt rows without a price window are
scored by ``majority`` only. Plain numpy; no scikit-learn.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from trainer.tasks.base import Sample

EVAL_SPLITS = ("val", "test")
L2 = 1.0
NEWTON_STEPS = 25


@dataclass(frozen=True)
class Metric:
    accuracy: float
    auc: float | None  # None when the split holds one class only
    n: int


@dataclass(frozen=True)
class Arrays:
    x: np.ndarray  # (n, N) shown % changes
    y: np.ndarray  # (n,) 1.0 for UP
    oracle: np.ndarray  # (n,) exact P(UP), NaN where unknown

    @classmethod
    def of(cls, samples: list[Sample]) -> Arrays:
        rows = [s for s in samples if s.meta.get("changes_pct")]
        width = len(rows[0].meta["changes_pct"]) if rows else 0
        return cls(np.array([s.meta["changes_pct"] for s in rows], float).reshape(len(rows),
                                                                                  width),
                   np.array([s.meta["label"] == "UP" for s in rows], float),
                   np.array([s.meta.get("up_prob", np.nan) for s in rows], float))


def roc_auc(scores: np.ndarray, y: np.ndarray) -> float | None:
    """P(score of a random UP > score of a random DOWN), ties counted half."""
    pos, n = int(y.sum()), len(y)
    if pos == 0 or pos == n:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(n)
    sorted_scores = scores[order]
    i = 0
    while i < n:  # average rank over each run of ties
        j = i
        while j + 1 < n and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2.0) / (pos * (n - pos)))


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = L2) -> Callable[[np.ndarray],
                                                                             np.ndarray]:
    """P(UP | x) from an L2-regularised logistic regression (intercept not penalised)."""
    mean, std = x.mean(0), x.std(0) + 1e-12
    design = np.hstack([np.ones((len(x), 1)), (x - mean) / std])
    w = np.zeros(design.shape[1])
    penalty = np.full(design.shape[1], l2)
    penalty[0] = 0.0
    for _ in range(NEWTON_STEPS):
        p = 1.0 / (1.0 + np.exp(-design @ w))
        grad = design.T @ (p - y) + penalty * w
        hess = (design * (p * (1 - p))[:, None]).T @ design + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break

    def predict(z: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-np.hstack([np.ones((len(z), 1)), (z - mean) / std]) @ w))

    return predict


Scorer = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # x -> (says UP, rank score)


def _majority(train: Arrays) -> Scorer:
    up = bool(train.y.mean() >= 0.5)
    return lambda x: (np.full(len(x), up), np.zeros(len(x)))


def _momentum(train: Arrays) -> Scorer:
    return lambda x: (x[:, -1] > 0, x[:, -1])


TREND_DAYS = 5


def _trend(train: Arrays) -> Scorer:
    def call(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        total = np.log1p(x[:, -TREND_DAYS:] / 100.0).sum(axis=1)
        return total > 0, total

    return call


def _logistic(train: Arrays) -> Scorer:
    predict = fit_logistic(train.x, train.y)
    return lambda x: (predict(x) > 0.5, predict(x))


BASELINES: dict[str, Callable[[Arrays], Scorer]] = {
    "majority": _majority,
    "momentum": _momentum,
    "trend5": _trend,
    "logistic": _logistic,
}


def _metric(says_up: np.ndarray, score: np.ndarray, y: np.ndarray) -> Metric:
    return Metric(float((says_up == (y == 1)).mean()), roc_auc(score, y), len(y))


def _labels(samples: list[Sample]) -> np.ndarray:
    return np.array([s.meta["label"] == "UP" for s in samples], float)


def run_baselines(splits: dict[str, list[Sample]], scorers: dict[str, Scorer] | None = None
                  ) -> dict[str, dict[str, Metric]]:
    """Baseline name -> split -> metric, fitted on ``train`` (or the ``scorers`` already
    fitted there), scored on val and test."""
    train = Arrays.of(splits["train"])
    evals = {name: Arrays.of(splits.get(name, [])) for name in EVAL_SPLITS}
    if not len(train.y):  # prompt rows only: the label base rate is all there is
        up = bool(_labels(splits["train"]).mean() >= 0.5) if splits["train"] else True
        ys = {s: _labels(splits.get(s, [])) for s in EVAL_SPLITS}
        return {"majority": {s: _metric(np.full(len(y), up), np.zeros(len(y)), y)
                             for s, y in ys.items() if len(y)}}
    out = {}
    if scorers is None:
        scorers = {name: fit(train) for name, fit in BASELINES.items()}
    for name, scorer in scorers.items():
        out[name] = {s: _metric(*scorer(a.x), a.y) for s, a in evals.items() if len(a.y)}
    if not np.isnan(train.oracle).any():
        out["bayes_oracle"] = {s: _metric(a.oracle > 0.5, a.oracle, a.y)
                               for s, a in evals.items() if len(a.y)}
    return out
