"""Adapter push latency against adapter size: LoRA r = 8, 16, 64 (``--ranks``).

The push is what a training step's ``sync`` phase does on rank 0: save adapter v(k)
atomically into the store (``AdapterStore.publish`` of the peft ``save_pretrained`` output),
then ``RolloutClient.sync`` (every worker loads it in place and is verified to serve it). For
each rank a worker is started with ``--max-lora-rank r`` (as a run with that rank would),
the adapter's B matrices are made non-zero, and the push is timed ``--repeats`` times on new
versions; medians. Adapter size: the bytes of the saved folder.

    .venv/bin/python benchmarks/push_latency.py --ranks 8,16,64 --repeats 20
Writes ``benchmarks/results/push_latency[-<model>].json``.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, model_sets, parser, result_tag, save, table  # noqa: E402


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--ranks", default="8,16,64")
    p.add_argument("--repeats", type=int, default=20)
    a = p.parse_args()

    import torch

    from benchmarks.serving import policy, serving
    from trainer.config import load_config

    sets = model_sets(a)
    rows = []
    for r in [int(x) for x in a.ranks.split(",")]:
        cfg = load_config(REPO / a.config, [*sets, f"lora.r={r}", f"lora.alpha={2 * r}"])
        model = policy(cfg)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.01)
        with tempfile.TemporaryDirectory() as tmp, serving(cfg, Path(tmp), model) as (client,
                                                                                    store, _):
            times = {"save": [], "load_verify": [], "push": []}
            for version in range(1, a.repeats + 1):
                t0 = time.perf_counter()
                path = store.publish(version, lambda d, m=model: m.save_pretrained(
                    str(d), safe_serialization=True))
                t1 = time.perf_counter()
                client.sync(version, path)
                t2 = time.perf_counter()
                times["save"].append(t1 - t0)
                times["load_verify"].append(t2 - t1)
                times["push"].append(t2 - t0)
                size = folder_bytes(path)
                store.prune(3, version)
        rows.append({"r": r, "adapter_mb": size / 2**20, "workers": cfg.rollout.num_workers,
                     **{f"{k}_ms": 1000 * statistics.median(v) for k, v in times.items()}})
        print(rows[-1], flush=True)
    print(f"\nAdapter push latency ({cfg.model.name_or_path}, LoRA on "
          f"{','.join(cfg.lora.target_modules)}, {cfg.rollout.num_workers} worker(s)); "
          f"median of {a.repeats}")
    print(table(["r", "adapter MB", "save ms", "load + verify ms", "push ms"],
                [[x["r"], x["adapter_mb"], x["save_ms"], x["load_verify_ms"], x["push_ms"]]
                 for x in rows]))
    tag = result_tag("push_latency", a)
    save(tag, {"config": a.config, "sets": sets, "repeats": a.repeats, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
