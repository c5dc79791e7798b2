"""Soak: a long CPU run with 2 workers; open files, processes and disk use stay flat.

Runs the real recipe (``stonk stage1``: launcher, 2 vLLM workers, 2 DeepSpeed learner ranks)
on the embedded demo for ``--steps`` steps with short retention (a checkpoint every 10 steps,
the newest ``run.keep_checkpoints`` = 3 kept, ``run.keep_adapter_versions`` = 3), SIGKILLs one
worker once at ``--kill-worker-at`` (so a supervisor restart is part of the soak; 0: never),
and every ``--every`` seconds samples the launcher's process tree (processes, open file
descriptors, threads, RSS) and the run folder (adapter store and checkpoints: bytes and
entries; the metrics/rollout logs, which grow by design). Prints a table and the change from
the first sample after warm-up to the last, and writes ``benchmarks/results/soak.json``.

    .venv/bin/python benchmarks/soak.py --steps 200
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import parser, stage1_command  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root] + root.children(recursive=True)


def _sum(procs, fn) -> int:
    total = 0
    for p in procs:
        try:
            total += fn(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def folder(path: Path) -> tuple[int, int]:
    """(bytes, top-level entries) of a folder; (0, 0) if missing."""
    if not path.is_dir():
        return 0, 0
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return size, sum(1 for _ in path.iterdir())


def sample(pid: int, run_dir: Path, t0: float) -> dict:
    procs = tree(pid)
    metrics = run_dir / "metrics.jsonl"
    step = len(metrics.read_text().splitlines()) if metrics.is_file() else 0
    adapters, n_adapters = folder(run_dir / "adapters")
    ckpts, n_ckpts = folder(run_dir / "checkpoints")
    logs = sum(p.stat().st_size for p in run_dir.glob("*.jsonl"))
    return {"t": round(time.monotonic() - t0, 1), "step": step, "processes": len(procs),
            "fds": _sum(procs, lambda p: p.num_fds()),
            "threads": _sum(procs, lambda p: p.num_threads()),
            "rss_mb": round(_sum(procs, lambda p: p.memory_info().rss) / 2**20),
            "adapter_store_kb": adapters // 1024, "adapter_entries": n_adapters,
            "checkpoints_kb": ckpts // 1024, "checkpoint_entries": n_ckpts,
            "jsonl_logs_kb": logs // 1024}


def kill_one_worker(run_dir: Path) -> int:
    pid = json.loads((run_dir / "workers.json").read_text())["workers"][0]["pid"]
    os.killpg(pid, signal.SIGKILL)
    return pid


COLUMNS = ["t", "step", "processes", "fds", "threads", "rss_mb", "adapter_store_kb",
           "adapter_entries", "checkpoints_kb", "checkpoint_entries", "jsonl_logs_kb"]


def table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def main() -> int:
    p = parser(__doc__, model=False)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--every", type=float, default=15.0, help="seconds between samples")
    p.add_argument("--warmup-steps", type=int, default=20)
    p.add_argument("--kill-worker-at", type=int, default=100)
    p.add_argument("--port", type=int, default=8660)
    a = p.parse_args()
    out_root = REPO / "benchmarks" / "results"
    name = f"soak-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = out_root / name
    sets = [f"train.steps={a.steps}", f"rollout.num_workers={a.workers}",
            f"rollout.base_port={a.port}", "run.checkpoint_every=10", "run.keep_checkpoints=3",
            "run.keep_adapter_versions=3", "eval.every_steps=50", "eval.num_samples=16",
            "eval.final_samples=16", f"run.output_dir={out_root}", f"run.name={name}", *a.set]
    cmd = stage1_command(a.config, sets)
    print("running:", " ".join(cmd), flush=True)
    out_root.mkdir(parents=True, exist_ok=True)
    log = open(out_root / f"{name}.log", "w")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    t0, rows, killed = time.monotonic(), [], None
    while proc.poll() is None:
        time.sleep(a.every)
        try:
            row = sample(proc.pid, run_dir, t0)
        except psutil.NoSuchProcess:
            break
        if a.kill_worker_at and killed is None and row["step"] >= a.kill_worker_at:
            killed = {"pid": kill_one_worker(run_dir), "at_step": row["step"]}
            row["event"] = f"killed worker pid {killed['pid']}"
        rows.append(row)
        print(json.dumps(row), flush=True)
    code = proc.wait()
    faults = run_dir / "faults.jsonl"
    events = [json.loads(x) for x in faults.read_text().splitlines()] if faults.is_file() else []
    steady = [r for r in rows if a.warmup_steps <= r["step"] < a.steps]
    first, last = (steady[0], steady[-1]) if steady else (None, None)
    growth = {k: last[k] - first[k] for k in COLUMNS[2:]} if steady else {}
    peaks = {k: max(r[k] for r in steady) for k in COLUMNS[2:]} if steady else {}
    print(f"\nsoak: exit code {code}, {rows[-1]['step'] if rows else 0} steps, "
          f"{len(rows)} samples every {a.every:.0f}s; worker faults: "
          f"{[e['event'] for e in events]}")
    picks = [r for i, r in enumerate(steady) if i % max(1, len(steady) // 8) == 0]
    print(table(picks + ([last] if last and last not in picks else [])))
    print(f"\nchange from step {first and first['step']} to step {last and last['step']}: "
          f"{growth}\npeaks after warm-up: {peaks}")
    result = {"command": " ".join(cmd), "exit_code": code, "samples": rows,
              "worker_kill": killed, "fault_events": events, "growth_after_warmup": growth,
              "peaks_after_warmup": peaks}
    (out_root / "soak.json").write_text(json.dumps(result, indent=1))
    return code


if __name__ == "__main__":
    sys.exit(main())
