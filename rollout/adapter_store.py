"""Versioned adapter store: publish LoRA adapters atomically where workers can read them.

Layout under ``root``::

    v000000/            adapter v0 (complete: renamed into place only after it is written)
    v000001/  ...
    LATEST              text: the newest complete version number (replaced atomically)

A version directory is written as ``.tmp-v000001-<pid>/`` and renamed into place, so a
reader never sees a half-written adapter. Each version gets its own path on purpose: vLLM
keys its prefix cache on (adapter name, path), so a new path guarantees no KV block computed
under an older adapter is reused, and a worker's ``/v1/models`` entry shows which version it
serves.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from common.files import atomic_write_text, fsync_dir

_VERSION_DIR = re.compile(r"^v(\d{6})$")


class AdapterStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, version: int) -> Path:
        return self.root / f"v{version:06d}"

    def publish(self, version: int, write: Callable[[Path], None]) -> Path:
        """Call ``write(tmp_dir)`` to fill a fresh directory, then make it version ``version``."""
        final = self.path(version)
        if final.exists():
            raise FileExistsError(f"{final}: adapter version {version} is already published")
        tmp = self.root / f".tmp-{final.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            write(tmp)
            meta = {"version": version, "published_at": time.time()}
            (tmp / "stonk_version.json").write_text(json.dumps(meta))
            for f in tmp.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            os.rename(tmp, final)
            fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        atomic_write_text(self.root / "LATEST", f"{version}\n")
        return final

    def versions(self) -> list[int]:
        found = (_VERSION_DIR.match(p.name) for p in self.root.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def latest(self) -> int | None:
        marker = self.root / "LATEST"
        return int(marker.read_text().strip()) if marker.exists() else None

    def prune(self, keep: int, current: int) -> list[int]:
        """Keep ``current`` (the version just published) and the ``keep - 1`` before it,
        which workers may still serve (one step behind with rollout.overlap); delete older
        ones, and any above ``current``: leftovers no worker of this run can serve (a
        resumed run rolls back past them). Returns the versions removed."""
        low = current - max(keep, 1) + 1
        old = [v for v in self.versions() if v < low or v > current]
        for v in old:
            shutil.rmtree(self.path(v), ignore_errors=True)
        return old
