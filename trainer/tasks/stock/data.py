"""Market data for the stock task, in one import: series, windows, sources, splits.

The pieces live in small modules; this one gathers the names other parts of the project use
(the warm start and the embedded-model builder cut windows from the bundled and synthetic
series):

- ``series.py``: :class:`Series`, :class:`PromptRow`, :class:`Window`, :func:`windows`.
- ``sources.py``: one loader per ``data.source`` (bundled, synthetic, local, hf).
- ``tables.py``: CSV/Parquet tables to clean series; ``hf.py``: Hugging Face datasets.
- ``problems.py``: the bad-input rules, :class:`DataError` and :class:`DataReport`.
- ``splits.py``: leak-free time splits per ticker and the Stage I balance.
- ``synthetic.py``: the streak market and its exact Bayes-optimal accuracy.
"""

from trainer.tasks.stock.problems import DataError, DataReport
from trainer.tasks.stock.series import PromptRow, Series, Window, windows
from trainer.tasks.stock.sources import (
    BUNDLED_NAMES,
    BUNDLED_PATH,
    SOURCES,
    SourceData,
    load_bundled,
    load_source,
)
from trainer.tasks.stock.splits import SPLITS, balance
from trainer.tasks.stock.synthetic import MOMENTUM_P, REVERSION_P, synthetic_series

__all__ = ["BUNDLED_NAMES", "BUNDLED_PATH", "MOMENTUM_P", "REVERSION_P", "SOURCES", "SPLITS",
           "DataError", "DataReport", "PromptRow", "Series", "SourceData", "Window", "balance",
           "load_bundled", "load_source", "synthetic_series", "windows"]
