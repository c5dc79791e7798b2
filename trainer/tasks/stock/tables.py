"""Tables of daily prices (CSV or Parquet, or a frame from a dataset) to clean :class:`Series`.

One reader serves every table-shaped source: the bundled file, local files and Hugging Face
datasets that carry prices. A table is either one ticker (no ticker column: the ticker is the
file's name) or a long table with a ticker column. Columns are found by name, case and
spacing ignored, from the aliases below, unless ``data.columns`` maps a field to a column
(for datasets, a dotted path into nested records such as ``company_info.price.close``).
The adjusted close is used when the table has one with any value in it; else the close.

Row problems are skipped and counted in the :class:`DataReport` by the rules of
``problems.py``; file problems raise :class:`DataError` naming the file, row and field.
Rows are numbered from 1 in the order the file holds them (a CSV's header is not a row).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from trainer.tasks.stock.problems import DataError, DataReport
from trainer.tasks.stock.series import Series

TABLE_FIELDS = ("ticker", "date", "close", "adj_close", "name", "info", "news")
ALIASES = {
    "ticker": ("ticker", "symbol"),
    "date": ("date", "datetime", "timestamp", "day"),
    "close": ("close", "close_price", "price"),
    "adj_close": ("adj_close", "adjclose", "adjusted_close", "adj_close_price"),
    "name": ("name", "company", "company_name"),
    "info": ("info", "company_info", "description"),
    "news": ("news", "headlines", "news_headlines"),
}
SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")


def _norm(column: object) -> str:
    return str(column).strip().lower().replace(" ", "_").replace("-", "_")


def table_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(SUFFIXES))


def file_ticker(path: Path) -> str:
    """The ticker a one-ticker file stands for: its name without the suffix, upper case."""
    name = path.name
    for suffix in SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name.upper()


def _delimiter(path: Path) -> str:
    """The CSV's field separator, sniffed from its first lines: ',', ';', tab or '|'
    (spreadsheets in many locales write ';'); ',' when the sniffer cannot tell."""
    import csv
    import gzip

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", errors="replace") as fh:
            sample = fh.read(8192)
        return csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
    except (csv.Error, OSError, EOFError):
        return ","


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV (.csv, .csv.gz) or Parquet (.parquet, .pq) file; fail naming it."""
    name = path.name.lower()
    if not name.endswith(SUFFIXES):
        raise DataError(f"{path}: not a table file; use one of {', '.join(SUFFIXES)}")
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        if name.endswith((".parquet", ".pq")):
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, dtype=str, keep_default_na=True, sep=_delimiter(path))
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty") from None
    except Exception as exc:  # any reader failure is a problem with this file
        raise DataError(f"{path}: cannot read it as a table: {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    if frame.empty:
        raise DataError(f"{path}: the file has no data rows")
    return frame


def find_columns(frame: pd.DataFrame, mapping: dict[str, str], origin: str) -> dict[str, str]:
    """Our field -> the frame's column, for the fields the frame has (configured or alias)."""
    by_norm = {_norm(c): c for c in frame.columns}
    found = {}
    for fld in TABLE_FIELDS:
        wanted = mapping.get(fld)
        if wanted:
            column = wanted if wanted in frame.columns else by_norm.get(_norm(wanted))
            if column is None:
                raise DataError(f"{origin}: data.columns.{fld} = {wanted!r} is not a column; "
                                f"columns: {', '.join(map(str, frame.columns))}")
            found[fld] = column
        elif fld not in mapping:  # a field mapped to "" is switched off
            hit = next((by_norm[a] for a in ALIASES[fld] if a in by_norm), None)
            if hit is not None:
                found[fld] = hit
    return found


def _require(found: dict[str, str], fld: str, frame: pd.DataFrame, origin: str) -> None:
    if fld not in found:
        raise DataError(f"{origin}: no {fld!r} column (looked for "
                        f"{', '.join(ALIASES[fld])}); columns: "
                        f"{', '.join(map(str, frame.columns))}; map one with data.columns.{fld}")


def parse_dates(values: pd.Series) -> pd.Series:
    """ISO ``YYYY-MM-DD`` strings; None where a value is missing or not a date."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas warns when it falls back to per-item parsing
        try:
            parsed = pd.to_datetime(values, errors="coerce", utc=True)
        except (ValueError, TypeError, OverflowError):
            parsed = pd.Series([pd.to_datetime(v, errors="coerce", utc=True) for v in values],
                               index=values.index)
    return parsed.map(lambda t: None if pd.isna(t) else t.strftime("%Y-%m-%d"))


def _prices(values: pd.Series) -> np.ndarray:
    return pd.to_numeric(values, errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def _headlines(value: object) -> list[str]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, str):
        return [value.strip()] if value.strip() else []
    try:
        return [str(v).strip() for v in value if str(v).strip()]
    except TypeError:
        return [str(value)]


def _text(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return " ".join(str(value).split())


def frame_to_series(frame: pd.DataFrame, origin: str, mapping: dict[str, str],
                    report: DataReport, *, default_ticker: str = "", min_len: int = 2,
                    names: dict[str, str] | None = None,
                    tickers: list[str] | None = None) -> list[Series]:
    """Clean series from one table (rules in ``problems.py``); rows numbered from 1.
    Only ``tickers`` are kept when given; every ticker seen is recorded in ``report.seen``."""
    found = find_columns(frame, mapping, origin)
    _require(found, "date", frame, origin)
    if "close" not in found and "adj_close" not in found:
        _require(found, "close", frame, origin)
    if not default_ticker:
        _require(found, "ticker", frame, origin)
    price_col = found.get("adj_close")
    if price_col is None or frame[price_col].isna().all():
        price_col = found.get("close", price_col)
    rows = pd.DataFrame({
        "row": np.arange(1, len(frame) + 1),
        "ticker": (frame[found["ticker"]].map(_text).str.upper() if "ticker" in found
                   else default_ticker),
        "date": parse_dates(frame[found["date"]]),
        "price": _prices(frame[price_col]),
    })
    if "ticker" in found:
        rows.loc[rows["ticker"] == "", "ticker"] = None
    bad_ticker = rows["ticker"].isna()
    for r in rows[bad_ticker].itertuples():
        report.skip("bad_ticker", example=f"{origin}: row {r.row}: field {found['ticker']!r} "
                                          f"is empty")
    bad_date = rows["date"].isna() & ~bad_ticker
    for r in rows[bad_date].itertuples():
        raw = frame[found["date"]].iloc[r.row - 1]
        report.skip("bad_date", example=f"{origin}: row {r.row}: field {found['date']!r}: "
                                        f"{raw!r} is not a date")
    rows = rows[~bad_ticker & ~bad_date]
    report.seen.update(rows["ticker"].unique().tolist())
    if tickers:
        rows = rows[rows["ticker"].isin(tickers)]
    out = []
    for ticker, group in rows.groupby("ticker", sort=True):
        out += _ticker_series(str(ticker), group, frame, found, price_col, origin, report,
                              min_len, (names or {}).get(str(ticker), ""))
    return out


def _ticker_series(ticker: str, group: pd.DataFrame, frame: pd.DataFrame,
                   found: dict[str, str], price_col: str, origin: str, report: DataReport,
                   min_len: int, name: str) -> list[Series]:
    dates = group["date"].tolist()
    out_of_order = sum(b < a for a, b in zip(dates, dates[1:], strict=False))
    report.repair("unsorted", out_of_order,
                f"{origin}: {ticker}: {out_of_order} row(s) out of date order")
    group = group.sort_values("date", kind="stable")
    dup = group["date"].duplicated(keep="first")
    for r in group[dup].itertuples():
        report.skip("duplicate_date", example=f"{origin}: row {r.row}: field "
                                              f"{found['date']!r}: {r.date} repeats for {ticker}")
    group = group[~dup]
    price = group["price"].to_numpy()
    bad = ~np.isfinite(price) | (price <= 0)
    for r in group[bad].itertuples():
        raw = frame[price_col].iloc[r.row - 1]
        report.skip("bad_price", example=f"{origin}: row {r.row}: field {price_col!r}: "
                                         f"{raw!r} is not a positive number")
    first_rows = frame.iloc[group["row"].to_numpy() - 1]
    info = next((t for t in map(_text, first_rows[found["info"]]) if t), "") \
        if "info" in found else ""
    label = name or (next((t for t in map(_text, first_rows[found["name"]]) if t), "")
                     if "name" in found else "") or ticker
    news: dict[str, list[str]] = {}
    if "news" in found:
        for d, value in zip(group["date"], first_rows[found["news"]], strict=True):
            if heads := _headlines(value):
                news[d] = heads
    pieces, start = [], 0
    for i in [*np.flatnonzero(bad).tolist(), len(group)]:  # cut at every bad price
        if i > start:
            pieces.append((start, i))
        start = i + 1
    out = []
    all_dates = group["date"].tolist()
    for a, b in pieces:
        if b - a < min_len:
            report.skip("too_short", example=f"{origin}: {ticker} {all_dates[a]}..{all_dates[b - 1]}"
                                             f": {b - a} closes, need {min_len}")
            continue
        d = all_dates[a:b]
        out.append(Series(ticker, label, d, price[a:b].tolist(), info,
                          {k: news[k] for k in d if k in news}))
    return out
