"""Overlap: does sampling step k+1 while the learner trains step k (``rollout.overlap``)
shorten a step? Each layout runs with overlap off and on, alternately, ``--rounds`` times:

- ``shared``: the recipe as ``stonk stage1`` runs it here (the config's workers and learner
  ranks, all on every core), as on a CPU box;
- ``split``: the compute split in two, as a worker GPU and a learner GPU are: one worker
  (``stonk workers``) on the first half of this process's CPUs (its OpenMP threads bound
  there by ``VLLM_CPU_OMP_THREADS_BIND``, every other thread of it there by ``taskset``) and
  one learner rank (``accelerate launch ... trainer.train --workers``) on the other half.

Per run: medians after ``--warmup`` of the wall interval between steps, the phases
(``time/generate`` is the whole sampling, hidden or not; ``time/rollout_wait`` the part the
learner waited for) and completions per second; per layout: overlap on against off.

    .venv/bin/python benchmarks/overlap.py --rounds 1 --steps 10 --warmup 2
Writes ``benchmarks/results/overlap[-<model>].json``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
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

SPLIT_PORT = 8480


def halves() -> tuple[str, str]:
    """This process's CPUs in two (workers, learner) as taskset / vLLM lists."""
    from launch.cpu_cores import allowed_cpus, split_cores

    cpus = allowed_cpus()
    if len(cpus) < 2:
        raise SystemExit("the split layout needs at least 2 CPUs")
    a, b = split_cores(2, cpus)
    return a, b


def start_split_worker(config: str, sets: list[str], cpus: str, log_dir: Path):
    """``stonk workers`` (one worker) on ``cpus``; returns (process, url) once healthy."""
    from trainer.config import load_config

    env = dict(load_config(REPO / config, sets).rollout.env, VLLM_CPU_OMP_THREADS_BIND=cpus)
    flow = "{" + ", ".join(f'{k}: "{v}"' for k, v in env.items()) + "}"
    cmd = ["taskset", "-c", cpus, sys.executable, "-m", "launch.cli", "workers",
           "--config", config, "--log-dir", str(log_dir)]
    for s in [*sets, "rollout.num_workers=1", f"rollout.base_port={SPLIT_PORT}",
              f"rollout.env={flow}"]:
        cmd += ["--set", s]
    print("workers:", " ".join(cmd), flush=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=open(log_dir / "stonk-workers.log", "w"),
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{SPLIT_PORT}"
    deadline = time.monotonic() + 900
    while True:
        try:
            if urllib.request.urlopen(f"{url}/health", timeout=5).status == 200:
                return proc, url
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"the split layout's worker did not start; see {log_dir}")
        time.sleep(2)


def split_run(config: str, steps: int, sets: list[str], cpus: str, url: str,
              name: str) -> dict:
    """One learner rank, by hand, on ``cpus`` against the running worker at ``url``."""
    run_dir = RESULTS / name
    threads = len(os.sched_getaffinity(0)) // 2 if hasattr(os, "sched_getaffinity") else 1
    all_sets = [*run_sets(steps), *sets, "launch.num_processes=1",
                f"launch.learner_threads={max(1, threads)}"]
    cmd = ["taskset", "-c", cpus, sys.executable, "-m", "accelerate.commands.launch",
           "--config_file", "launch/accelerate/cpu_deepspeed.yaml", "--num_processes", "1",
           "--main_process_port", "29680", "-m", "trainer.train", "--config", config,
           "--run-dir", str(run_dir), "--workers", url]
    for s in all_sets:
        cmd += ["--set", s]
    return run_timed(cmd, run_dir, env={"DS_ACCELERATOR": "cpu"})


def summary(run: dict, warmup: int) -> dict:
    rows = run["rows"][warmup:]
    ranks = {len(list(Path(run["run_dir"]).glob("rollouts.rank*.jsonl")))}
    out = {"wall": median_after_warmup(run["wall"], warmup), "ranks": ranks.pop()}
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
    runs: dict[tuple[str, bool], list[dict]] = {}
    for r in range(a.rounds):
        for layout in layouts:
            worker = None  # the split layout's own worker, only while its runs go
            try:
                if layout == "split":
                    wcpus, lcpus = halves()
                    worker, url = start_split_worker(a.config, sets, wcpus,
                                                     RESULTS / f"{tag}-worker{r}")
                for on in (False, True):
                    name = f"{tag}-{layout}-{'on' if on else 'off'}{r}"
                    extra = [*sets, f"rollout.overlap={str(on).lower()}"]
                    run = (run_ours(a.config, a.steps, extra, name) if worker is None else
                           split_run(a.config, a.steps, extra, lcpus, url,
                                     f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"))
                    if run["exit_code"] != 0:
                        raise SystemExit(f"{name} failed (exit {run['exit_code']}): "
                                         f"{run['run_dir']}")
                    runs.setdefault((layout, on), []).append(run)
            finally:
                if worker is not None:
                    worker.send_signal(signal.SIGTERM)
                    worker.wait(timeout=120)
    result, rows = {}, []
    for layout in layouts:
        base = None
        for on in (False, True):
            pooled = {"run_dir": "", "rows": [], "wall": []}
            for run in runs[(layout, on)]:
                pooled["rows"] += run["rows"][a.warmup:]
                pooled["wall"] += run["wall"][a.warmup:]
                pooled["run_dir"] = run["run_dir"]
            s = summary(pooled, 0)
            s["completions_per_s"] = s["ranks"] * per_rank / s["wall"]
            base = base or s["completions_per_s"]
            s["speedup"] = s["completions_per_s"] / base
            result[f"{layout}-{'on' if on else 'off'}"] = s
            rows.append([layout, "on" if on else "off", s["ranks"], s["wall"], s["generate"],
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
