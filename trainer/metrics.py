"""Step metrics: named, timed phases, ``metrics.jsonl`` and the console progress line."""

from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from pathlib import Path


class PhaseTimer:
    """``with timer("generate"): ...`` accumulates wall seconds per named phase."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def as_metrics(self) -> dict[str, float]:
        return {f"time/{k}": round(v, 4) for k, v in self.seconds.items()}


def gpu_memory(device) -> dict[str, float]:
    """This rank's peak GPU memory so far, in GiB (torch's allocator: what `stonk plan`'s
    learner figure is checked against); nothing off CUDA."""
    if getattr(device, "type", "cpu") != "cuda":
        return {}
    import torch

    return {"memory/peak_allocated_gib": torch.cuda.max_memory_allocated(device) / 2**30,
            "memory/peak_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30}


class MetricsWriter:
    """Appends one JSON object per step to ``metrics.jsonl`` (line-buffered, crash safe)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fh = open(self.path, "a", buffering=1)

    def write(self, record: dict) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                 for k, v in record.items()}
        self._fh.write(json.dumps(clean) + "\n")

    def close(self) -> None:
        self._fh.close()


def _hms(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """One console line per step: step, reward, loss, KL, rate and ETA."""

    def __init__(self, total: int, start_step: int = 0):
        self.total = total
        self.start_step = start_step
        self.t0 = time.perf_counter()

    def line(self, step: int, m: dict) -> str:
        done = step - self.start_step
        elapsed = time.perf_counter() - self.t0
        rate = elapsed / max(done, 1)
        eta = rate * (self.total - step)
        return (f"step {step}/{self.total} | reward {m.get('reward/mean', 0):.3f} "
                f"| acc {m.get('task/accuracy', 0):.3f} | valid {m.get('task/format_valid', 0):.2f} | loss {m.get('loss', 0):+.4f} "
                f"| kl {m.get('kl', 0):.4f} | adapter v{m.get('adapter_version', '?')} "
                f"| {rate:.1f} s/step | elapsed {_hms(elapsed)} | ETA {_hms(eta)}")
