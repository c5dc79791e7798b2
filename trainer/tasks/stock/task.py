"""StockTask: turns market windows into chat samples and scores completions."""

from __future__ import annotations

from typing import Any

from trainer.config import DataConfig, RewardConfig
from trainer.tasks.base import Sample
from trainer.tasks.stock import data as market
from trainer.tasks.stock.answer import SYSTEM_PROMPT, parse_answer, render_prompt
from trainer.tasks.stock.rewards import Facts, score


def window_to_sample(w: market.Window) -> Sample:
    user = render_prompt(w.name, w.ticker, w.dates, w.closes, w.changes_pct)
    return Sample(
        id=f"{w.ticker}:{w.next_date}",
        messages=[{"role": "system", "content": SYSTEM_PROMPT},
                  {"role": "user", "content": user}],
        meta={"label": w.label, "closes": w.closes, "changes_pct": w.changes_pct,
              "next_change_pct": w.next_change_pct},
    )


class StockTask:
    def __init__(self, data: DataConfig, reward: RewardConfig):
        self.cfg = data
        self.weights = dict(reward.weights)
        if data.source == "synthetic":
            series = [market.synthetic_series(data.synthetic_days, data.seed)]
        else:
            series = market.load_bundled(data.tickers or None)
        train, val = [], []
        for s in series:
            for w in market.windows(s, data.window):
                (train if w.next_date <= data.train_end else val).append(w)
        if data.balance:
            train = market.balance(train, data.seed)
            val = market.balance(val, data.seed + 1)
        if not train:
            raise ValueError(
                f"data: no training windows (source={data.source}, window={data.window}, "
                f"train_end={data.train_end})"
            )
        self._splits = {"train": [window_to_sample(w) for w in train],
                        "val": [window_to_sample(w) for w in val]}

    def split(self, name: str) -> list[Sample]:
        return self._splits[name]

    def score(self, sample: Sample, completion: str) -> dict[str, float]:
        m = sample.meta
        facts = Facts(label=m["label"], closes=m["closes"], changes_pct=m["changes_pct"])
        return score(parse_answer(completion), facts, self.weights)

    def diagnostics(self, sample: Sample, completion: str) -> dict[str, float]:
        ans = parse_answer(completion)
        return {"accuracy": float(ans.prediction == sample.meta["label"]),
                "format_valid": float(ans.valid),
                "predicted_up": float(ans.prediction == "UP")}

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.cfg.source}
        for name, samples in self._splits.items():
            ups = sum(s.meta["label"] == "UP" for s in samples)
            out[f"{name}_size"] = len(samples)
            out[f"{name}_up_ratio"] = round(ups / len(samples), 4) if samples else None
        return out
