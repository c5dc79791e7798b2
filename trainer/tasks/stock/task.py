"""StockTask: market data to chat samples, completions to reward components.

Built once per process, before training: it loads ``data.source`` (``sources.py``), cuts
windows, splits them by time per ticker (``splits.py``), balances Stage I, and keeps the data
report. Nothing reads files after that, and scoring never throws on any completion.
Evaluation (records and metrics: ``evaluation.py``) parses and scores the same way.

With ``reward.market_aware_confidence`` the confidence of an answer is read against the
training split's natural up ratio (before balancing) instead of 50/50: ``prior_up`` goes into
every :class:`Facts`, and the confidence rewards, ROC-AUC and calibration read the
prior-shifted P(UP) (formula: ``rewards/probability.py``).
"""

from __future__ import annotations

import random
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import Any

from trainer.tasks.base import Sample
from trainer.tasks.stock.answer import (
    SYSTEM_PROMPT,
    confidence_span,
    decision_options,
    decision_spans,
    parse_answer,
)
from trainer.tasks.stock.baselines import Metric, run_baselines
from trainer.tasks.stock.config import DataConfig, StockRewardConfig
from trainer.tasks.stock.evaluation import GATE_INDICATORS, eval_record, summarize
from trainer.tasks.stock.figures import figures
from trainer.tasks.stock.problems import DataError
from trainer.tasks.stock.prompt import render_prompt
from trainer.tasks.stock.rewards import Facts, score, score_batch
from trainer.tasks.stock.rewards.probability import PLAIN_PRIOR
from trainer.tasks.stock.same_samples import Fitted, baseline_calls
from trainer.tasks.stock.series import PromptRow, Window, windows_and_flat
from trainer.tasks.stock.sources import load_source
from trainer.tasks.stock.splits import SPLITS, SplitStats, assign, balance, ups
from trainer.tasks.stock.synthetic import bayes_accuracy
from trainer.tasks.stock.warm_answers import answer_and_choices

PROMPT_FIGURES = 10_000  # figures read from a prompt for the data-usage reward


def _messages(user: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def window_messages(w: Window) -> list[dict[str, str]]:
    """The chat a window is shown as (system prompt, then the window's prompt); the label
    plays no part, so ``stonk predict`` shows windows whose next day is unknown the same way."""
    return _messages(render_prompt(w.name, w.ticker, w.dates, w.closes, w.changes_pct, w.info,
                                   w.news))


def window_to_sample(w: Window, oracle=None) -> Sample:
    """A chat sample for a price window; ``oracle`` (synthetic data) adds the exact P(UP)."""
    text = " ".join([w.info, *(h for heads in w.news.values() for h in heads)])
    meta = {"ticker": w.ticker, "label": w.label, "closes": w.closes,
            "changes_pct": w.changes_pct, "dates": w.dates, "next_date": w.next_date,
            "next_change_pct": w.next_change_pct,
            # closes and changes are known exactly; other figures come from info and news
            "prompt_numbers": figures(text, PROMPT_FIGURES)[0] if text.strip() else []}
    if oracle is not None:
        meta["up_prob"] = oracle(w.changes_pct)
    return Sample(id=f"{w.ticker}:{w.next_date}", messages=window_messages(w), meta=meta)


def prompt_row_to_sample(r: PromptRow) -> Sample:
    """A chat sample for a prompt a dataset wrote; its figures are the known numbers."""
    numbers, dates = figures(r.text, PROMPT_FIGURES)
    return Sample(id=f"{r.ticker}:{r.date}", messages=_messages(r.text),
                  meta={"ticker": r.ticker, "label": r.label, "dates": dates,
                        "next_date": r.next_date, "next_change_pct": r.next_change_pct,
                        "prompt_numbers": numbers})


class StockTask:
    def __init__(self, data: DataConfig, reward: StockRewardConfig):
        self.cfg = data
        self.weights = dict(reward.weights)
        self.confidence_is_decision = reward.confidence_is_decision
        loaded = load_source(data)
        self.report = loaded.report
        self.has_oracle = loaded.oracle is not None
        self.tickers = {}  # ticker -> [rows, first date, last date]
        items: list[tuple[str, str, Window | PromptRow]] = []
        for s in loaded.series:
            ws, flat = windows_and_flat(s, data.window)
            self.report.skip("flat_next_day", flat)
            items += [(w.base_date, w.next_date, w) for w in ws]
            self._count_rows(s.ticker, s.dates)
        for r in loaded.prompts:
            items.append((r.date, r.next_date or r.date, r))
            self._count_rows(r.ticker, [r.date])
        natural = assign(items, data, self.report)
        kept = {name: balance(xs, data.seed + i) if data.balance else xs
                for i, (name, xs) in enumerate(natural.items())}
        self.stats = {name: self._stats(natural[name], kept[name]) for name in SPLITS}
        for name in SPLITS:
            self.report.skip("balance_dropped", len(natural[name]) - len(kept[name]),
                             f"{name}: {len(natural[name]) - len(kept[name])} windows")
        if not kept["train"]:
            raise DataError(f"{self.report.origin}: no training windows (window {data.window}, "
                            f"dates up to data.train_end {data.train_end}; "
                            f"skipped: {dict(self.report.skipped)})")
        self.up_ratio = self.stats["train"].up_ratio
        self.prior_up = (self.stats["train"].natural_up_ratio
                         if reward.market_aware_confidence else PLAIN_PRIOR)
        self._splits = {name: [self._to_sample(x, loaded.oracle) for x in kept[name]]
                        for name in SPLITS}

    def _count_rows(self, ticker: str, dates: list[str]) -> None:
        rows, first, last = self.tickers.get(ticker, (0, dates[0], dates[-1]))
        self.tickers[ticker] = (rows + len(dates), min(first, dates[0]), max(last, dates[-1]))

    @staticmethod
    def _stats(natural: list, kept: list) -> SplitStats:
        days = [x.next_date or x.date for x in kept]
        return SplitStats(len(natural), ups(natural), len(kept), ups(kept),
                          min(days, default=""), max(days, default=""))

    @staticmethod
    def _to_sample(item: Window | PromptRow, oracle) -> Sample:
        if isinstance(item, Window):
            return window_to_sample(item, oracle)
        return prompt_row_to_sample(item)

    # ---- the Task interface

    def split(self, name: str) -> list[Sample]:
        if name not in self._splits:
            raise KeyError(f"split {name!r}: use one of {', '.join(SPLITS)}")
        return self._splits[name]

    def facts(self, sample: Sample) -> Facts:
        m = sample.meta
        return Facts(label=m["label"], closes=m.get("closes", []),
                     changes_pct=m.get("changes_pct", []), dates=m.get("dates", []),
                     prompt_numbers=m.get("prompt_numbers", []),
                     next_change_pct=m.get("next_change_pct"), up_ratio=self.up_ratio,
                     prior_up=self.prior_up)

    def score(self, sample: Sample, completion: str) -> dict[str, float]:
        return score(parse_answer(completion), self.facts(sample), self.weights)

    def score_batch(self, samples: list[Sample],
                    completions: list[list[str]]) -> list[list[dict[str, float]]]:
        answers = [parse_answer(c) for group in completions for c in group]
        facts = [self.facts(s) for s, group in zip(samples, completions, strict=True)
                 for _ in group]
        flat = iter(score_batch(answers, facts, self.weights))
        return [[next(flat) for _ in group] for group in completions]

    def decision_spans(self, completion: str) -> list[tuple[int, int]]:
        return decision_spans(completion, confidence=self.confidence_is_decision)

    def decision_options(self, word: str) -> tuple[str, ...]:
        return decision_options(word)

    def credit_spans(self, completion: str) -> dict[str, list[tuple[int, int]]]:
        """The spans ``train.credit`` may send a reward component to (TaskEntry.credit_spans):
        "confidence", the stated figure's digits."""
        return {"confidence": confidence_span(completion)}

    def anchor_text(self, sample: Sample,
                    rng: random.Random) -> tuple[str, list[tuple[int, int]]] | None:
        """A warm-start answer (correct facts; the random lean and confidence are its
        choices) for price windows; prompt rows have no closes to read one from. The lean
        is the decision: its prior is the training split's up ratio (50/50 in Stage I), for
        the balance term (``train.balance_coef``)."""
        closes = sample.meta.get("closes")
        if not closes or len(closes) < 4:
            return None
        text, choices = answer_and_choices(closes, rng)
        lean, *rest = choices  # (bullish, bearish): UP first
        return text, [replace(lean, prior=(self.up_ratio, 1.0 - self.up_ratio)), *rest]

    def stratum(self, sample: Sample) -> str | None:
        """Stage I (``data.balance``, ``data.balanced_batches``): the label, so every
        step's prompts are as 50/50 as the set; Stage II draws the natural mix."""
        return sample.meta["label"] if self.cfg.balance and self.cfg.balanced_batches else None

    def diagnostics(self, sample: Sample, completion: str) -> dict[str, float]:
        ans = parse_answer(completion)
        correct = ans.prediction == sample.meta["label"]
        actual_up = sample.meta["label"] == "UP"
        out = {"accuracy": float(correct),
               "format_valid": float(ans.valid),
               "predicted_up": float(ans.prediction == "UP"),
               "actual_up": float(actual_up),
               "correct_up": float(correct and actual_up),
               "correct_down": float(correct and not actual_up)}
        if "up_prob" in sample.meta:  # synthetic data: does the answer pick what Bayes picks?
            bayes = "UP" if sample.meta["up_prob"] > 0.5 else "DOWN"
            out["bayes_agreement"] = float(ans.prediction == bayes)
        return out

    def aggregate(self, diags: list[dict[str, float]]) -> dict[str, float]:
        """Per-step statistics of a batch's diagnostics: means, plus the market statistics
        (predicted vs actual up ratio, accuracy on UP days and on DOWN days)."""
        n = max(len(diags), 1)
        out = {k: sum(d[k] for d in diags) / n for k in diags[0]} if diags else {}
        ups = sum(d["actual_up"] for d in diags)
        downs = len(diags) - ups
        out["up_accuracy"] = sum(d["correct_up"] for d in diags) / ups if ups else float("nan")
        out["down_accuracy"] = (sum(d["correct_down"] for d in diags) / downs
                                if downs else float("nan"))
        for k in ("correct_up", "correct_down"):
            out.pop(k, None)
        return out

    def summarize(self, records: list[dict]) -> dict[str, Any]:
        """Evaluation metrics from :meth:`eval_records` output (no second parse)."""
        return summarize(records)

    # ---- evaluation (evaluation.py defines every field and metric)

    def eval_records(self, samples: list[Sample], completions: list[str]) -> list[dict]:
        """One JSON record per (sample, completion) pair: label, prediction, confidence,
        p_up, format_valid, reward and components, reasoning_quality, next_change_pct, and
        what each baseline fitted on train says about the sample (``baselines``)."""
        out = []
        for sample, completion in zip(samples, completions, strict=True):
            ans, facts = parse_answer(completion), self.facts(sample)
            out.append(eval_record(sample, ans, facts, score(ans, facts, self.weights)))
        for rec, calls in zip(out, baseline_calls(self.fitted_baselines, samples), strict=True):
            rec["baselines"] = calls
        return out

    def evaluate(self, samples: list[Sample], completions: list[str]) -> dict[str, Any]:
        """Metrics of one completion per sample (accuracy, ROC-AUC, ECE, confusion, ...)."""
        return summarize(self.eval_records(samples, completions))

    @cached_property
    def fitted_baselines(self) -> Fitted:
        """The baselines fitted on train once, for every evaluation's same-window table."""
        return Fitted.on(self._splits["train"])

    @cached_property
    def baselines(self) -> dict[str, dict[str, Metric]]:
        return run_baselines(self._splits, self.fitted_baselines.scorers)

    def bayes_expected_accuracy(self, name: str) -> float | None:
        if not self.has_oracle:
            return None
        return bayes_accuracy([s.meta["up_prob"] for s in self._splits[name]])

    def write_report(self, out: Path, evals: dict[str, dict], gate: dict | None = None,
                     notes: list[str] | None = None) -> Path:
        from trainer.tasks.stock.report import write_report

        return write_report(out, evals, baselines=self.describe().get("baselines"), gate=gate,
                            notes=notes)

    def gate_indicators(self) -> dict[str, Any]:
        return dict(GATE_INDICATORS)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.cfg.source, "origin": self.report.origin,
                               "window": self.cfg.window, "balanced": self.cfg.balance,
                               "confidence_prior_up": round(self.prior_up, 4)}
        for name, st in self.stats.items():
            out[f"{name}_size"] = st.kept
            out[f"{name}_up_ratio"] = None if st.up_ratio is None else round(st.up_ratio, 4)
            out[f"{name}_natural_up_ratio"] = (None if st.natural_up_ratio is None
                                               else round(st.natural_up_ratio, 4))
            if self.has_oracle:
                bayes = self.bayes_expected_accuracy(name)
                out[f"{name}_bayes_expected_accuracy"] = None if bayes is None else round(bayes, 4)
        out["skipped"] = dict(self.report.skipped)
        out["baselines"] = {
            name: {f"{s}_{k}": None if v is None else round(v, 4)
                   for s, m in by_split.items() for k, v in (("acc", m.accuracy), ("auc", m.auc))}
            for name, by_split in self.baselines.items()}
        return out


def from_config(cfg) -> StockTask:
    """The task a StageConfig with ``task: stock`` names (``registry.build_task``)."""
    return StockTask(cfg.data, cfg.reward)
