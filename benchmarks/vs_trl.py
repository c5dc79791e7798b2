"""Throughput against the peer: our Stage I against TRL's GRPOTrainer at equal settings.

One invocation alternates the two sides, ``--rounds`` times each (ours, TRL, ours, TRL ...),
on the same config: model, G, prompts per step (our ranks x prompts_per_rank; TRL's
generation batch), maximum completion tokens, LoRA, learning rate, KL, 4-bit setting
(``benchmarks/trl_grpo.py`` says how each maps). Every run does ``--steps`` steps; the first
``--warmup`` of each run are dropped, the rest pooled across rounds. Step time is the wall
interval between optimizer steps (ours: between metrics lines; TRL: between its callback's
step ends), so both include generation, reward, update and (ours) the adapter push.
Completions per second = completions per step / step time; both sides stop a completion at
the model's stop token or the token limit, so the mean completion length is reported too.
Target: ours >= 2x TRL's completions per second.

    .venv/bin/python benchmarks/vs_trl.py --rounds 2 --steps 10 --warmup 2
    .venv/bin/python benchmarks/vs_trl.py --model models/qwen2-25m --rounds 2 --steps 6 --warmup 1
Writes ``benchmarks/results/vs_trl[-<model>].json``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    REPO,
    RESULTS,
    completions_per_step,
    median_after_warmup,
    model_sets,
    parser,
    result_tag,
    run_ours,
    run_trl,
    save,
    table,
)

TARGET = 2.0


def side_summary(step_seconds: list[float], tokens: list[float], per_step: int) -> dict:
    """Medians over pooled post-warm-up steps: step seconds, completions/s, tokens/s."""
    cps = [per_step / s for s in step_seconds]
    tps = [per_step * t / s for s, t in zip(step_seconds, tokens, strict=True)]
    return {"steps": len(step_seconds), "step_seconds": median_after_warmup(step_seconds, 0),
            "completions_per_s": median_after_warmup(cps, 0),
            "completion_tokens": median_after_warmup(tokens, 0),
            "tokens_per_s": median_after_warmup(tps, 0)}


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--trl-vllm", action="store_true", help="TRL with use_vllm (colocate)")
    a = p.parse_args()
    if a.warmup < 1:
        raise SystemExit("--warmup must be >= 1 (our first step interval includes start-up)")
    from trainer.config import load_config

    sets = model_sets(a)
    cfg = load_config(REPO / a.config, sets)
    per_step = completions_per_step(cfg)
    tag = result_tag("vs_trl", a)
    ours_s, ours_t, trl_s, trl_t, runs = [], [], [], [], []
    for r in range(a.rounds):
        ours = run_ours(a.config, a.steps, sets, f"{tag}-ours{r}")
        if ours["exit_code"] != 0:
            raise SystemExit(f"our side failed (exit {ours['exit_code']}): {ours['run_dir']}")
        ours_s += ours["wall"][a.warmup:]
        ours_t += [row["completion_tokens"] for row in ours["rows"][a.warmup:]]
        trl = run_trl(a.config, a.steps, sets, RESULTS / f"{tag}-trl{r}.json",
                      ["--use-vllm"] if a.trl_vllm else [])
        trl_s += [row["seconds"] for row in trl["steps"][a.warmup:]]
        trl_t += [row["completions/mean_length"] for row in trl["steps"][a.warmup:]]
        runs.append({"ours": {k: ours[k] for k in ("run_dir", "wall", "command")},
                     "trl": {k: trl[k] for k in ("steps", "command", "generation")}})
    summary = {"ours": side_summary(ours_s, ours_t, per_step),
               "trl": side_summary(trl_s, trl_t, per_step)}
    ratio = summary["ours"]["completions_per_s"] / summary["trl"]["completions_per_s"]
    generation = runs[-1]["trl"]["generation"]
    print(f"\nOurs vs TRL GRPOTrainer ({cfg.model.name_or_path}, {per_step} completions/step = "
          f"{cfg.launch.num_processes} ranks x {cfg.train.prompts_per_rank} prompts x G "
          f"{cfg.rollout.group_size}, <= {cfg.rollout.max_tokens} tokens, LoRA r="
          f"{cfg.lora.r}, 4-bit {cfg.model.load_in_4bit}); medians of {a.rounds} round(s) x "
          f"{a.steps - a.warmup} steps after {a.warmup} warm-up")
    rows = [[side, desc, s["steps"], s["step_seconds"], s["completions_per_s"],
             s["completion_tokens"], s["tokens_per_s"]]
            for side, desc, s in (
                ("ours", f"{cfg.rollout.num_workers} vLLM worker(s) + "
                         f"{cfg.launch.num_processes} DeepSpeed ranks", summary["ours"]),
                ("TRL", f"1 process, {generation}", summary["trl"]))]
    print(table(["side", "setup", "steps", "step s", "completions/s", "completion tokens",
                 "tokens/s"], rows))
    verdict = "meets" if ratio >= TARGET else "MISSES"
    print(f"\ncompletions/s ours / TRL = {ratio:.2f}x ({verdict} the >= {TARGET:.0f}x target)")
    save(tag, {"config": a.config, "sets": sets, "completions_per_step": per_step,
               "summary": summary, "ratio": ratio, "target": TARGET,
               "trl_generation": generation, "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
