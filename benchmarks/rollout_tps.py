"""Rollout: generated tokens per second of our vLLM workers against transformers ``generate``.

Same model with the same fresh LoRA adapter (the learner's ``load_policy``; the workers load it
as the policy adapter, ``generate`` runs the peft model as TRL's default generation does), same
batch (the first ``--prompts`` training prompts, ``--n`` samples each), same token limit,
temperature and stop tokens. ``generate`` runs first in this process with ``--hf-threads``
threads and no worker alive; then 1 and 2 workers (``--workers``), started as the launcher
would for the config (every worker may use every core), each batch sent through
``RolloutClient.generate``; then, for more than one worker, again with each worker's threads
bound to its own cores (``VLLM_CPU_OMP_THREADS_BIND``; ``--no-bind`` skips it). One warm-up batch,
then the median of ``--repeats``. Only generated tokens count (up to the stop token).

    .venv/bin/python benchmarks/rollout_tps.py --prompts 8 --n 8 --repeats 5
Writes ``benchmarks/results/rollout_tps[-<model>].json``.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, model_sets, parser, result_tag, save, table  # noqa: E402


def timed(fn, repeats: int) -> dict:
    """Run ``fn() -> generated tokens`` once to warm up, then ``repeats`` times."""
    fn()
    secs, toks = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        toks.append(fn())
        secs.append(time.perf_counter() - t)
    return {"seconds": statistics.median(secs), "tokens": statistics.median(toks),
            "tokens_per_s": statistics.median(k / s for k, s in zip(toks, secs, strict=True))}


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--n", type=int, default=8, help="samples per prompt")
    p.add_argument("--max-tokens", type=int, default=0, help="0: rollout.max_tokens")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--workers", default="1,2")
    p.add_argument("--no-bind", action="store_true",
                   help="skip the runs with each worker bound to its own cores")
    p.add_argument("--hf-threads", type=int, default=os.cpu_count())
    a = p.parse_args()

    import torch

    from benchmarks import hf_generate
    from benchmarks.serving import policy, serving
    from trainer.config import load_config
    from trainer.policy import load_tokenizer
    from trainer.rollouts import encode_prompt
    from trainer.tasks import build_task

    sets = model_sets(a)
    cfg = load_config(REPO / a.config, sets)
    max_tokens = a.max_tokens or cfg.rollout.max_tokens
    temperature = cfg.rollout.temperature
    tokenizer = load_tokenizer(cfg)
    prompts = [encode_prompt(tokenizer, s) for s in build_task(cfg).split("train")[:a.prompts]]
    model = policy(cfg)
    torch.set_num_threads(a.hf_threads)

    def hf() -> int:
        groups = hf_generate.generate(model, tokenizer, prompts, a.n, max_tokens, temperature)
        return sum(len(c) for g in groups for c in g)

    rows = [{"engine": f"transformers generate ({a.hf_threads} threads)", "workers": 0,
             **timed(hf, a.repeats)}]
    print(rows[-1], flush=True)
    runs = [(int(k), False) for k in a.workers.split(",")]
    runs += [] if a.no_bind else [(k, True) for k, _ in runs if 1 < k <= os.cpu_count()]
    for k, bind in runs:
        cfg.rollout.num_workers = k
        with (tempfile.TemporaryDirectory() as tmp,
              serving(cfg, Path(tmp), model, bind=bind) as (client, *_)):
            def ours(client=client) -> int:
                groups = client.generate(prompts, n=a.n, max_tokens=max_tokens,
                                         temperature=temperature, top_p=cfg.rollout.top_p)
                return sum(len(c.token_ids) for g in groups for c in g)

            engine = "our vLLM workers" + (", own cores each" if bind else "")
            rows.append({"engine": engine, "workers": k, **timed(ours, a.repeats)})
        print(rows[-1], flush=True)
    base = rows[0]["tokens_per_s"]
    print(f"\nRollout tokens/s ({cfg.model.name_or_path}, {a.prompts} prompts x {a.n} samples, "
          f"<= {max_tokens} tokens, temperature {temperature}); median of {a.repeats}")
    print(table(["engine", "workers", "batch s", "tokens", "tokens/s", "vs generate"],
                [[r["engine"], r["workers"] or "-", r["seconds"], r["tokens"],
                  r["tokens_per_s"], f"{r['tokens_per_s'] / base:.2f}x"] for r in rows]))
    tag = result_tag("rollout_tps", a)
    save(tag, {"config": a.config, "sets": sets, "prompts": a.prompts, "n": a.n,
               "max_tokens": max_tokens, "repeats": a.repeats, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
