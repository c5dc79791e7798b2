"""Local CSV/Parquet sources and every bad-input rule of ``problems.py``: fail naming the
file, row and field, or skip and count in the data report."""

from pathlib import Path

import pandas as pd
import pytest

from trainer.tasks.stock.config import DataConfig, StockRewardConfig
from trainer.tasks.stock.problems import DataError
from trainer.tasks.stock.sources import BUNDLED_NAMES, load_bundled, load_source
from trainer.tasks.stock.task import StockTask

DAYS = pd.bdate_range("2020-01-01", periods=40).strftime("%Y-%m-%d").tolist()


def prices(n=40, start=100.0):
    return [round(start * (1 + 0.01 * ((i * 7) % 5 - 2)) ** 0.5 + i * 0.3, 2) for i in range(n)]


def write_csv(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def ticker_rows(ticker=None, n=40, **extra):
    rows = []
    for d, p in zip(DAYS[:n], prices(n), strict=True):
        row = {"Date": d, "Open": p, "Close": p, "Volume": 1000}
        if ticker:
            row["Ticker"] = ticker
        rows.append({**row, **extra})
    return rows


def local(path, **kw):
    return DataConfig(source="local", path=str(path), window=5, train_end="2020-01-31",
                      val_end="2020-02-14", **kw)


def test_folder_of_per_ticker_files_csv_and_parquet(tmp_path):
    write_csv(tmp_path / "aaa.csv", ticker_rows())
    pd.DataFrame(ticker_rows()).to_parquet(tmp_path / "bbb.parquet")
    data = load_source(local(tmp_path))
    assert [s.ticker for s in data.series] == ["AAA", "BBB"]
    assert data.series[0].dates == DAYS and data.series[1].closes == prices()
    assert not data.report.skipped


def test_long_table_with_ticker_column_and_ticker_filter(tmp_path):
    path = write_csv(tmp_path / "all.csv", ticker_rows("x") + ticker_rows("y"))
    data = load_source(local(path, tickers=["Y"]))
    assert [s.ticker for s in data.series] == ["Y"] and data.report.seen == {"X", "Y"}


@pytest.mark.parametrize("sep", [";", "\t", "|"])
def test_semicolon_tab_and_pipe_separated_files_load_like_commas(tmp_path, sep):
    """Spreadsheets in many locales write ';' (with ',' as the decimal mark elsewhere in the
    file's text columns, which must not split them)."""
    rows = [{**r, "Name": "Acme, Inc."} for r in ticker_rows("x")]
    pd.DataFrame(rows).to_csv(tmp_path / "semi.csv", index=False, sep=sep)
    write_csv(tmp_path / "comma.csv", rows)
    (a,) = load_source(local(tmp_path / "semi.csv")).series
    (b,) = load_source(local(tmp_path / "comma.csv")).series
    assert (a.ticker, a.dates, a.closes) == (b.ticker, b.dates, b.closes) == ("X", DAYS, prices())


def test_adjusted_close_is_used_when_present(tmp_path):
    rows = [{**r, "Adj Close": r["Close"] / 2} for r in ticker_rows()]
    (s,) = load_source(local(write_csv(tmp_path / "a.csv", rows))).series
    assert s.closes == [p / 2 for p in prices()]


def test_dates_are_parsed_from_other_formats(tmp_path):
    rows = [{**r, "Date": pd.Timestamp(r["Date"]).strftime("%m/%d/%Y")} for r in ticker_rows()]
    (s,) = load_source(local(write_csv(tmp_path / "a.csv", rows))).series
    assert s.dates == DAYS


def test_configured_column_mapping(tmp_path):
    rows = [{"when": r["Date"], "px": r["Close"], "sym": "Q"} for r in ticker_rows()]
    path = write_csv(tmp_path / "t.csv", rows)
    (s,) = load_source(local(path, columns={"date": "when", "close": "px",
                                            "ticker": "sym"})).series
    assert (s.ticker, s.closes) == ("Q", prices())
    with pytest.raises(DataError, match=r"t\.csv: data\.columns\.close = 'price' is not a "
                                        r"column; columns: when, px, sym"):
        load_source(local(path, columns={"date": "when", "close": "price"}))


# ---- bad input: fails with the file, row and field named

def test_missing_column_fails_naming_file_and_field(tmp_path):
    path = write_csv(tmp_path / "a.csv", [{"Date": d, "Open": 1.0} for d in DAYS])
    with pytest.raises(DataError, match=r"a\.csv: no 'close' column .*columns: Date, Open; "
                                        r"map one with data\.columns\.close"):
        load_source(local(path))


def test_empty_file_fails_naming_it(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match=r"empty\.csv: the file is empty"):
        load_source(local(tmp_path / "empty.csv"))
    (tmp_path / "header.csv").write_text("Date,Close\n")
    with pytest.raises(DataError, match=r"header\.csv: the file has no data rows"):
        load_source(local(tmp_path / "header.csv"))


def test_unknown_ticker_fails_naming_the_source(tmp_path):
    path = write_csv(tmp_path / "all.csv", ticker_rows("x"))
    with pytest.raises(DataError, match=r"all\.csv: unknown ticker\(s\) \['ZZZ'\] "
                                        r"\(data\.tickers\); this source has: X"):
        load_source(local(path, tickers=["ZZZ"]))
    with pytest.raises(DataError, match=r"ohlcv\.csv\.gz: unknown ticker\(s\) \['AAPL'\]"):
        load_bundled(["AAPL"])


def test_missing_path_and_foreign_files_fail(tmp_path):
    with pytest.raises(DataError, match=r"nope: no such file or folder \(data\.path\)"):
        load_source(local(tmp_path / "nope"))
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="no table files in this folder"):
        load_source(local(tmp_path))
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"bad\.parquet: cannot read it as a table"):
        load_source(local(tmp_path))


def test_same_ticker_in_two_files_fails(tmp_path):
    write_csv(tmp_path / "a.csv", ticker_rows("x"))
    write_csv(tmp_path / "b.csv", ticker_rows("x"))
    with pytest.raises(DataError, match=r"b\.csv: ticker X is also in .*a\.csv"):
        load_source(local(tmp_path))


# ---- bad input: skipped and counted, with file, row and field in the example

def test_nan_and_non_positive_prices_are_skipped_and_cut_the_series(tmp_path):
    rows = ticker_rows()
    rows[10]["Close"] = float("nan")
    rows[20]["Close"] = -3.0
    rows[30]["Close"] = "n/a"
    data = load_source(local(write_csv(tmp_path / "a.csv", rows)))
    assert data.report.skipped["bad_price"] == 3
    assert data.report.examples["bad_price"][0].endswith(
        "a.csv: row 11: field 'Close': nan is not a positive number")
    assert data.report.examples["bad_price"][1].endswith("row 21: field 'Close': '-3.0' is not "
                                                         "a positive number")
    # no series spans a bad row, so no % change is computed across a gap
    assert [(s.dates[0], s.dates[-1]) for s in data.series] == [
        (DAYS[0], DAYS[9]), (DAYS[11], DAYS[19]), (DAYS[21], DAYS[29]), (DAYS[31], DAYS[39])]


def test_unparseable_dates_are_skipped(tmp_path):
    rows = ticker_rows()
    rows[5]["Date"] = "not a day"
    data = load_source(local(write_csv(tmp_path / "a.csv", rows)))
    assert data.report.skipped["bad_date"] == 1
    assert "a.csv: row 6: field 'Date': 'not a day' is not a date" in \
        data.report.examples["bad_date"][0]


def test_unsorted_dates_are_sorted_and_counted(tmp_path):
    rows = ticker_rows()
    rows[3], rows[4] = rows[4], rows[3]
    data = load_source(local(write_csv(tmp_path / "a.csv", rows)))
    assert data.series[0].dates == DAYS and data.report.repaired["unsorted"] == 1
    assert not data.report.skipped


def test_duplicate_dates_keep_the_first(tmp_path):
    rows = ticker_rows()
    rows.insert(8, {**rows[7], "Close": 999.0})
    data = load_source(local(write_csv(tmp_path / "a.csv", rows)))
    assert data.report.skipped["duplicate_date"] == 1
    assert "row 9: field 'Date': " + DAYS[7] + " repeats" in data.report.examples[
        "duplicate_date"][0]
    assert 999.0 not in data.series[0].closes and data.series[0].dates == DAYS


def test_series_shorter_than_the_window_is_skipped(tmp_path):
    write_csv(tmp_path / "long.csv", ticker_rows())
    write_csv(tmp_path / "short.csv", ticker_rows(n=6))  # window 5 needs 7 closes
    data = load_source(local(tmp_path))
    assert [s.ticker for s in data.series] == ["LONG"]
    assert data.report.skipped["too_short"] == 1
    assert "SHORT" in data.report.examples["too_short"][0]


def test_empty_ticker_cells_are_skipped(tmp_path):
    rows = ticker_rows("x")
    rows[2]["Ticker"] = ""
    data = load_source(local(write_csv(tmp_path / "a.csv", rows)))
    assert data.report.skipped["bad_ticker"] == 1


def test_nothing_usable_fails_before_training(tmp_path):
    write_csv(tmp_path / "short.csv", ticker_rows(n=4))
    with pytest.raises(DataError, match=r"no usable series or prompts \(window 5; "
                                        r"skipped: too_short 1\)"):
        StockTask(local(tmp_path), StockRewardConfig())


def test_no_training_windows_fails_before_training(tmp_path):
    write_csv(tmp_path / "a.csv", ticker_rows())
    cfg = local(tmp_path, start="2020-01-01")
    cfg.train_end, cfg.val_end = "2020-01-03", "2020-03-31"
    with pytest.raises(DataError, match="no training windows"):
        StockTask(cfg, StockRewardConfig())


def test_bundled_data_is_clean_and_named():
    series = load_bundled()
    assert {s.ticker for s in series} == set(BUNDLED_NAMES)
    for s in series:
        assert s.name == BUNDLED_NAMES[s.ticker]
        assert s.dates == sorted(set(s.dates)) and min(s.closes) > 0
