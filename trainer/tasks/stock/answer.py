"""The answer format, its parser (never throws) and the prompt text.

The model answers in three labelled lines; reasoning first, so the model states what it
read from the data before it commits::

    Reasoning: Close went 150.00 -> 153.50 (+2.33%) -> 156.20 (+1.76%): 2 up days, 0 down
    days, so the trend is up.
    Prediction: UP
    Confidence: 87%
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

SYSTEM_PROMPT = (
    "You are a market analyst. Read the closing prices and answer in exactly this format:\n"
    "Reasoning: <what the prices and % changes show>\n"
    "Prediction: UP or DOWN\n"
    "Confidence: <0-100>%"
)

MAX_PARSE_CHARS = 20_000  # longer answers are cut before parsing (bounded regex time)
_PRED = re.compile(r"prediction\s*[:=]\s*\**\s*(up|down)\b", re.IGNORECASE)
_CONF = re.compile(r"confidence\s*[:=]\s*\**\s*(\d{1,3}(?:\.\d+)?)\s*%?", re.IGNORECASE)
_REASON = re.compile(r"reasoning\s*[:=]\s*(.*?)(?=\n\s*(?:prediction|confidence)\s*[:=]|\Z)",
                     re.IGNORECASE | re.DOTALL)


@dataclass
class ParsedAnswer:
    prediction: str | None = None  # "UP" | "DOWN"
    confidence: float | None = None  # 0..1
    reasoning: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return self.prediction is not None and self.confidence is not None


def parse_answer(text: object) -> ParsedAnswer:
    """Parse a completion; any input gives a ParsedAnswer (problems say what was wrong)."""
    out = ParsedAnswer()
    if not isinstance(text, str):
        out.problems.append(f"not text: {type(text).__name__}")
        return out
    text = text[:MAX_PARSE_CHARS]
    preds = _PRED.findall(text)
    if not preds:
        out.problems.append("no 'Prediction: UP|DOWN' line")
    else:
        out.prediction = preds[0].upper()
        if len({p.upper() for p in preds}) > 1:
            out.problems.append("conflicting predictions")
            out.prediction = None
    conf = _CONF.search(text)
    if conf is None:
        out.problems.append("no 'Confidence: N%' line")
    else:
        value = float(conf.group(1))
        if value > 100:
            out.problems.append(f"confidence {value} is above 100")
        else:
            out.confidence = value / 100.0
    reason = _REASON.search(text)
    if reason is None or not reason.group(1).strip():
        out.problems.append("no 'Reasoning:' text")
    else:
        out.reasoning = reason.group(1).strip()
    return out


def fmt_price(p: float) -> str:
    return f"{p:.2f}" if p >= 10 else f"{p:.4f}"


def render_prompt(name: str, ticker: str, dates: list[str], closes: list[float],
                  changes_pct: list[float]) -> str:
    lines = [f"Stock: {ticker} ({name})",
             f"Closing prices for the last {len(dates)} trading days:"]
    for date, close, chg in zip(dates, closes[1:], changes_pct, strict=True):
        lines.append(f"{date}: {fmt_price(close)} ({chg:+.2f}%)")
    lines.append("Will the next trading day's close be UP or DOWN?")
    return "\n".join(lines)
