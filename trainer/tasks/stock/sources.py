"""Market-data sources, one loader per ``data.source`` name, all returning :class:`SourceData`.

- ``bundled``: real daily prices shipped in ``data/bundled/ohlcv.csv.gz`` (provenance and
  licences in its README); no runtime dependency on the packages they came from.
- ``synthetic``: the seeded market of ``synthetic.py`` (``data.synthetic_rule``), with its
  exact Bayes oracle.
- ``local``: CSV or Parquet OHLCV at ``data.path``: one long table with a ticker column, or
  a folder with one file per ticker (the ticker is the file name).
- ``hf``: a Hugging Face dataset (``hf.py``), price rows or prompt rows.

Every loader applies the bad-input rules of ``problems.py`` and fills a :class:`DataReport`.
Loading happens once, when the task is built, before any training step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from trainer.tasks.stock import synthetic
from trainer.tasks.stock.config import DataConfig
from trainer.tasks.stock.hf import load_hf
from trainer.tasks.stock.problems import DataError, DataReport
from trainer.tasks.stock.series import PromptRow, Series
from trainer.tasks.stock.tables import (
    SUFFIXES,
    file_ticker,
    frame_to_series,
    read_table,
    table_files,
)

REPO_ROOT = Path(__file__).resolve().parents[3]
BUNDLED_PATH = REPO_ROOT / "data" / "bundled" / "ohlcv.csv.gz"
BUNDLED_NAMES = {
    "SP500": "S&P 500 index",
    "NASDAQ": "NASDAQ Composite index",
    "MSFT": "Microsoft",
    "GOOG": "Alphabet (class C)",
    "GOOGL": "Alphabet (class A)",
}


@dataclass
class SourceData:
    series: list[Series]
    prompts: list[PromptRow]
    report: DataReport
    oracle: Callable[[list[float]], float] | None = None  # exact P(UP | shown % changes)


Loader = Callable[[DataConfig], SourceData]
SOURCES: dict[str, Loader] = {}


def register_source(name: str) -> Callable[[Loader], Loader]:
    def deco(fn: Loader) -> Loader:
        SOURCES[name] = fn
        return fn

    return deco


def load_bundled(tickers: list[str] | None = None, path: Path = BUNDLED_PATH, *,
                 report: DataReport | None = None, min_len: int = 2) -> list[Series]:
    """The bundled real series (all, or ``tickers``); unknown tickers fail naming the file."""
    report = report if report is not None else DataReport("bundled", str(path))
    series = frame_to_series(read_table(path), str(path), {}, report, min_len=min_len,
                             names=BUNDLED_NAMES, tickers=tickers)
    report.check_tickers(tickers or [])
    return series


@register_source("bundled")
def _bundled(cfg: DataConfig) -> SourceData:
    report = DataReport("bundled", str(BUNDLED_PATH.relative_to(REPO_ROOT)))
    series = load_bundled(cfg.tickers or None, report=report, min_len=cfg.window + 2)
    return SourceData(series, [], report)


@register_source("synthetic")
def _synthetic(cfg: DataConfig) -> SourceData:
    report = DataReport("synthetic", f"{cfg.synthetic_rule} rule, seed {cfg.seed}, "
                                     f"{cfg.synthetic_days} days")
    report.seen.add(synthetic.TICKER)
    report.check_tickers(cfg.tickers)
    series = synthetic.synthetic_series(cfg.synthetic_days, cfg.seed, cfg.synthetic_rule)
    return SourceData([series], [], report,
                      oracle=partial(synthetic.up_probability, rule=cfg.synthetic_rule))


def _resolve(path: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_absolute() and not p.exists() and (REPO_ROOT / p).exists():
        return REPO_ROOT / p
    return p


def load_tables(path: Path, columns: dict[str, str], tickers: list[str], min_len: int,
                report: DataReport, names: dict[str, str] | None = None) -> list[Series]:
    """Every series in a table file or a folder of them (one file per ticker), by the rules
    of ``tables.py``; training (``data.source: local``) and ``stonk predict`` both read here."""
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    files = table_files(path) if path.is_dir() else [path]
    if not files:
        raise DataError(f"{path}: no table files in this folder; use {', '.join(SUFFIXES)}")
    series: list[Series] = []
    owner: dict[str, Path] = {}
    for f in files:
        got = frame_to_series(read_table(f), str(f), columns, report,
                              default_ticker=file_ticker(f), min_len=min_len,
                              names=names, tickers=tickers or None)
        for ticker in {s.ticker for s in got}:
            if owner.setdefault(ticker, f) != f:
                raise DataError(f"{f}: ticker {ticker} is also in {owner[ticker]}; "
                                f"keep one file per ticker")
        series += got
    report.check_tickers(tickers)
    return series


@register_source("local")
def _local(cfg: DataConfig) -> SourceData:
    path = _resolve(cfg.path)
    if not path.exists():
        raise DataError(f"{cfg.path}: no such file or folder (data.path)")
    report = DataReport("local", str(path))
    return SourceData(load_tables(path, cfg.columns, cfg.tickers, cfg.window + 2, report), [],
                      report)


@register_source("hf")
def _hf(cfg: DataConfig) -> SourceData:
    report = DataReport("hf", f"{cfg.hf_name} [{cfg.hf_split}]")
    series, prompts = load_hf(cfg.hf_name, cfg.hf_split, cfg.columns, report,
                              min_len=cfg.window + 2, tickers=cfg.tickers)
    report.check_tickers(cfg.tickers)
    return SourceData(series, prompts, report)


def load_source(cfg: DataConfig) -> SourceData:
    """Load ``data.source``; fail (naming the origin) when nothing usable is left."""
    data = SOURCES[cfg.source](cfg)
    if not data.series and not data.prompts:
        skipped = ", ".join(f"{k} {v}" for k, v in data.report.skipped.items()) or "nothing"
        raise DataError(f"{data.report.origin}: no usable series or prompts "
                        f"(window {cfg.window}; skipped: {skipped})")
    return data
