"""Disjoint CPU cores for the vLLM workers of a CPU node.

vLLM-CPU binds a worker's OpenMP threads to every core of its NUMA node unless
``VLLM_CPU_OMP_THREADS_BIND`` says otherwise, so two workers on one node fight over the same
cores: measured on 2 cores, two unbound workers decode at 840 tokens/s together against
1797 when each has its own core (BENCHMARKS.md, "Rollout"). With ``rollout.cpu_bind`` on (the
default) and two or more workers on a CPU node, the launcher gives each worker its own share
of the cores this process may run on (``os.sched_getaffinity``, so a Slurm or cgroup CPU set
is respected). A ``VLLM_CPU_OMP_THREADS_BIND`` in ``rollout.env`` wins; with more workers than
cores nothing is bound.
"""

from __future__ import annotations

import os

BIND_VAR = "VLLM_CPU_OMP_THREADS_BIND"


def allowed_cpus() -> list[int]:
    """CPU ids this process may run on, ascending."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def _ranges(cpus: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"`` (the list format vLLM reads)."""
    parts, start = [], 0
    for i in range(1, len(cpus) + 1):
        if i == len(cpus) or cpus[i] != cpus[i - 1] + 1:
            a, b = cpus[start], cpus[i - 1]
            parts.append(f"{a}-{b}" if b > a else str(a))
            start = i
    return ",".join(parts)


def split_cores(workers: int, cpus: list[int]) -> list[str]:
    """Disjoint core lists (``"0-3"``) for ``workers`` workers over ``cpus``, as even as
    possible, in order."""
    if workers < 1 or workers > len(cpus):
        raise ValueError(f"{workers} workers cannot each have a core of {len(cpus)}")
    bounds = [round(i * len(cpus) / workers) for i in range(workers + 1)]
    return [_ranges(cpus[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def worker_bindings(workers: int, env: dict[str, str], cpus: list[int]) -> list[str | None]:
    """The bind list for each of ``workers`` CPU workers, or None where nothing is bound
    (one worker, a bind set by the user, or more workers than cores)."""
    if workers < 2 or BIND_VAR in env or workers > len(cpus):
        return [None] * workers
    return split_cores(workers, cpus)
