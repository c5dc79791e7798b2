"""``workers.json``: the one file that tells the learner ranks where the workers are, its format
defined once. The launcher (``WorkerPool.write_manifest``, and the first learner node of a
multi-node Slurm attempt, which adds the attempt's number) writes it; the learner ranks
(``trainer/train.py``) and the other learner nodes read it.

    {"workers": [{"url": "http://host:8100", ...}, ...], "attempt": 3}

Each worker entry has its ``url``; the launcher adds what it knows (pid, port, log file).
``attempt`` is there on Slurm only.
"""

from __future__ import annotations

import json
from pathlib import Path

from common.files import atomic_write_text, read_json


def write_workers(path: Path, workers: list[dict], attempt: int | None = None) -> None:
    """Write ``path`` atomically: ``workers`` (each with its ``url``), ``attempt`` if given."""
    if not all("url" in w for w in workers):
        raise ValueError(f"{path}: every worker entry needs its url")
    data: dict = {"workers": workers}
    if attempt is not None:
        data["attempt"] = attempt
    atomic_write_text(path, json.dumps(data, indent=2))


def worker_urls(path: Path) -> list[str]:
    """The workers' URLs ``path`` names, in order."""
    return [w["url"] for w in json.loads(Path(path).read_text())["workers"]]


def attempt_of(path: Path) -> int | None:
    """The Slurm attempt ``path`` was written for (None: no file yet, or not a Slurm one)."""
    return read_json(path).get("attempt")
