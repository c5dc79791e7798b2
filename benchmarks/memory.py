"""Memory: peak RSS per process of a Stage I run (launcher, learner ranks, workers).

Runs the real recipe through the CLI and every ``--every`` seconds walks the launcher's process
tree (``benchmarks.soak.tree``). For each process it keeps the largest RSS it sampled and the
kernel's own high-water mark (``VmHWM`` in ``/proc/<pid>/status``, exact even between
samples; its last reading before the process exits). Processes are named by role from their
command line; a process without a match (e.g. vLLM's engine-core child) takes its parent's
role, and the table shows each process's command line.

    .venv/bin/python benchmarks/memory.py --steps 10
    .venv/bin/python benchmarks/memory.py --steps 10 --workers 2 --model models/qwen2-25m
Writes ``benchmarks/results/memory[-<model>].json``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import model_sets, parser, result_tag, run_ours, save, table  # noqa: E402
from benchmarks.soak import tree  # noqa: E402

# first match wins: accelerate's own command line names trainer.train too
ROLES = [("vllm.entrypoints", "worker"), ("accelerate", "accelerate launch"),
         ("trainer.train", "learner rank"), ("launch.cli", "launcher")]


def role_of(cmdline: list[str], parent_role: str | None) -> str:
    """The role a command line names, else the parent's (a worker's engine process is part of
    the worker), else the program."""
    text = " ".join(cmdline)
    for needle, role in ROLES:
        if needle in text:
            return role
    return parent_role or (Path(cmdline[0]).name if cmdline else "?")


def short(cmdline: list[str], name: str, width: int = 48) -> str:
    """The command line without the interpreter, cut to ``width`` (or the process name)."""
    text = " ".join(" ".join(cmdline[1:] if len(cmdline) > 1 else cmdline).split()) or name
    return text if len(text) <= width else text[:width - 3] + "..."


def high_water_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class Sampler:
    def __init__(self) -> None:
        self.procs: dict[int, dict] = {}

    def __call__(self, root_pid: int) -> None:
        try:
            procs = tree(root_pid)
        except psutil.NoSuchProcess:
            return
        for p in procs:
            try:
                rss = p.memory_info().rss
                if p.pid not in self.procs:
                    parent = self.procs.get(p.ppid(), {}).get("role")
                    self.procs[p.pid] = {"pid": p.pid, "role": role_of(p.cmdline(), parent),
                                         "process": short(p.cmdline(), p.name()), "rss_peak_mb": 0.0,
                                         "hwm_mb": None}
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            rec = self.procs[p.pid]
            rec["rss_peak_mb"] = max(rec["rss_peak_mb"], rss / 2**20)
            hwm = high_water_kb(p.pid)
            if hwm is not None:
                rec["hwm_mb"] = hwm / 1024


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--every", type=float, default=0.5, help="seconds between samples")
    a = p.parse_args()
    sets = [f"rollout.num_workers={a.workers}", *model_sets(a)]
    tag = result_tag("memory", a)
    sampler = Sampler()
    run = run_ours(a.config, a.steps, sets, tag, on_poll=sampler, poll_s=a.every)
    procs = sorted(sampler.procs.values(), key=lambda r: (r["role"], r["pid"]))
    procs = [r for r in procs if r["rss_peak_mb"] > 1]
    print(f"\nPeak memory per process ({a.config}, {a.workers} worker(s), {a.steps} steps, "
          f"sampled every {a.every}s; exit code {run['exit_code']})")
    print(table(["role", "process", "pid", "peak RSS sampled (MB)", "VmHWM (MB)"],
                [[r["role"], r["process"], r["pid"], r["rss_peak_mb"], r["hwm_mb"]]
                 for r in procs]))
    peak = {r["pid"]: r["hwm_mb"] or r["rss_peak_mb"] for r in procs}
    by_role = {role: sum(peak[r["pid"]] for r in procs if r["role"] == role)
               for role in dict.fromkeys(r["role"] for r in procs)}
    total = sum(by_role.values())
    print("\nsum of peaks per role (MB): " + ", ".join(f"{k} {v:.0f}" for k, v in by_role.items())
          + f"; all {total:.0f} (an upper bound: peaks need not coincide, shared pages count "
          f"once per process)")
    save(tag, {"command": run["command"], "exit_code": run["exit_code"], "processes": procs,
               "sum_of_peaks_by_role_mb": by_role, "sum_of_peaks_mb": total})
    return run["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
