"""Hugging Face datasets as a market-data source (``data.source: hf``).

``data.hf_name`` is a hub id (loaded with ``datasets.load_dataset(name, split=...)``), or a
local copy: a folder written by ``Dataset.save_to_disk`` or a ``.parquet``/``.jsonl``/
``.json``/``.csv`` file. Nested records are flattened, so ``data.columns`` maps our fields to
dotted paths (``company_info.price.close``). ``data.columns`` entries override
:data:`SEED_COLUMNS`; mapping a field to ``""`` switches it off.

Two shapes of rows:
- price rows (``close`` mapped): one row per ticker and day; they become daily series and go
  through the same cleaning as local tables (``tables.py``), so prompts, labels and splits
  are ours and leak-free by construction.
- prompt rows (``close`` switched off, ``prompt`` mapped): the dataset's own prompt text and
  a label (``label``: up/down, buy/sell, 1/0, true/false; or ``change_pct``: its sign). A
  ``date`` column is required to split by time; the label's day is the ticker's next row.
  The rewards treat the numbers in the prompt text as the known figures. We cannot check
  that such a prompt holds no future information: that is the dataset's promise.

Departure from the seed: the seed's dataset
(``2084Collective/deepstock-sp500-companies-with-info-and-user-prompt_buy_sell_v2``) is read
through :data:`SEED_COLUMNS`, the fields public code reads from it (``ticker``,
``company_info.current_date``, ``company_info.price.close``, ...). Its schema cannot be
checked from here (no hub access), so the mapping is configuration, not code.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from trainer.tasks.hub import open_dataset
from trainer.tasks.stock.problems import DataError, DataReport
from trainer.tasks.stock.series import PromptRow, Series
from trainer.tasks.stock.tables import frame_to_series, parse_dates

SEED_DATASET = "2084Collective/deepstock-sp500-companies-with-info-and-user-prompt_buy_sell_v2"
SEED_COLUMNS = {
    "ticker": "ticker",
    "date": "company_info.current_date",
    "close": "company_info.price.close",
    "info": "company_info.company_info.description",
    "news": "company_info.news.news_headlines",
    "prompt": "user_prompt",
}
PROMPT_FIELDS = ("prompt", "label", "change_pct")
LABELS = {"up": "UP", "buy": "UP", "1": "UP", "true": "UP", "rise": "UP",
          "down": "DOWN", "sell": "DOWN", "0": "DOWN", "-1": "DOWN", "false": "DOWN",
          "fall": "DOWN"}
def load_hf(name: str, split: str, columns: dict[str, str], report: DataReport, *,
            min_len: int, tickers: list[str]) -> tuple[list[Series], list[PromptRow]]:
    """Price series or prompt rows from a dataset, as ``data.columns`` says (see above)."""
    mapping = {**SEED_COLUMNS, **columns}
    frame = open_dataset(name, split, setting="data.hf_name", split_setting="data.hf_split",
                         also="or use data.source: local with CSV/Parquet prices"
                         ).flatten().to_pandas()
    if frame.empty:
        raise DataError(f"{name}: split {split!r} has no rows")
    if mapping.get("close"):
        table_map = {k: v for k, v in mapping.items() if k not in PROMPT_FIELDS}
        return frame_to_series(frame, name, table_map, report, min_len=min_len,
                               tickers=tickers), []
    return [], prompt_rows(frame, name, mapping, report, tickers)


def _column(frame: pd.DataFrame, mapping: dict[str, str], fld: str, origin: str) -> str:
    column = mapping.get(fld, "")
    if column not in frame.columns:
        raise DataError(f"{origin}: data.columns.{fld} = {column!r} is not a column; "
                        f"columns: {', '.join(map(str, frame.columns))}")
    return column


def parse_label(value: object) -> str | None:
    """UP/DOWN from a label cell (see the module docstring); None when it says neither."""
    if isinstance(value, (bool, np.bool_)):
        return "UP" if value else "DOWN"
    if isinstance(value, (int, float, np.integer, np.floating)):
        number = float(value)
        text = str(int(number)) if number == number and number.is_integer() else ""
    else:
        text = str(value).strip().lower() if value is not None else ""
    return LABELS.get(text)


def _change_label(value: object) -> tuple[str | None, float | None]:
    try:
        change = float(value)
    except (TypeError, ValueError):
        return None, None
    if change != change or change == 0:
        return None, None
    return ("UP" if change > 0 else "DOWN"), change


def prompt_rows(frame: pd.DataFrame, origin: str, mapping: dict[str, str],
                report: DataReport, tickers: list[str]) -> list[PromptRow]:
    prompt = _column(frame, mapping, "prompt", origin)
    date_col = _column(frame, mapping, "date", origin)
    has = {f: bool(mapping.get(f)) and mapping[f] in frame.columns for f in ("label", "change_pct")}
    if not any(has.values()):
        raise DataError(f"{origin}: prompt rows need a label: map data.columns.label (up/down, "
                        f"buy/sell, 1/0) or data.columns.change_pct (its sign); columns: "
                        f"{', '.join(map(str, frame.columns))}")
    ticker_col = mapping.get("ticker", "")
    dates = parse_dates(frame[date_col])
    rows: dict[tuple[str, str], PromptRow] = {}
    for i in range(len(frame)):
        where = f"{origin}: row {i + 1}"
        ticker = (str(frame[ticker_col].iloc[i]).strip().upper()
                  if ticker_col in frame.columns else "ALL")
        report.seen.add(ticker)
        if tickers and ticker not in tickers:
            continue
        if dates.iloc[i] is None:
            report.skip("bad_date", example=f"{where}: field {date_col!r}: "
                                            f"{frame[date_col].iloc[i]!r} is not a date")
            continue
        label, change = (_change_label(frame[mapping["change_pct"]].iloc[i])
                         if has["change_pct"] else (None, None))
        if has["label"]:
            label = parse_label(frame[mapping["label"]].iloc[i])
        text = frame[prompt].iloc[i]
        if label is None or not isinstance(text, str) or not text.strip():
            bad = mapping["label" if has["label"] else "change_pct"] if label is None else prompt
            report.skip("missing_label", example=f"{where}: field {bad!r}: no usable value")
            continue
        key = (ticker, dates.iloc[i])
        if key in rows:
            report.skip("duplicate_date", example=f"{where}: field {date_col!r}: {key[1]} "
                                                  f"repeats for {ticker}")
            continue
        rows[key] = PromptRow(ticker, key[1], text.strip(), label, next_change_pct=change)
    ordered = sorted(rows.values(), key=lambda r: (r.ticker, r.date))
    return [PromptRow(r.ticker, r.date, r.text, r.label,
                      next_date=nxt.date if nxt is not None and nxt.ticker == r.ticker else "",
                      next_change_pct=r.next_change_pct)
            for r, nxt in zip(ordered, [*ordered[1:], None], strict=True)]
