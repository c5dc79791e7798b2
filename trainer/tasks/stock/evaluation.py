"""Evaluation of the stock task: one record per answer, then the metrics over the records.

A record (:func:`eval_record`) is plain JSON: the sample id, its label, the parsed
prediction and confidence, ``p_up``, whether the format is valid, the reward and its
components (``task.score``: batch components such as diversity are 0 for a lone
completion), the reasoning quality and the realised next-day % change; on the synthetic
market also ``bayes_p_up``, the exact posterior. :func:`summarize` turns records into the
metrics the report, the gate and periodic evaluation read.

Definitions:
- ``p_up``: the probability of UP the answer states (``rewards/probability.py``): c for UP at
  confidence c, 1 - c for DOWN, 0.5 for an answer without prediction or confidence;
  prior-shifted to the natural up ratio when ``reward.market_aware_confidence`` is on.
  ROC-AUC and calibration are computed on it, over every record (invalid ones sit at 0.5).
- ``accuracy``: the prediction equals the label, over every record (no prediction: wrong).
  ``up_accuracy`` / ``down_accuracy``: the same on the records whose true label is UP / DOWN
  (recall of each direction); None when there is none.
- ``reasoning_quality`` (0..1): the unweighted data-usage and coherence rewards over their
  maximum, (data_usage + coherence) / (0.2 + 0.2): the seed's "reasoning quality" share of
  the Stage I reward, independent of ``reward.weights``.
- Calibration: 10 equal bins of ``p_up`` over [0, 1] (the last includes 1); per bin the
  count, the mean ``p_up`` and the observed share of UP labels (None when empty); ECE is the
  count-weighted mean of |mean p_up - share UP|. The reliability plot draws these bins.
- ``confusion[true][predicted]``: counts, predicted UP, DOWN or ``invalid`` (no readable
  prediction).
- ``predicted_up_ratio``: the share of UP among answers with a prediction;
  ``actual_up_ratio``: the share of UP labels.
- ``same_samples``: every baseline (and on the synthetic market the Bayes rule) scored on
  exactly these records, with the model's difference, its interval and a verdict
  (``same_samples.py``); records carry each baseline's call in ``baselines``.
- Synthetic market only: ``bayes_rule_accuracy``, what the Bayes rule (the likelier
  direction under the exact posterior) scored on these windows; ``of_bayes_rule``, the
  model's accuracy over it (the same windows, so at most about 1 but for ties);
  ``bayes_expected_accuracy``, its expected accuracy on these windows, mean of
  max(p, 1 - p), a different figure; ``bayes_agreement``, the share of answers that
  pick what the rule picks; and ``bayes_roc_auc`` / ``bayes_ece``, the exact posterior's
  ROC-AUC and ECE on these windows: the ceiling for the stated P(UP)'s (a calibrated
  posterior's ECE is not 0 on a finite sample, only small).

Departure from the seed: it reported accuracy and average reward; the per-direction
accuracy, ROC-AUC and calibration are ours, because a balanced accuracy can hide a model
that always says one direction and a confidence that means nothing.
"""

from __future__ import annotations

import math

import numpy as np

from trainer.gate import VAL_ACCURACY, eval_indicator
from trainer.tasks.base import Sample
from trainer.tasks.stock.answer import ParsedAnswer
from trainer.tasks.stock.baselines import roc_auc
from trainer.tasks.stock.rewards import COMPONENTS, Facts
from trainer.tasks.stock.rewards.probability import p_up
from trainer.tasks.stock.same_samples import BAYES, compare
from trainer.tasks.stock.synthetic import bayes_accuracy

REASONING_COMPONENTS = ("data_usage", "coherence")
RELIABILITY_BINS = 10
DIRECTIONS = ("UP", "DOWN")


# The promotion gate's reading of this evaluation (the seed's Stage I gate: validation
# accuracy, and reasoning that is coherent: the mean reasoning_quality below)
GATE_INDICATORS = {**VAL_ACCURACY, "reasoning_quality": eval_indicator(
    "reasoning quality", "reasoning_quality", lambda c: c.min_reasoning_quality)}


def reasoning_quality(ans: ParsedAnswer, facts: Facts) -> float:
    """Unweighted data usage + coherence over their maximum, 0..1."""
    got = sum(COMPONENTS[n].fn(ans, facts) for n in REASONING_COMPONENTS)
    return float(got / sum(COMPONENTS[n].high for n in REASONING_COMPONENTS))


def eval_record(sample: Sample, ans: ParsedAnswer, facts: Facts,
                components: dict[str, float]) -> dict:
    """One JSON-serialisable record for one answer to ``sample``."""
    rec = {"id": sample.id, "label": facts.label, "prediction": ans.prediction,
           "confidence": ans.confidence, "p_up": float(p_up(ans, facts.prior_up)),
           "format_valid": ans.valid, "correct": ans.prediction == facts.label,
           "reward": float(sum(components.values())),
           "components": {k: float(v) for k, v in components.items()},
           "reasoning_quality": reasoning_quality(ans, facts),
           "next_change_pct": _number(facts.next_change_pct)}
    if "up_prob" in sample.meta:
        rec["bayes_p_up"] = float(sample.meta["up_prob"])
    return rec


def _number(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _mean(xs: list) -> float | None:
    return float(sum(xs) / len(xs)) if xs else None


def reliability(p: np.ndarray, y: np.ndarray,
                bins: int = RELIABILITY_BINS) -> tuple[list[dict], float | None]:
    """Equal-width bins of P(UP) ``p`` against outcomes ``y`` (1.0 for UP), and the ECE."""
    # round first so 1 - 0.9 = 0.0999.. lands in [0.1, 0.2) as written, not below it
    idx = np.clip(np.floor(np.round(p * bins, 9)).astype(int), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        hit = idx == b
        count = int(hit.sum())
        mean_p = float(p[hit].mean()) if count else None
        frac_up = float(y[hit].mean()) if count else None
        if count:
            ece += count / len(p) * abs(mean_p - frac_up)
        rows.append({"lo": b / bins, "hi": (b + 1) / bins, "count": count,
                     "mean_p": mean_p, "frac_up": frac_up})
    return rows, (float(ece) if len(p) else None)


def confusion(records: list[dict]) -> dict[str, dict[str, int]]:
    """True label -> predicted UP / DOWN / invalid (no prediction) -> count."""
    out = {t: {p: 0 for p in (*DIRECTIONS, "invalid")} for t in DIRECTIONS}
    for r in records:
        out[r["label"]][r["prediction"] or "invalid"] += 1
    return out


def _bayes(records: list[dict], same: dict[str, dict],
           accuracy: float | None) -> dict[str, float | None]:
    """The synthetic market's oracle on these windows, when every record carries it."""
    if BAYES not in same:
        return {}
    posterior = np.array([r["bayes_p_up"] for r in records], float)
    y = np.array([r["label"] == "UP" for r in records], float)
    picks = ["UP" if p > 0.5 else "DOWN" for p in posterior]
    realised = same[BAYES]["accuracy"]
    bins, ece = reliability(posterior, y)
    return {"bayes_rule_accuracy": realised,
            "of_bayes_rule": accuracy / realised if accuracy is not None and realised
            else None,
            "bayes_expected_accuracy": bayes_accuracy(list(posterior)),
            "bayes_agreement": _mean([r["prediction"] == b
                                      for r, b in zip(records, picks, strict=True)]),
            "bayes_roc_auc": roc_auc(posterior, y),
            "bayes_ece": ece,
            "bayes_reliability": bins}


def summarize(records: list[dict]) -> dict:
    """Metrics over records (see the module docstring); plain JSON, None where undefined."""
    y = np.array([r["label"] == "UP" for r in records], float)
    p = np.array([r["p_up"] for r in records], float)
    bins, ece = reliability(p, y)
    names = list(records[0]["components"]) if records else []
    made = [r["prediction"] for r in records if r["prediction"] is not None]
    out = {"n": len(records),
           "accuracy": _mean([r["correct"] for r in records]),
           **{f"{d.lower()}_accuracy": _mean([r["correct"] for r in records
                                              if r["label"] == d]) for d in DIRECTIONS},
           "format_valid": _mean([r["format_valid"] for r in records]),
           "reasoning_quality": _mean([r["reasoning_quality"] for r in records]),
           "reward/mean": _mean([r["reward"] for r in records]),
           **{f"reward/{n}": _mean([r["components"][n] for r in records]) for n in names},
           "roc_auc": roc_auc(p, y),
           # 1: every answer gave the same P(UP) (e.g. all "50%"): ROC-AUC has nothing to rank
           "p_up_values": len({round(float(x), 6) for x in p}),
           "ece": ece,
           "predicted_up_ratio": _mean([d == "UP" for d in made]),
           "actual_up_ratio": _mean(list(y)),
           "reliability": bins,
           "confusion": confusion(records)}
    out["same_samples"] = compare(records)
    out.update(_bayes(records, out["same_samples"], out["accuracy"]))
    return out
