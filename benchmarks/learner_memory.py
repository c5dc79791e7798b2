"""Learner memory: the plan's estimate (launch/planning/memory.py) against the learner's measured peak.

Each row runs the real ``trainer.learner.Learner`` (peft LoRA, the GRPO step with the
reference forward and the entropy, float32, Accelerate's CPU path: plain AdamW, no
DeepSpeed) for two optimizer steps on one micro-batch of ``micro`` sequences of ``prompt``
+ ``completion`` tokens (every completion at the limit), in a fresh process. The settings
are configs/stage1.yaml's (LoRA r=16 on q/k/v/o, dropout 0.05, KL 0.15) with the model, the
shape, gradient checkpointing and ``train.logits_chunk_tokens`` of the row.

Measured: the process's resident-memory high-water mark (``VmHWM``) during the steps, reset
after the model is loaded (``/proc/self/clear_refs``), minus the resident memory right before
the model was loaded, after a throwaway step of the embedded model on a tiny batch (every
library, thread pool and kernel a step touches already loaded: the plan's runtime term). glibc is
told to serve every block of 64 KiB or more by mmap and to give freed memory back at once
(``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``): its default keeps freed blocks up
to 32 MiB in the heap, so RSS would show the allocator's high-water mark instead of the
tensors' (the question a GPU's allocated-bytes peak answers). The estimate is the plan's
learner figure for the same settings without its fixed runtime term (the baseline holds
that), ``deepspeed=False`` (no ZeRO bucket, AdamW in float32).

    .venv/bin/python benchmarks/learner_memory.py            # every row (~5 min on 2 cores)
    .venv/bin/python benchmarks/learner_memory.py --rows 0 1  # some rows
Needs the three models (``BUILD`` below). Writes ``benchmarks/results/learner_memory.json``;
BENCHMARKS.md section 8 records a run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, save, table  # noqa: E402

GIB = 2**30
CONFIG = "configs/stage1.yaml"
CPU_SETS = ["launch.device=cpu", "launch.worker_gpus=[]", "launch.learner_gpus=[]",
            "launch.colocate=false", "model.load_in_4bit=false", "model.dtype=float32",
            "rollout.dtype=float32"]
# (model folder, micro-batch, prompt tokens, completion tokens, checkpointing, logits chunk)
ROWS = [
    ("models/tiny-qwen2-fmt", 16, 128, 384, False, 1024),
    ("models/tiny-qwen2-fmt", 16, 128, 384, True, 1024),
    ("models/qwen2-25m", 8, 128, 384, False, 1024),
    ("models/qwen2-25m", 8, 128, 384, True, 1024),
    ("models/qwen2-v151936", 8, 128, 256, False, 1024),
    ("models/qwen2-v151936", 8, 128, 256, True, 1024),
    ("models/qwen2-v151936", 8, 128, 256, True, 0),
]
TOLERANCE = 0.30
WARM_MODEL = "models/tiny-qwen2-fmt"
BUILD = ("make embedded; make bench-model; .venv/bin/python -m launch.cli tiny-model --out "
         "models/qwen2-v151936 --model-vocab 151936")
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def row_config(model: str, micro: int, completion: int, checkpointing: bool, chunk: int):
    """configs/stage1.yaml on CPU in float32 with the row's model and shape: one prompt of
    ``micro`` samples per step, so one micro-batch."""
    from trainer.config import load_config

    return load_config(REPO / CONFIG, [
        *CPU_SETS, f"model.name_or_path={REPO / model}", "train.prompts_per_rank=1",
        f"rollout.group_size={micro}", f"train.micro_batch_size={micro}",
        f"rollout.max_tokens={completion}", f"train.gradient_checkpointing={checkpointing}",
        f"train.logits_chunk_tokens={chunk}"])


def estimate(row: tuple) -> dict:
    """The plan's learner terms for the row (GiB), without the runtime term."""
    from launch.planning.memory import learner_memory
    from launch.planning.model_shape import architecture

    model, micro, prompt, completion, checkpointing, chunk = row
    cfg = row_config(model, micro, completion, checkpointing, chunk)
    learner = learner_memory(architecture(str(REPO / model)), cfg, prompt, deepspeed=False)
    return {t.name: t.bytes / GIB for t in learner.terms if t.name != "runtime"}


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(row: tuple) -> dict:
    """One measurement, in this (fresh) process."""
    import gc

    import torch
    from accelerate import Accelerator

    from trainer.learner import Learner
    from trainer.types import RolloutBatch

    def batch(micro: int, prompt: int, completion: int) -> RolloutBatch:
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(3, 400, (micro, completion), generator=g)
        prompts = torch.randint(3, 400, (micro, prompt), generator=g).tolist()
        return RolloutBatch(prompts, ids, torch.ones(micro, completion),
                            torch.full((micro, completion), -3.0), torch.randn(micro, generator=g),
                            torch.randn(micro, generator=g), torch.zeros(micro, dtype=torch.long),
                            group_size=micro)

    # warm-up: a throwaway step of the embedded model on 2 x (4 + 4) tokens loads every
    # library, thread pool and kernel a step touches (~0.27 GiB the runtime term counts)
    warm = Learner(row_config(WARM_MODEL, 2, 4, False, 1024), Accelerator(cpu=True))
    warm.train_step(batch(2, 4, 4))
    del warm
    model, micro, prompt, completion, checkpointing, chunk = row
    cfg = row_config(model, micro, completion, checkpointing, chunk)
    data = batch(micro, prompt, completion)
    gc.collect()
    base = _rss_kb("VmRSS")
    learner = Learner(cfg, Accelerator(cpu=True))
    loaded = _rss_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS from here
    for _ in range(2):
        learner.train_step(data)
    peak = _rss_kb("VmHWM")
    return {"loaded_gib": (loaded - base) / 2**20, "peak_gib": (peak - base) / 2**20}


def measure(row: tuple) -> dict:
    env = dict(os.environ, **MALLOC_ENV, TOKENIZERS_PARALLELISM="false")
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(row)], cwd=REPO,
                         env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"row {row} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, nargs="*", help="row indices (default: all)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(tuple(json.loads(a.child)))))
        return 0
    rows = [ROWS[i] for i in (a.rows if a.rows is not None else range(len(ROWS)))]
    missing = sorted({r[0] for r in rows} - {r[0] for r in rows if (REPO / r[0]).is_dir()})
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: build them first ({BUILD})")
    results = []
    for i, row in enumerate(rows):
        est, got = estimate(row), measure(row)
        total = sum(est.values())
        ratio = total / got["peak_gib"]
        results.append({"row": row, "estimate_gib": est, "estimate_total_gib": total,
                        **got, "ratio": ratio, "within": abs(ratio - 1) <= TOLERANCE})
        print(f"row {i}: {row} estimate {total:.3f} GiB, measured {got['peak_gib']:.3f} GiB",
              flush=True)
    print(table(
        ["model", "micro-batch x tokens", "checkpointing", "logits chunk", "estimate GiB",
         "(activations / logits)", "measured GiB", "estimate/measured", "±30 %"],
        [[Path(r["row"][0]).name, f"{r['row'][1]} x ({r['row'][2]} + {r['row'][3]})",
          "on" if r["row"][4] else "off", r["row"][5] or "0 (whole)", r["estimate_total_gib"],
          f"{r['estimate_gib']['activations']:.3f} / {r['estimate_gib']['logits']:.3f}",
          r["peak_gib"], r["ratio"], "within" if r["within"] else "MISSED"]
         for r in results]))
    save("learner_memory", {"config": CONFIG, "sets": CPU_SETS, "malloc_env": MALLOC_ENV,
                            "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
