"""The "Super Saiyan" promotion gate from Stage I to Stage II: indicators, verdict, gate.json.

The seed promotes a Stage I model when, together: the average batch reward over the last K
steps is above 0.7, validation accuracy is above 80%, the reasoning is coherent, and the
training loss is low and stable. Each is an indicator here, with its value, threshold, the
comparison and a verdict; the gate passes when all pass. Thresholds and windows are
``gate.*`` (:class:`trainer.config.GateConfig`).

| indicator | value | passes when |
| --- | --- | --- |
| avg_reward | mean ``reward/mean`` over the last ``reward_window`` steps | >= min_avg_reward |
| val_accuracy | ``accuracy`` of the final evaluation (``eval.split``) | >= min_val_accuracy |
| (the task's) | e.g. the stock task's ``reasoning_quality`` of that evaluation (0..1) | >= min_reasoning_quality |
| loss_abs_mean | abs(mean ``loss``) over the last ``loss_window`` steps | <= max_abs_loss |
| loss_std | population std of ``loss`` over the same steps | <= max_loss_std |

The evaluation's indicators are the task's (``Task.gate_indicators``, built with
:func:`eval_indicator`): what its evaluation measures is the task's to say.

Departures from the seed, and why: "above" is read as ``>=`` (a threshold is configuration,
so a strict bound is one epsilon away); "the last epochs" becomes the last ``loss_window``
steps, since GRPO draws fresh prompts every step rather than passing over a fixed set; and
"low" is the absolute mean, because the GRPO loss sits around zero and may be negative.

Robustness: a window uses the last rows that carry the metric; with fewer than the window it
uses what there is and the result says so (``window.short`` and a note). A missing or
non-finite value makes that indicator fail with value None; it never raises.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.files import atomic_write_text
from trainer.config import GateConfig
from trainer.run_folder import RunFolder

FAILS_AS = {">=": "<", "<=": ">"}  # how a failed comparison reads


class GateError(ValueError):
    """gate.json is missing or is not a gate result; the message names the file."""


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def window(steps: list[dict], key: str, size: int) -> tuple[list[float] | None, int]:
    """The last ``size`` values of ``key`` among rows that carry it, and how many rows those
    are; the values are None when there are none or one of them is not a finite number."""
    tail = [r[key] for r in steps if key in r][-size:]
    if not tail or not all(_finite(v) for v in tail):
        return None, len(tail)
    return [float(v) for v in tail], len(tail)


def _mean(xs: list[float] | None) -> float | None:
    return None if not xs else math.fsum(xs) / len(xs)  # fsum: twenty 0.7s average 0.7


def _abs(x: float | None) -> float | None:
    return None if x is None else abs(x)


def _std(xs: list[float] | None) -> float | None:
    if not xs:
        return None
    m = math.fsum(xs) / len(xs)
    return math.sqrt(math.fsum((x - m) ** 2 for x in xs) / len(xs))


def _eval_value(final_eval: dict | None, key: str) -> float | None:
    v = (final_eval or {}).get(key)
    return float(v) if _finite(v) else None


Value = Callable[[list[dict], dict | None, GateConfig], float | None]


@dataclass(frozen=True)
class Indicator:
    label: str  # how a human line names it
    op: str  # ">=" or "<="
    threshold: Callable[[GateConfig], float]
    value: Value


def eval_indicator(label: str, metric: str, threshold: Callable[[GateConfig], float]) -> Indicator:
    """An indicator of the final evaluation: its ``metric`` >= ``threshold(gate config)``."""
    return Indicator(label, ">=", threshold, lambda s, e, c: _eval_value(e, metric))


# What every task's training shows (the reward and the loss); the task adds what its final
# evaluation shows (``Task.gate_indicators``; without one: its accuracy).
AVG_REWARD = Indicator(
    "avg reward", ">=", lambda c: c.min_avg_reward,
    lambda s, e, c: _mean(window(s, "reward/mean", c.reward_window)[0]))
LOSS_INDICATORS: dict[str, Indicator] = {
    "loss_abs_mean": Indicator(
        "abs mean loss", "<=", lambda c: c.max_abs_loss,
        lambda s, e, c: _abs(_mean(window(s, "loss", c.loss_window)[0]))),
    "loss_std": Indicator(
        "loss std", "<=", lambda c: c.max_loss_std,
        lambda s, e, c: _std(window(s, "loss", c.loss_window)[0])),
}
VAL_ACCURACY = {"val_accuracy": eval_indicator("val accuracy", "accuracy",
                                               lambda c: c.min_val_accuracy)}


def indicators(evaluation: dict[str, Indicator] | None = None) -> dict[str, Indicator]:
    """The gate's indicators in report order: the reward, the task's evaluation ones, the
    loss."""
    return {"avg_reward": AVG_REWARD, **(VAL_ACCURACY if evaluation is None else evaluation),
            **LOSS_INDICATORS}


def _passes(value: float | None, op: str, threshold: float) -> bool:
    if value is None:
        return False
    return value >= threshold if op == ">=" else value <= threshold


def _windows(steps: list[dict], cfg: GateConfig) -> tuple[dict[str, Any], list[str]]:
    out: dict[str, Any] = {}
    notes = []
    for name, key, size in (("reward", "reward/mean", cfg.reward_window),
                            ("loss", "loss", cfg.loss_window)):
        values, used = window(steps, key, size)
        out[f"{name}_window"], out[f"{name}_steps"] = size, used
        if used < size:
            notes.append(f"{key}: {used} step(s), fewer than gate.{name}_window ({size}): "
                         f"used {'all of them' if used else 'none'}")
        if used and values is None:
            notes.append(f"{key}: a missing or non-finite value in the last {used} step(s)")
    out["short"] = out["reward_steps"] < cfg.reward_window or out["loss_steps"] < cfg.loss_window
    return out, notes


def check_gate(steps: list[dict], final_eval: dict | None, cfg: GateConfig,
               evaluation: dict[str, Indicator] | None = None) -> dict[str, Any]:
    """Every indicator's value, threshold and verdict, and the overall verdict (plain JSON).

    ``steps``: the rows of metrics.jsonl in order; ``final_eval``: the final evaluation's
    metrics (``Task.summarize``); ``evaluation``: the task's indicators of it
    (``Task.gate_indicators``; None: accuracy only)."""
    results = []
    for name, ind in indicators(evaluation).items():
        value, threshold = ind.value(steps, final_eval, cfg), float(ind.threshold(cfg))
        results.append({"name": name, "label": ind.label, "value": value,
                        "threshold": threshold, "op": ind.op,
                        "passed": _passes(value, ind.op, threshold)})
    win, notes = _windows(steps, cfg)
    if final_eval is None:
        notes.append("no final evaluation: its indicators fail")
    return {"passed": all(i["passed"] for i in results), "indicators": results,
            "window": win, "notes": notes}


def failed_indicators(result: dict[str, Any]) -> list[str]:
    """One human line per failed indicator, e.g. ``val accuracy 0.620 < 0.800``."""
    lines = []
    for i in result.get("indicators", []):
        if i.get("passed"):
            continue
        label, op, thr = i.get("label", i["name"]), i["op"], i["threshold"]
        if i.get("value") is None:
            lines.append(f"{label} missing (needs {op} {thr:.3f})")
        else:
            lines.append(f"{label} {i['value']:.3f} {FAILS_AS[op]} {thr:.3f}")
    return lines


def write_gate(run_dir: str | Path, result: dict[str, Any]) -> Path:
    """Write ``run_dir/gate.json`` atomically (temp file, then rename)."""
    path = RunFolder(run_dir).gate
    atomic_write_text(path, json.dumps(result, indent=2, allow_nan=False) + "\n")
    return path


def read_gate(run_dir: str | Path) -> dict[str, Any]:
    """Read ``run_dir/gate.json``; :class:`GateError` naming the file if missing or corrupt."""
    path = RunFolder(run_dir).gate
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise GateError(f"{path}: no gate result; the Stage I evaluation writes it") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GateError(f"{path}: unreadable gate result: {exc}") from None
    if not (isinstance(data, dict) and isinstance(data.get("passed"), bool)
            and isinstance(data.get("indicators"), list)):
        raise GateError(f"{path}: not a gate result (needs 'passed': true/false and "
                        f"'indicators': [...])")
    return data
