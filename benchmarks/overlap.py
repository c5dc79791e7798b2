"""Overlap: does sampling step k+1 while the learner trains step k (``rollout.overlap``)
shorten a step? Each layout runs with overlap off and on, alternately, ``--rounds`` times:

- ``shared``: the recipe as ``stonk stage1`` runs it here (the config's workers and learner
  ranks, all on every core), as on a CPU box;
- ``split``: the compute split in two, as a worker GPU and a learner GPU are: one worker
  (started as the launcher starts one) on the first half of this process's CPUs (its
  OpenMP threads bound there by ``VLLM_CPU_OMP_THREADS_BIND``, every other thread of it by
  the affinity it starts with) and one learner rank (``accelerate launch ... trainer.train --workers``) on the other half.

Per run: medians after ``--warmup`` of the wall interval between steps, the phases
(``time/generate`` is the whole sampling, hidden or not; ``time/rollout_wait`` the part the
learner waited for) and completions per second; per layout: overlap on against off.

    .venv/bin/python benchmarks/overlap.py --rounds 1 --steps 10 --warmup 2
Writes ``benchmarks/results/overlap[-<model>].json``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    REPO,
    RESULTS,
    median_after_warmup,
    model_sets,
    parser,
    result_tag,
    run_ours,
    run_sets,
    run_timed,
    save,
    table,
)


def halves() -> tuple[list[int], list[int]]:
    """This process's CPUs in two: (workers, learner)."""
    from launch.run.cpu_cores import allowed_cpus

    cpus = allowed_cpus()
    if len(cpus) < 2:
        raise SystemExit("the split layout needs at least 2 CPUs")
    return cpus[:len(cpus) // 2], cpus[len(cpus) // 2:]


@contextmanager
def split_worker(cfg, cpus: list[int], root: Path):
    """One worker on ``cpus`` (started as the launcher starts one, ``benchmarks.serving``):
    its OpenMP threads bound there by ``VLLM_CPU_OMP_THREADS_BIND``, every other thread of it
    by the affinity it inherits from this process while it starts. Yields its URL."""
    from benchmarks.serving import serving
    from launch.run.cpu_cores import BIND_VAR, split_cores

    env = dict(cfg.rollout.env, **{BIND_VAR: split_cores(1, cpus)[0]})
    cfg = replace(cfg, rollout=replace(cfg.rollout, num_workers=1, env=env))
    everything = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        with serving(cfg, root) as (client, _, _):
            os.sched_setaffinity(0, everything)
            yield client.urls[0]
    finally:
        os.sched_setaffinity(0, everything)


def split_run(config: str, steps: int, sets: list[str], cpus: list[int], url: str,
              name: str) -> dict:
    """One learner rank, by hand, on ``cpus`` against the running worker at ``url``."""
    from launch.run.cpu_cores import split_cores

    run_dir = RESULTS / name
    cmd = ["taskset", "-c", split_cores(1, cpus)[0], sys.executable, "-m", "accelerate.commands.launch",
           "--config_file", "launch/accelerate/cpu_deepspeed.yaml", "--num_processes", "1",
           "--main_process_port", "29680", "-m", "trainer.train", "--config", config,
           "--run-dir", str(run_dir), "--workers", url]
    for s in [*run_sets(steps), *sets, "launch.num_processes=1",
              f"launch.learner_threads={len(cpus)}"]:
        cmd += ["--set", s]
    return run_timed(cmd, run_dir, env={"DS_ACCELERATOR": "cpu"})


def summary(runs: list[dict], warmup: int, completions_per_step: int) -> dict:
    """Medians over the runs' steps after ``warmup``: wall interval, phases, completions/s."""
    rows = [r for run in runs for r in run["rows"][warmup:]]
    wall = median_after_warmup([w for run in runs for w in run["wall"][warmup:]], 0)
    out = {"wall": wall, "completions_per_s": completions_per_step / wall}
    for ph in ("generate", "learner", "rollout_wait", "sync"):
        out[ph] = median_after_warmup([r.get(f"time/{ph}", 0.0) for r in rows], 0)
    return out


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--layouts", default="shared,split")
    a = p.parse_args()
    from trainer.config import load_config

    sets = model_sets(a)
    cfg = load_config(REPO / a.config, sets)
    per_rank = cfg.train.prompts_per_rank * cfg.rollout.group_size
    tag = result_tag("overlap", a)
    layouts = a.layouts.split(",")
    ranks = {"shared": cfg.launch.num_processes, "split": 1}
    runs: dict[tuple[str, bool], list[dict]] = {}
    for r in range(a.rounds):
        for layout in layouts:
            with ExitStack() as stack:  # the split layout's own worker, only while its runs go
                if layout == "split":
                    wcpus, lcpus = halves()
                    url = stack.enter_context(
                        split_worker(cfg, wcpus, RESULTS / f"{tag}-worker{r}"))
                for on in (False, True):
                    name = f"{tag}-{layout}-{'on' if on else 'off'}{r}"
                    extra = [*sets, f"rollout.overlap={str(on).lower()}"]
                    run = (run_ours(a.config, a.steps, extra, name) if layout == "shared" else
                           split_run(a.config, a.steps, extra, lcpus, url,
                                     f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"))
                    if run["exit_code"] != 0:
                        raise SystemExit(f"{name} failed (exit {run['exit_code']}): "
                                         f"{run['run_dir']}")
                    runs.setdefault((layout, on), []).append(run)
    result, rows = {}, []
    for layout in layouts:
        off = summary(runs[(layout, False)], a.warmup, ranks[layout] * per_rank)
        for on in (False, True):
            s = summary(runs[(layout, on)], a.warmup, ranks[layout] * per_rank)
            s["speedup"] = s["completions_per_s"] / off["completions_per_s"]
            result[f"{layout}-{'on' if on else 'off'}"] = s
            rows.append([layout, "on" if on else "off", ranks[layout], s["wall"], s["generate"],
                         s["learner"], s["rollout_wait"], s["sync"], s["completions_per_s"],
                         f"{s['speedup']:.2f}x"])
    print(f"\nrollout.overlap off/on ({cfg.model.name_or_path}; medians of {a.rounds} "
          f"round(s) x {a.steps - a.warmup} steps after {a.warmup} warm-up)")
    print(table(["layout", "overlap", "learner ranks", "step s", "generate s", "learner s",
                 "rollout wait s", "sync s", "completions/s", "vs off"], rows))
    save(tag, {"config": a.config, "sets": sets, "summary": result,
               "runs": {f"{k[0]}-{k[1]}": [x["command"] for x in v] for k, v in runs.items()}})
    print(json.dumps({k: round(v["speedup"], 3) for k, v in result.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
