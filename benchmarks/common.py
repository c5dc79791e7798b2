"""What the benchmark scripts share: running our recipe through the CLI with per-step wall
times, medians after warm-up, markdown tables, threshold crossings, JSON results.

Our side always runs the real recipe (``python -m launch.cli stage1 ...``: launcher, vLLM
workers, DeepSpeed learner ranks). ``metrics.jsonl`` carries the phase timings; the wall time
of a step is measured here as the interval between its line and the previous one appearing
(so it includes barriers and logging that the phases leave out). Step 1's interval includes
start-up and is never a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
PHASES = ["generate", "reward", "learner", "sync"]
DEFAULT_CONFIG = "configs/demo/stage1.yaml"


def parser(doc: str, model: bool = True) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark takes: ``--config``, ``--set``
    (repeatable config overrides) and, when ``model``, ``--model`` (a model folder)."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--config", default=DEFAULT_CONFIG)
    if model:
        p.add_argument("--model", help="model folder (default: the config's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    return p


def model_sets(a: argparse.Namespace) -> list[str]:
    """The ``--set`` overrides, plus ``model.name_or_path`` when ``--model`` was given."""
    return [*a.set, *([f"model.name_or_path={a.model}"] if a.model else [])]


def result_tag(name: str, a: argparse.Namespace) -> str:
    """The results name: ``name``, or ``name-<model folder>`` when ``--model`` was given."""
    return name + (f"-{Path(a.model).name}" if a.model else "")


def median_after_warmup(values: list[float], warmup: int) -> float | None:
    """Median of ``values[warmup:]``, ignoring None; None when nothing is left."""
    kept = [v for v in values[warmup:] if v is not None]
    return statistics.median(kept) if kept else None


def table(headers: list[str], rows: list[list]) -> str:
    """A markdown table; floats with 3 decimals, None as '-'."""
    def cell(v) -> str:
        if v is None:
            return "-"
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def first_crossing(points: list[tuple[int, float, float]],
                   threshold: float) -> tuple[int, float, float] | None:
    """points: (step, seconds so far, value) in step order -> the first with value >=
    threshold, or None."""
    for p in points:
        if p[2] >= threshold:
            return p
    return None


def cumulative(values: list[float]) -> list[float]:
    out, total = [], 0.0
    for v in values:
        total += v
        out.append(total)
    return out


def save(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")
    return path


def completions_per_step(cfg) -> int:
    """Completions one step trains on: learner ranks x prompts per rank x G."""
    return cfg.launch.num_processes * cfg.train.prompts_per_rank * cfg.rollout.group_size


def stage1_command(config: str, sets: list[str]) -> list[str]:
    """``python -m launch.cli stage1 --config CONFIG --set ...``: our recipe as users run it."""
    cmd = [sys.executable, "-m", "launch.cli", "stage1", "--config", config]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def run_ours(config: str, steps: int, sets: list[str], tag: str,
             on_poll: Callable[[int], None] | None = None, poll_s: float = 0.2) -> dict:
    """Run Stage I through the CLI for ``steps`` steps (checkpoints only at the last step, no
    periodic eval, a final evaluation of 8 samples; ``sets`` may override each). Returns the
    run folder, the metrics rows, each step's wall interval (``wall[0]`` includes start-up),
    the command and its exit code. ``on_poll(pid)`` is called every ``poll_s`` seconds with
    the launcher's pid."""
    name = f"{tag}-{time.strftime('%Y%m%d-%H%M%S')}"
    sets = [*run_sets(steps), *sets, f"run.output_dir={RESULTS}", f"run.name={name}"]
    return run_timed(stage1_command(config, sets), RESULTS / name, on_poll, poll_s)


def run_sets(steps: int) -> list[str]:
    """What every benchmark run sets: ``steps`` steps, one checkpoint at the end, no periodic
    evaluation, a final one of 8 samples."""
    return [f"train.steps={steps}", f"run.checkpoint_every={steps}", "eval.every_steps=0",
            "eval.final_samples=8"]


def run_timed(cmd: list[str], run_dir: Path, on_poll: Callable[[int], None] | None = None,
              poll_s: float = 0.2, env: dict[str, str] | None = None) -> dict:
    """Run ``cmd`` (a training run writing ``run_dir/metrics.jsonl``), logging to
    ``<run_dir>.log``, and time each step as the interval between its metrics line and the
    previous one appearing (``env``: more environment variables); the result as
    ``run_ours`` describes it."""
    print("ours:", " ".join(cmd), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    metrics = run_dir / "metrics.jsonl"
    log_path = run_dir.parent / f"{run_dir.name}.log"
    with open(log_path, "w") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})))
        arrivals: list[float] = []
        while proc.poll() is None:
            if on_poll:
                on_poll(proc.pid)
            n = len(metrics.read_text().splitlines()) if metrics.is_file() else 0
            arrivals += [time.perf_counter()] * (n - len(arrivals))
            time.sleep(poll_s)
        code = proc.wait()
    rows = [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.is_file() else []
    arrivals += [time.perf_counter()] * (len(rows) - len(arrivals))
    wall = [b - a for a, b in zip([t0, *arrivals], arrivals, strict=False)]
    if code != 0:
        print(f"ours: exit code {code}; see {log_path}", flush=True)
    return {"run_dir": str(run_dir), "rows": rows, "wall": wall, "command": " ".join(cmd),
            "exit_code": code, "seconds_total": time.perf_counter() - t0}


def run_trl(config: str, steps: int, sets: list[str], out: Path,
            extra: list[str] | None = None) -> dict:
    """Run the TRL side (``benchmarks/trl_grpo.py``) in its own process; its JSON record."""
    cmd = [sys.executable, "benchmarks/trl_grpo.py", "--config", config, "--steps", str(steps),
           "--out", str(out), *(extra or [])] + [x for s in sets for x in ("--set", s)]
    print("trl:", " ".join(cmd), flush=True)
    with open(out.with_suffix(".log"), "w") as log:
        code = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise SystemExit(f"TRL side failed (exit {code}); see {out.with_suffix('.log')}")
    return json.loads(out.read_text())


def phase_sum(row: dict) -> float:
    return sum(row[f"time/{ph}"] for ph in PHASES)
