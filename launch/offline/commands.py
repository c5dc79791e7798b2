"""``stonk`` subcommands that use a trained adapter: ``eval``, ``predict``, ``serve`` and
``export``. Each takes ``--run RUN`` and ``--adapter best|latest|DIR`` the same way
(``launch/offline/evaluate.run_adapter``) and turns a user error into one ``error:`` line, exit 2.
Heavy imports happen inside the handlers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _adapter_args(p: argparse.ArgumentParser, required: bool, config: bool = True) -> None:
    """--run, --adapter and --set (and --config), the same for every command here."""
    p.add_argument("--run", required=required, metavar="RUN", help="a run folder (runs/...)")
    p.add_argument("--adapter", default="best", help="best (default), latest, or an adapter "
                   "folder" + ("" if required else " (then --run may be left out)"))
    if config:
        p.add_argument("--config", help="the run config of an adapter folder outside a run")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override the run's config, e.g. --set data.columns.close=Last")


def _user_errors() -> tuple[type[Exception], ...]:
    """What a user's input or machine can cause: a bad setting or file, a worker that will
    not start, a model folder or hub id that does not load (OSError, HFValidationError),
    no network or token for the hub (HTTP errors are OSErrors)."""
    from huggingface_hub.errors import HFValidationError

    from launch.planning.preflight import PreflightError
    from rollout.server import WorkerError
    from trainer.config import ConfigError
    from trainer.tasks.hub import DataError

    return ConfigError, PreflightError, DataError, WorkerError, OSError, HFValidationError


def _fail(exc: Exception) -> int:
    """One line; a worker's message goes on with its log's tail, the file it names."""
    print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
    return 2


def _resolve(args: argparse.Namespace):
    """(config, adapter folder, run folder or None: --run, else the run holding --adapter)."""
    from launch.offline.evaluate import run_adapter

    return run_adapter(Path(args.run) if args.run else None, args.adapter,
                       Path(args.config) if args.config else None, args.set)


def eval_splits(args: argparse.Namespace) -> list[str]:
    """The splits ``stonk eval`` evaluates: each ``--split`` given, else test (argparse's
    "append" cannot hold a default list: it would append to it)."""
    return args.split or ["test"]


def _eval(args: argparse.Namespace) -> int:
    from launch.offline.evaluate import evaluate_run

    try:
        report = evaluate_run(Path(args.run), eval_splits(args), args.adapter, args.set,
                              args.samples,
                              Path(args.out) if args.out else None)
    except _user_errors() as exc:
        return _fail(exc)
    print(f"[eval] report: {report}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from launch.offline.predict import predict_batch
    from trainer.config import ConfigError

    try:
        cfg, adapter, run = _resolve(args)
        from trainer.tasks.registry import task_usage

        if not task_usage(cfg).reads_prices:
            raise ConfigError(f"stonk predict reads market prices for the stock task; this "
                              f"adapter was trained on task {cfg.task!r} (use `stonk serve`)")
        if args.window is not None and args.window != cfg.data.window:
            raise ConfigError(f"--window {args.window}: the adapter was trained on "
                              f"data.window = {cfg.data.window} days; its answers are only "
                              f"meaningful on windows of that length")
        rows = predict_batch(cfg, adapter, Path(args.prices), args.ticker or [], args.dates,
                             Path(args.out), Path(args.log_dir), run)
    except _user_errors() as exc:
        return _fail(exc)
    for r in rows[:10]:
        print(f"{r['ticker']} {r['date']}: {r['prediction'] or '-'} "
              f"(confidence {r['confidence']}, P(UP) {r['p_up']})")
    more = f" ({len(rows) - 10} more)" if len(rows) > 10 else ""
    print(f"[predict] {len(rows)} row(s){more} written to {args.out}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from launch.offline.serve import serve

    try:
        cfg, adapter, run = _resolve(args)
        out = Path(args.log_dir) if args.log_dir else (run or adapter.parent) / "serve"
        return serve(cfg, adapter, args.name, args.host, args.port, out)
    except _user_errors() as exc:
        return _fail(exc)


def _export(args: argparse.Namespace) -> int:
    from launch.offline.export import export, push_to_hub

    try:
        cfg, adapter, run = _resolve(args)
        out = Path(args.out) if args.out else (run or adapter.parent) / "export"
        export(cfg, run, adapter, out)
        if args.push_to_hub:
            print(f"[export] pushed to {push_to_hub(out, args.push_to_hub, args.private)}")
    except _user_errors() as exc:
        return _fail(exc)
    return 0


def add_parsers(sub) -> None:
    ev = sub.add_parser("eval", help="evaluate a run's adapter on a split; write its report")
    _adapter_args(ev, required=True, config=False)
    ev.add_argument("--split", action="append", choices=["train", "val", "test"],
                    help="split(s) to evaluate (repeatable; default: test)")
    ev.add_argument("--samples", type=int, default=None,
                    help="first N samples of each split (default: eval.final_samples; 0: all)")
    ev.add_argument("--out", help="folder for report.md and plots (default: the run folder)")
    ev.set_defaults(fn=_eval)
    pr = sub.add_parser("predict", help="a trained adapter's answers for every ticker (and "
                        "date) of a price file or folder, written as CSV or JSONL")
    _adapter_args(pr, required=False)
    pr.add_argument("--prices", required=True, metavar="PATH",
                    help="prices: a CSV/Parquet file (one ticker, or a ticker column) or a "
                         "folder of them; read like data.source=local with the run's "
                         "data.columns")
    pr.add_argument("--ticker", action="append", help="only this ticker (repeatable)")
    pr.add_argument("--dates", default="last", help="last (each ticker's latest window, "
                    "default), all, or the windows ending on D1,D2,...")
    pr.add_argument("--out", default="predictions.csv", help="output .csv or .jsonl")
    pr.add_argument("--window", type=int, default=None,
                    help="refused unless it equals the run's data.window")
    pr.add_argument("--log-dir", default="runs/predict-logs", help="the worker's log folder")
    pr.set_defaults(fn=_predict)
    sv = sub.add_parser("serve", help="serve a trained adapter behind vLLM's OpenAI-compatible "
                                      "server until Ctrl-C")
    _adapter_args(sv, required=False)
    sv.add_argument("--name", default="stonk", help="the model name clients ask for")
    sv.add_argument("--host", default="127.0.0.1",
                    help="address to bind (off loopback: $STONK_API_KEY is required)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--log-dir", default=None,
                    help="server.log and request.json (default: RUN/serve)")
    sv.set_defaults(fn=_serve)
    ex = sub.add_parser("export", help="write the adapter and a merged bf16 model (plain "
                                       "transformers / vLLM) with a model card")
    _adapter_args(ex, required=False)
    ex.add_argument("--out", help="export folder (default: RUN/export); must not exist")
    ex.add_argument("--push-to-hub", metavar="REPO", help="also upload to the Hugging Face Hub "
                    "repo REPO (needs network and a token; not testable offline, so untested "
                    "by the project's CI)")
    ex.add_argument("--private", action="store_true", help="with --push-to-hub: a private repo")
    ex.set_defaults(fn=_export)
