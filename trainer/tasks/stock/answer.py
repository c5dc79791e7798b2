"""The answer format and its parser, which returns a typed result and never throws.

The model answers in labelled lines, reasoning first, so it states what it read from the
data before it commits; ``Expected change`` is optional::

    Reasoning: The price rose from 150.00 to 153.50 (+2.33%), then to 156.20 (+1.76%).
    Two consecutive up days, a total gain of 4.13%, so the trend is up.
    Prediction: UP
    Confidence: 87%
    Expected change: +0.8%

This is the seed's reference example (AAPL 150.00 -> 153.50 -> 156.20, UP, 87%) in our
labels. Departures from the seed, and why: one next day instead of three (the label is one
day), labelled lines instead of the seed's ``Day X: ...`` lines (one unambiguous parse), the
expected % change optional (the direction is what Stage I is judged on).

Parsing rules: labels are case-insensitive and may be bold (``**Prediction:** UP``);
``Prediction`` must be UP or DOWN, and two different predictions void it; ``Confidence`` is
a percentage 0-100 (the % sign is optional) and is kept as a fraction 0..1; ``Expected
change`` is a signed % (no sign means up); the reasoning is the text after ``Reasoning:`` up
to the next label. Anything missing or out of range leaves that field empty and adds a line
to ``problems``. Input longer than ``MAX_PARSE_CHARS`` is cut first, so time is bounded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

SYSTEM_PROMPT = (
    "You are a market analyst. Read the closing prices and answer in exactly this format:\n"
    "Reasoning: <what the prices and % changes show>\n"
    "Prediction: UP or DOWN\n"
    "Confidence: <0-100>%\n"
    "Expected change: <+/-N.N>% (optional)"
)

MAX_PARSE_CHARS = 20_000
MAX_EXPECTED_CHANGE = 100.0  # |expected % change| above this is treated as a format problem


def _label(name: str) -> str:
    """``Name:`` with optional bold; no leading ``\\s*``, so a long run of spaces or stars
    cannot make the search quadratic."""
    return r"\*{0,2}" + name + r"\*{0,2}\s*[:=]\s*\*{0,2}\s*"


_PRED = re.compile(_label("prediction") + r"(up|down)\b", re.IGNORECASE)
_CONF = re.compile(_label("confidence") + r"(\d{1,3}(?:\.\d+)?)\s*%?", re.IGNORECASE)
_CHANGE = re.compile(_label(r"expected(?:\s?%)?\s?(?:change|move)")
                     + r"([-+\u2212]?)\s*(\d{1,6}(?:\.\d+)?)\s*%?", re.IGNORECASE)
# a lean counts as the decision where it rests on the facts: right after a stated up count,
# or after the majority the count gives ("up 1, mostly down bearish", the warm start's form)
_LEAN = re.compile(r"\bup \d+(?:, mostly (?:up|down))? (bullish|bearish)\b", re.IGNORECASE)
_REASON = re.compile(_label("reasoning")
                     + r"(.*?)(?=\n[ \t]*\*{0,2}(?:prediction|confidence|expected)\b|\Z)",
                     re.IGNORECASE | re.DOTALL)


@dataclass
class ParsedAnswer:
    prediction: str | None = None  # "UP" | "DOWN"
    confidence: float | None = None  # 0..1
    expected_change: float | None = None  # signed % for the next day
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
    _prediction(text, out)
    _confidence(text, out)
    _expected_change(text, out)
    reason = _REASON.search(text)
    if reason is None or not reason.group(1).strip():
        out.problems.append("no 'Reasoning:' text")
    else:
        out.reasoning = reason.group(1).strip()
    return out


def _prediction(text: str, out: ParsedAnswer) -> None:
    preds = {p.upper() for p in _PRED.findall(text)}
    if not preds:
        out.problems.append("no 'Prediction: UP|DOWN' line")
    elif len(preds) > 1:
        out.problems.append("conflicting predictions")
    else:
        out.prediction = preds.pop()


def _confidence(text: str, out: ParsedAnswer) -> None:
    conf = _CONF.search(text)
    if conf is None:
        out.problems.append("no 'Confidence: N%' line")
        return
    value = float(conf.group(1))
    if value > 100:
        out.problems.append(f"confidence {value} is above 100")
    else:
        out.confidence = value / 100.0


def _expected_change(text: str, out: ParsedAnswer) -> None:
    change = _CHANGE.search(text)
    if change is None:
        return  # optional
    value = float(change.group(2)) * (-1.0 if change.group(1) in ("-", "\u2212") else 1.0)
    if abs(value) > MAX_EXPECTED_CHANGE:
        out.problems.append(f"expected change {value}% is beyond +/-{MAX_EXPECTED_CHANGE:g}%")
    else:
        out.expected_change = value


def decision_spans(text: str, confidence: bool = False) -> list[tuple[int, int]]:
    """The character span [start, end) of the first word that states the direction: a
    "bullish" / "bearish" lean right after the stated up count ("up 2 bullish") or after
    the majority it states ("up 2, mostly up bullish"), or the ``Prediction`` value,
    whichever comes first (later ones restate it). ``train.pg_tokens: decision`` puts the
    policy gradient on its tokens; empty when the answer states no
    direction. A lean written anywhere else (before the count, in place of it) is not the
    decision: rewarding it there taught the demo model to skip the count ("down 0,
    bullish."), and the anchor alone did not hold the format against it. With
    ``confidence`` (``reward.confidence_is_decision``) the stated confidence figure's digits
    are a decision too, so a reward on the stated probability reaches them."""
    text = text[:MAX_PARSE_CHARS]
    spans = [m.span(1) for m in (_PRED.search(text), _LEAN.search(text)) if m is not None]
    spans = sorted(spans)[:1]
    conf = _CONF.search(text) if confidence else None
    return spans + ([conf.span(1)] if conf is not None else [])


def confidence_span(text: str) -> list[tuple[int, int]]:
    """The stated confidence figure's digits ("Confidence: 80%" -> the span of "80"), the
    span ``train.credit`` calls "confidence"; empty when the answer states none."""
    conf = _CONF.search(text[:MAX_PARSE_CHARS])
    return [] if conf is None else [conf.span(1)]


_OPTIONS = (("UP", "DOWN"), ("BULLISH", "BEARISH"))
# the confidence figures the warm start writes (warm_answers.CONFIDENCES): distinct first digits
CONFIDENCE_OPTIONS = ("50", "60", "70", "80", "90")


def decision_options(word: str) -> tuple[str, ...]:
    """The two directions a decision word chose between, in the word's own spelling ("UP"
    -> UP, DOWN; "bullish" -> bullish, bearish); for a confidence figure, the figures the
    warm start states (its first digit is the choice); empty for any other word."""
    if word.isdigit():
        return CONFIDENCE_OPTIONS
    for pair in _OPTIONS:
        if word.upper() in pair:
            spell = (str.upper if word.isupper() else str.lower if word.islower()
                     else str.capitalize)
            return tuple(spell(o) for o in pair)
    return ()
