"""``stonk data`` (what ``make data`` runs): the summary and baselines tables, clear errors."""

from launch.cli import main


def test_data_command_prints_summary_and_baselines(capsys):
    assert main(["data", "--config", "configs/demo/stage1.yaml",
                 "--set", "data.source=bundled"]) == 0
    out = capsys.readouterr().out
    assert "source: bundled (data/bundled/ohlcv.csv.gz); window 5 days; balanced 50/50" in out
    for ticker in ("SP500", "NASDAQ", "MSFT", "GOOG", "GOOGL"):
        assert f"\n{ticker} " in out
    for line_start in ("train  first .. 2012-12-31", "val    after 2012-12-31 .. 2015-12-31",
                       "test   after 2015-12-31 .. last", "skipped  flat_next_day",
                       "majority ", "momentum ", "trend5 ", "logistic "):
        assert f"\n{line_start}" in out, line_start
    assert "val acc  val auc  test acc  test auc" in out


def test_data_command_on_the_synthetic_market_shows_bayes(capsys):
    assert main(["data", "--config", "configs/demo/stage1.yaml",
                 "--set", "data.source=synthetic", "--set", "data.balance=false"]) == 0
    out = capsys.readouterr().out
    assert "natural distribution (Stage II)" in out and "Bayes expected acc" in out
    assert "\nbayes_oracle " in out


def test_data_command_errors_are_one_clear_line(capsys):
    assert main(["data", "--config", "configs/demo/stage1.yaml",
                 "--set", "data.source=bundled", "--set", "data.tickers=[AAPL]"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: data/bundled/ohlcv.csv.gz: unknown ticker(s) ['AAPL']")
    assert "Traceback" not in err
    assert main(["data", "--config", "configs/demo/stage1.yaml",
                 "--set", "data.val_end=2010-01-01"]) == 2
    assert "data.val_end: 2010-01-01 must come after data.train_end" in capsys.readouterr().err
