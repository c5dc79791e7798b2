"""`stonk predict`'s inputs, before any worker starts: prices through the training loader
(every problem it would skip or repair is a one-line error, exit 2), the run's window, the
windows chosen by --dates, and the run / adapter resolution shared with eval."""

from __future__ import annotations

import json
from datetime import date

import pytest

from launch.cli import main
from launch.offline.evaluate import run_adapter
from launch.offline.predict import load_prices, queries
from tests.conftest import REPO
from trainer.config import ConfigError, load_config
from trainer.tasks.stock.problems import DataError
from trainer.tasks.stock.synthetic import business_days
from trainer.tasks.stock.task import window_messages

DAYS = [f"2024-01-{d:02d}" for d in (2, 3, 4, 5, 8, 9, 10, 11, 12, 15)]


def _cfg(window: int = 5, **columns):
    cfg = load_config(REPO / "configs/demo/stage1.yaml", [f"data.window={window}"])
    cfg.data.columns.update(columns)
    return cfg


def _write(path, header: str, rows: list[str]):
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def _good(path, sep=","):
    rows = [sep.join([d, f"{100 + i * 1.5:.2f}"]) for i, d in enumerate(DAYS)]
    return _write(path, sep.join(["Date", "Close"]), rows)


def test_business_days_skip_weekends_and_end_on_the_last_weekday():
    # 2026-12-06 is a Sunday: the window ends on Friday the 4th
    assert business_days(date(2026, 12, 6), 4, backward=True) == [
        "2026-12-01", "2026-12-02", "2026-12-03", "2026-12-04"]
    assert business_days(date(2026, 12, 7), 2, backward=True) == ["2026-12-04", "2026-12-07"]


@pytest.mark.parametrize("sep", [",", ";", "\t"])
def test_a_ticker_file_gives_the_runs_window_in_any_delimiter(tmp_path, sep):
    (s,) = load_prices(_good(tmp_path / "acme.csv", sep), _cfg(), [])
    assert s.ticker == "ACME" and s.dates == DAYS
    (q,) = queries([s], 5, "last")
    assert q.window.dates == DAYS[-5:] and len(q.window.closes) == 6 and not q.known_next
    user = window_messages(q.window)[-1]["content"]
    assert "last 5 trading days" in user and "2024-01-15: 113.50 (+1.34%)" in user


def test_all_dates_and_a_date_list_choose_windows_by_their_last_shown_day(tmp_path):
    (s,) = load_prices(_good(tmp_path / "acme.csv"), _cfg(window=3), [])
    every = queries([s], 3, "all")
    assert [q.window.dates[-1] for q in every] == DAYS[3:]
    assert [q.known_next for q in every] == [True] * 6 + [False]
    assert every[0].window.next_date == DAYS[4] and every[0].window.label == "UP"
    picked = queries([s], 3, f"{DAYS[5]},{DAYS[9]}")
    assert [q.window.dates[-1] for q in picked] == [DAYS[5], DAYS[9]]
    with pytest.raises(ConfigError, match=f"no window ends on {DAYS[1]}"):
        queries([s], 3, DAYS[1])  # too early: 3 days before it are not in the file


def test_a_mapped_column_and_a_long_table_with_tickers(tmp_path):
    rows = [f"{t},{d},{100 + i}" for t in ("AAA", "BBB") for i, d in enumerate(DAYS)]
    path = _write(tmp_path / "long.csv", "Symbol,Day,Last", rows)
    series = load_prices(path, _cfg(close="Last"), ["BBB"])
    assert [s.ticker for s in series] == ["BBB"] and series[0].closes[-1] == 109.0
    with pytest.raises(DataError, match="unknown ticker"):
        load_prices(path, _cfg(close="Last"), ["ZZZ"])


@pytest.mark.parametrize("bad,message", [
    (lambda r: r.__setitem__(3, "2024-01-05,nan"), r"row 4: field 'Close': nan is not a "
                                                   r"positive number \(training skips this as bad_price"),
    (lambda r: r.__setitem__(3, "2024-01-05,abc"), r"row 4: field 'Close': 'abc'"),
    (lambda r: r.__setitem__(3, "2024-01-05,-3"), r"row 4: field 'Close': '-3'"),
    (lambda r: r.__setitem__(3, "2024-01-05,"), r"row 4: field 'Close'"),
    (lambda r: r.__setitem__(3, "2024-01-04,104"), r"row 4: field 'Date': 2024-01-04 repeats"),
    (lambda r: r.__setitem__(3, "someday,104"), r"row 4: field 'Date': 'someday' is not a date"),
    (lambda r: r.insert(0, r.pop()), r"ACME: 1 row\(s\) out of date order \(training "
                                      r"repairs this as unsorted"),
    (lambda r: r.__delitem__(slice(5, None)), r"ACME 2024-01-02\.\.2024-01-08: 5 closes, "
                                               r"need 6 \(training skips this as too_short"),
])
def test_every_problem_training_would_skip_or_repair_is_an_error(tmp_path, bad, message):
    rows = [f"{d},{100 + i}" for i, d in enumerate(DAYS)]
    bad(rows)
    path = _write(tmp_path / "acme.csv", "Date,Close", rows)
    with pytest.raises(DataError, match=message):
        load_prices(path, _cfg(), [])


def test_unreadable_and_missing_files_name_the_file(tmp_path):
    path = tmp_path / "acme.csv"
    path.write_bytes(b"")
    with pytest.raises(DataError, match=r"acme\.csv: the file is empty"):
        load_prices(path, _cfg(), [])
    with pytest.raises(DataError, match=r"nothing\.csv: no such file"):
        load_prices(tmp_path / "nothing.csv", _cfg(), [])


def _set_base(adapter, base: str) -> None:
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base}))


def test_run_and_adapter_resolve_like_eval(fake_run, tmp_path, monkeypatch):
    cfg, adapter, _ = run_adapter(fake_run, "latest")
    assert adapter == fake_run / "checkpoints" / "step_000002" / "adapter"
    assert cfg.model.name_or_path == str(tmp_path / "base-model")  # the adapter's own base
    assert run_adapter(None, str(adapter))[1] == adapter  # the run found above the folder
    monkeypatch.chdir(tmp_path)  # a relative local base is made absolute
    _set_base(adapter, "base-model")
    assert run_adapter(fake_run, "latest")[0].model.name_or_path == str(tmp_path / "base-model")
    _set_base(adapter, "Qwen/Qwen2.5-1.5B-Instruct")  # a hub id stays one
    assert run_adapter(fake_run, "latest")[0].model.name_or_path == "Qwen/Qwen2.5-1.5B-Instruct"
    (tmp_path / "empty").mkdir()
    _set_base(adapter, "empty")
    with pytest.raises(ConfigError, match="base model empty: not a model folder"):
        run_adapter(fake_run, "latest")
    _set_base(adapter, "runs/demo/stage2/base")  # a local path that is not there
    with pytest.raises(ConfigError, match=r"base model runs/demo/stage2/base: no such folder "
                                          r".*--set model.name_or_path=PATH"):
        run_adapter(fake_run, "latest")
    kept = run_adapter(fake_run, "latest", None, ["model.name_or_path=elsewhere/m"])[0]
    assert kept.model.name_or_path == "elsewhere/m"  # an explicit --set wins
    # a Stage II run: its own merged Stage I model, whatever the adapter recorded (a moved
    # demo's adapter still names runs/demo/stage2/base)
    (fake_run / "base").mkdir()
    (fake_run / "stage2.json").write_text("{}")
    assert run_adapter(fake_run, "latest")[0].model.name_or_path == str(fake_run / "base")
    with pytest.raises(ConfigError, match="--adapter best: needs --run"):
        run_adapter(None, "best")
    with pytest.raises(ConfigError, match="not a run folder"):
        run_adapter(tmp_path, "best")


@pytest.mark.parametrize("extra,message", [
    (["--window", "7"], "--window 7: the adapter was trained on data.window = 5 days"),
    (["--out", "p.txt"], "--out p.txt: write .csv or .jsonl"),
    (["--dates", "1999-01-04"], "--dates: no window ends on 1999-01-04"),
])
def test_cli_refusals_are_one_line_before_a_worker_starts(fake_run, tmp_path, capsys, extra,
                                                          message):
    prices = _good(tmp_path / "acme.csv")
    code = main(["predict", "--run", str(fake_run), "--prices", str(prices), *extra])
    err = capsys.readouterr().err
    assert code == 2 and err == f"error: {message}" + err[len(message) + 7:]
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_cli_bad_price_file_is_one_line_naming_row_and_field(fake_run, tmp_path, capsys):
    rows = [f"{d},{100 + i}" for i, d in enumerate(DAYS)]
    rows[6] = f"{DAYS[6]},1.2.3"
    path = _write(tmp_path / "acme.csv", "date,close", rows)
    code = main(["predict", "--run", str(fake_run), "--prices", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: {path}: row 7: field 'close': '1.2.3'")
    assert len(err.strip().splitlines()) == 1


def test_rows_are_written_as_csv_or_jsonl_by_suffix(tmp_path):
    import csv

    from launch.offline.predict import FIELDS, write_rows

    rows = [{**dict.fromkeys(FIELDS, ""), "ticker": "ACME", "reasoning": 'up, "strongly"\nok',
             "prompt": "P", "completion": "C"}]
    write_rows(rows, tmp_path / "out" / "p.csv")
    (got,) = list(csv.DictReader(open(tmp_path / "out" / "p.csv", newline="")))
    assert list(got) == list(FIELDS) and got["reasoning"] == 'up, "strongly"\nok'
    write_rows(rows, tmp_path / "p.jsonl")
    assert json.loads((tmp_path / "p.jsonl").read_text()) == rows[0]


def test_stage2_reads_a_stated_confidence_against_the_runs_up_ratio(tmp_path):
    """As evaluation does: with reward.market_aware_confidence (Stage II) an answer's
    P(UP) is its confidence moved from 50/50 to the training split's natural up ratio, which
    training keeps in the run's data.json; without that file, 50/50, and the line says so."""
    from launch.offline.predict import _row, confidence_prior

    cfg = _cfg()
    run = tmp_path / "run"
    run.mkdir()
    (run / "data.json").write_text(json.dumps({"confidence_prior_up": 0.6}))
    assert confidence_prior(cfg, run) == (0.5, "50/50")  # Stage I: the answer's own
    cfg.reward.market_aware_confidence = True
    prior, said = confidence_prior(cfg, run)
    assert prior == 0.6 and "0.6000" in said
    (q,) = queries(load_prices(_good(tmp_path / "acme.csv"), cfg, []), 5, "last")
    answer = "Prediction: UP\nConfidence: 70%\nReasoning: the close rose on each of the last days."
    row = _row(q, "P", answer, tmp_path, prior)
    assert row["prediction"] == "UP" and row["confidence"] == pytest.approx(0.7)
    # odds 0.7/0.3 times the prior's 0.6/0.4: 3.5, so P = 3.5 / 4.5
    assert row["p_up"] == pytest.approx(3.5 / 4.5, abs=1e-6)
    prior, said = confidence_prior(cfg, tmp_path / "older-run")
    assert prior == 0.5 and said.startswith("50/50: no ") and "data.json" in said
    assert confidence_prior(cfg, None)[0] == 0.5
