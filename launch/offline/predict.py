"""``stonk predict``: a trained adapter's answers for many tickers and dates, one row each.

Prices go through the training loader (``trainer/tasks/stock/sources.load_tables``: the same
column aliases and ``data.columns`` mapping, delimiter sniffing, CSV or Parquet, a file or a
folder with one file per ticker). Where training skips or repairs something (a missing,
non-numeric or non-positive price, a bad date, a duplicate or out-of-order date, a series
shorter than the window) prediction refuses the input with that one-line problem instead: a
window cut from such data would show the model something it never saw in training, or show
values that are not prices.

The window length and the prompt are the run's (``data.window``, the stock task's prompt);
a different ``--window`` is refused. Rows are keyed by (ticker, date), ``date`` being the last
shown day; ``target_date`` and ``actual`` are filled when the file holds the next day
(a backtest), else empty. One vLLM worker serves the adapter; answers are greedy.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

from trainer.config import ConfigError, StageConfig

FIELDS = ("ticker", "date", "target_date", "prediction", "confidence", "p_up", "format_valid",
          "reasoning", "actual", "adapter")
CHUNK = 64  # prompts per generate call: progress is printed after each


@dataclass(frozen=True)
class Query:
    window: object  # trainer.tasks.stock.series.Window (next_date "" when unknown)
    known_next: bool


def load_prices(path: Path, cfg: StageConfig, tickers: list[str]) -> list:
    """Clean series of ``path`` (a table file or a folder), or DataError naming the first
    row, series or file that training would have skipped or repaired."""
    from trainer.tasks.stock.problems import DataError, DataReport
    from trainer.tasks.stock.sources import BUNDLED_NAMES, BUNDLED_PATH, load_tables

    report = DataReport("predict", str(path))
    names = BUNDLED_NAMES if path.exists() and path.resolve() == BUNDLED_PATH else None
    tickers = [t.strip().upper() for t in tickers]
    series = load_tables(path, cfg.data.columns, tickers, cfg.data.window + 1, report, names)
    problems = [*report.skipped, *report.repaired]
    if problems:
        reason = problems[0]
        example = (report.examples.get(reason) or [f"{path}: {reason}"])[0]
        what = "repairs" if reason in report.repaired else "skips"
        raise DataError(f"{example} (training {what} this as {reason}; predict refuses it: "
                        f"fix the file)")
    if not series:
        raise DataError(f"{path}: no series with {cfg.data.window + 1} closes (data.window "
                        f"{cfg.data.window} + the day before)")
    return series


def queries(series: list, window: int, dates: str) -> list[Query]:
    """The windows to answer: each ticker's last (``dates='last'``), every one (``'all'``),
    or those whose last shown day is in a comma-separated list (each must exist somewhere)."""
    from trainer.tasks.stock.series import Window

    wanted = None if dates in ("last", "all") else {d.strip() for d in dates.split(",") if d}
    out, found = [], set()
    for s in series:
        ends = [len(s.closes) - 1] if dates == "last" else range(window, len(s.closes))
        for end in ends:
            if wanted is not None and s.dates[end] not in wanted:
                continue
            found.add(s.dates[end])
            known = end + 1 < len(s.closes)
            shown = s.dates[end - window + 1:end + 1]
            out.append(Query(Window(s.ticker, s.name, shown, s.closes[end - window:end + 1],
                                    s.dates[end + 1] if known else "",
                                    s.closes[end + 1] if known else s.closes[end],
                                    base_date=s.dates[end - window], info=s.info,
                                    news={k: s.news[k] for k in shown if k in s.news}), known))
    if wanted is not None and (missing := sorted(wanted - found)):
        raise ConfigError(f"--dates: no window ends on {', '.join(missing)} (the date is a "
                          f"window's last shown day; a ticker needs {window} days before it)")
    return out


def confidence_prior(cfg: StageConfig, run: Path | None) -> tuple[float, str]:
    """The prior P(UP) a stated confidence is read against, as evaluation reads it, and
    where it came from: 50/50, or with ``reward.market_aware_confidence`` (Stage II) the
    natural up ratio of the run's training split (its ``data.json``)."""
    from common.files import read_json
    from trainer.run_folder import RunFolder
    from trainer.tasks.stock.rewards.probability import PLAIN_PRIOR

    if not cfg.reward.market_aware_confidence:
        return PLAIN_PRIOR, "50/50"
    if run is None:
        return PLAIN_PRIOR, "50/50: no run folder with the training split's up ratio"
    facts = RunFolder(run).data_facts
    prior = read_json(facts).get("confidence_prior_up")
    if not isinstance(prior, (int, float)):
        return PLAIN_PRIOR, (f"50/50: no {facts} with the training split's up ratio (a run "
                             f"trained before it was kept)")
    return prior, f"the training split's up ratio {prior:.4f} ({facts})"


def _row(q: Query, prompt: str, completion: str, adapter: Path, prior: float) -> dict:
    from trainer.tasks.stock.answer import parse_answer
    from trainer.tasks.stock.rewards.probability import p_up

    ans, w = parse_answer(completion), q.window
    return {"ticker": w.ticker, "date": w.dates[-1], "target_date": w.next_date,
            "prediction": ans.prediction or "", "confidence": ans.confidence,
            "p_up": round(p_up(ans, prior), 6), "format_valid": ans.valid,
            "reasoning": ans.reasoning, "actual": _actual(q),
            "adapter": str(adapter), "prompt": prompt, "completion": completion}


def _actual(q: Query) -> str:
    w = q.window
    if not q.known_next:
        return ""
    return "FLAT" if w.next_close == w.closes[-1] else w.label


def write_rows(rows: list[dict], out: Path) -> None:
    """CSV (FIELDS) or JSONL (FIELDS, the prompt and the raw completion), by the suffix."""
    from common.files import atomic_write_text

    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".jsonl":
        atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in rows))
        return
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out, buf.getvalue())


def check_out(out: Path) -> None:
    if out.suffix not in (".csv", ".jsonl"):
        raise ConfigError(f"--out {out}: write .csv or .jsonl")


def predict_batch(cfg: StageConfig, adapter: Path, prices: Path, tickers: list[str],
                  dates: str, out: Path, log_dir: Path, run: Path | None = None) -> list[dict]:
    """Answer every chosen window with one worker serving ``adapter`` (of the run folder
    ``run``, when there is one); write ``out``."""
    from transformers import AutoTokenizer

    from launch.offline.evaluate import serving
    from trainer.rollouts import encode_prompt
    from trainer.tasks.base import Sample
    from trainer.tasks.stock.task import window_messages

    check_out(out)
    todo = queries(load_prices(prices, cfg, tickers), cfg.data.window, dates)
    tok = AutoTokenizer.from_pretrained(cfg.model.name_or_path,
                                        trust_remote_code=cfg.model.trust_remote_code)
    chats = [window_messages(q.window) for q in todo]
    prompts = [encode_prompt(tok, Sample(id="", messages=m, meta={})) for m in chats]
    prior, said = confidence_prior(cfg, run)
    print(f"[predict] {len(todo)} window(s) of {cfg.data.window} days from {prices}; "
          f"adapter {adapter} on base {cfg.model.name_or_path}; P(UP) read against {said}",
          flush=True)
    texts: list[str] = []
    with serving(cfg, adapter, log_dir) as client:
        start = time.monotonic()
        for i in range(0, len(prompts), CHUNK):
            groups = client.generate(prompts[i:i + CHUNK], n=1,
                                     max_tokens=cfg.rollout.max_tokens, temperature=0.0)
            texts += [g[0].text for g in groups]
            rate = len(texts) / max(time.monotonic() - start, 1e-9)
            print(f"[predict] {len(texts)}/{len(prompts)} answered, {rate:.1f}/s, ETA "
                  f"{(len(prompts) - len(texts)) / rate:.0f} s", flush=True)
    rows = [_row(q, m[-1]["content"], t, adapter, prior)
            for q, m, t in zip(todo, chats, texts, strict=True)]
    write_rows(rows, out)
    return rows
