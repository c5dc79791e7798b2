"""The text report ``make data`` prints: source, tickers, splits, skips, baselines."""

from __future__ import annotations

from trainer.tasks.stock.baselines import EVAL_SPLITS
from trainer.tasks.stock.splits import SPLITS
from trainer.tasks.stock.task import StockTask


def table(header: list[str], rows: list[list[object]]) -> str:
    cells = [header] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _pct(x: float | None) -> str | None:
    return None if x is None else f"{100 * x:.1f}%"


def _num(x: float | None) -> str | None:
    return None if x is None else f"{x:.3f}"


def _ranges(task: StockTask) -> dict[str, str]:
    c = task.cfg
    return {"train": f"{c.start or 'first'} .. {c.train_end}",
            "val": f"after {c.train_end} .. {c.val_end}",
            "test": f"after {c.val_end} .. {c.test_end or 'last'}"}


def render(task: StockTask) -> str:
    c, rep = task.cfg, task.report
    out = [f"source: {c.source} ({rep.origin}); window {c.window} days; "
           f"{'balanced 50/50 (Stage I)' if c.balance else 'natural distribution (Stage II)'}",
           ""]
    per_ticker = {t: dict.fromkeys(SPLITS, 0) for t in task.tickers}
    for name in SPLITS:
        for s in task.split(name):
            per_ticker[s.meta["ticker"]][name] += 1
    out.append(table(["ticker", "rows", "first", "last", *SPLITS],
                     [[t, rows, first, last, *per_ticker[t].values()]
                      for t, (rows, first, last) in sorted(task.tickers.items())]))
    out.append("")
    ranges = _ranges(task)
    header = ["split", "date range (config)", "label days kept", "natural", "natural up",
              "kept", "UP", "DOWN", "kept up"]
    if task.has_oracle:
        header.append("Bayes expected acc")
    rows = []
    for name, st in task.stats.items():
        row = [name, ranges[name], f"{st.first} .. {st.last}" if st.kept else None,
               st.natural, _pct(st.natural_up_ratio), st.kept, st.kept_up,
               st.kept - st.kept_up, _pct(st.up_ratio)]
        if task.has_oracle:
            row.append(_pct(task.bayes_expected_accuracy(name)))
        rows.append(row)
    out.append(table(header, rows))
    out.append("")
    noted = [("skipped", r, n) for r, n in rep.skipped.items()] + \
            [("repaired", r, n) for r, n in rep.repaired.items()]
    if noted:
        out.append(table(["", "reason", "count", "example"],
                         [[kind, r, n, (rep.examples.get(r) or [""])[0]]
                          for kind, r, n in noted]))
    else:
        out.append("nothing skipped")
    out.append("")
    header = ["baseline (fit on train)"] + [f"{s} {k}" for s in EVAL_SPLITS
                                            for k in ("acc", "auc")]
    rows = [[name] + [f(getattr(by_split[s], attr)) if s in by_split else None
                      for s in EVAL_SPLITS for f, attr in ((_pct, "accuracy"), (_num, "auc"))]
            for name, by_split in task.baselines.items()]
    out.append(table(header, rows))
    return "\n".join(out)
