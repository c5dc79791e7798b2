"""The Hugging Face source on local datasets (the hub is unreachable here), in both shapes:
price rows through the seed's column mapping, and prompt rows with a configured label."""

import os
import subprocess
import sys

import pandas as pd
import pytest
from datasets import Dataset

from tests.conftest import REPO
from trainer.tasks.stock.answer import parse_answer
from trainer.tasks.stock.config import DataConfig, StockRewardConfig
from trainer.tasks.stock.hf import SEED_DATASET, parse_label
from trainer.tasks.stock.problems import DataError
from trainer.tasks.stock.sources import load_source
from trainer.tasks.stock.task import StockTask

DAYS = pd.bdate_range("2021-03-01", periods=30).strftime("%Y-%m-%d").tolist()


def seed_shaped_rows():
    """Rows shaped like the seed's dataset: nested company_info, one row per ticker-day."""
    rows = []
    for t, base in (("AAPL", 150.0), ("TSLA", 220.0)):
        for i, d in enumerate(DAYS):
            close = round(base + (i % 4) - (i % 3) + i * 0.5, 2)
            rows.append({"ticker": t, "user_prompt": f"prompt {t} {d}", "company_info": {
                "current_date": d, "price": {"close": close, "close_previous": close - 1},
                "company_info": {"description": f"{t} makes things. Founded 1976."},
                "news": {"news_headlines": [f"{t} news on {d}"] if i % 10 == 0 else []}}})
    return rows


def hf(name, **kw):
    return DataConfig(source="hf", hf_name=str(name), window=5, train_end="2021-03-26",
                      val_end="2021-04-02", **kw)


def test_seed_shaped_dataset_saved_to_disk_gives_price_series(tmp_path):
    Dataset.from_list(seed_shaped_rows()).save_to_disk(tmp_path / "ds")
    data = load_source(hf(tmp_path / "ds"))
    assert [s.ticker for s in data.series] == ["AAPL", "TSLA"]
    aapl = data.series[0]
    assert aapl.dates == DAYS and aapl.info == "AAPL makes things. Founded 1976."
    assert aapl.news == {DAYS[0]: [f"AAPL news on {DAYS[0]}"],
                         DAYS[10]: [f"AAPL news on {DAYS[10]}"],
                         DAYS[20]: [f"AAPL news on {DAYS[20]}"]}


def test_prompts_from_hf_series_show_info_and_only_shown_days_news(tmp_path):
    Dataset.from_list(seed_shaped_rows()).save_to_disk(tmp_path / "ds")
    task = StockTask(hf(tmp_path / "ds", tickers=["AAPL"], balance=False), StockRewardConfig())
    by_id = {s.id: s for name in ("train", "val", "test") for s in task.split(name)}
    text = by_id[f"AAPL:{DAYS[12]}"].messages[1]["content"]
    assert "About: AAPL makes things. Founded 1976." in text
    assert f"News: AAPL news on {DAYS[10]}" in text and "news on " + DAYS[20] not in text
    assert 1976.0 in by_id[f"AAPL:{DAYS[12]}"].meta["prompt_numbers"]  # figures of the info


def test_prompt_rows_from_a_parquet_file_with_a_configured_label(tmp_path):
    rows = [{"sym": "MSFT", "day": d, "text": f"MSFT closed at {300 + i}.25 on {d}.",
             "signal": ("buy", "sell", "hold")[i % 3]} for i, d in enumerate(DAYS)]
    rows.append({**rows[0]})  # a duplicate day
    pd.DataFrame(rows).to_parquet(tmp_path / "p.parquet")
    cols = {"close": "", "ticker": "sym", "date": "day", "prompt": "text", "label": "signal"}
    data = load_source(hf(tmp_path / "p.parquet", columns=cols))
    assert not data.series and len(data.prompts) == 20  # 30 days, every third one "hold"
    assert data.report.skipped == {"missing_label": 10, "duplicate_date": 1}
    first = data.prompts[0]
    assert (first.ticker, first.date, first.label, first.next_date) == (
        "MSFT", DAYS[0], "UP", DAYS[1])
    task = StockTask(hf(tmp_path / "p.parquet", columns=cols, balance=False), StockRewardConfig())
    sample = task.split("train")[0]
    assert sample.messages[1]["content"] == first.text
    assert sample.meta["prompt_numbers"] == [300.25] and sample.meta["dates"] == [DAYS[0]]
    cites = (f"Reasoning: On {DAYS[0]} MSFT closed at 300.25, a level it held for a while "
             f"now.\nPrediction: UP\nConfidence: 60%")
    invents = cites.replace("300.25", "412.00")
    assert parse_answer(cites).valid
    assert task.score(sample, cites)["data_usage"] == pytest.approx(0.2 * 2 / 3)
    assert task.score(sample, invents)["data_usage"] == pytest.approx(0.2 * 0.5 / 3)


def test_prompt_rows_need_a_label_and_a_date(tmp_path):
    pd.DataFrame({"day": DAYS, "text": ["x"] * 30}).to_parquet(tmp_path / "p.parquet")
    with pytest.raises(DataError, match="prompt rows need a label"):
        load_source(hf(tmp_path / "p.parquet", columns={"close": "", "date": "day",
                                                        "prompt": "text"}))
    with pytest.raises(DataError, match=r"data\.columns\.date = 'company_info\.current_date' "
                                        r"is not a column; columns: day, text"):
        load_source(hf(tmp_path / "p.parquet", columns={"close": "", "prompt": "text"}))


def test_seed_mapping_on_a_dataset_without_those_columns_names_them(tmp_path):
    Dataset.from_dict({"a": [1, 2]}).save_to_disk(tmp_path / "ds")
    with pytest.raises(DataError, match=r"ds: data\.columns\.ticker = 'ticker' is not a "
                                        r"column; columns: a"):
        load_source(hf(tmp_path / "ds"))


@pytest.mark.parametrize("value, label", [
    ("UP", "UP"), ("buy", "UP"), (1, "UP"), (True, "UP"), ("1", "UP"), (1.0, "UP"),
    ("Down", "DOWN"), (" sell ", "DOWN"), (0, "DOWN"), (-1, "DOWN"), (False, "DOWN"),
    ("hold", None), (None, None), (float("nan"), None), (2, None), (0.5, None)])
def test_label_values(value, label):
    assert parse_label(value) == label


def test_unreachable_hub_gives_a_clear_message_not_a_stack_trace():
    code = ("from trainer.tasks.stock.config import DataConfig; from trainer.tasks.stock.sources import "
            "load_source; from trainer.tasks.stock.problems import DataError\n"
            f"try:\n    load_source(DataConfig(source='hf', hf_name={SEED_DATASET!r}))\n"
            "except DataError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                         cwd=str(REPO))
    assert out.returncode == 0, out.stderr[-2000:]
    message = out.stdout
    assert f"data.hf_name: cannot load '{SEED_DATASET}' (split 'train') from the Hugging " \
           "Face hub" in message
    assert "huggingface-cli login" in message and "save_to_disk" in message
    assert "Traceback" not in message + out.stderr
