"""The learner alone at the production config on one GPU: `make gpu-check`'s part 3 where vLLM
is not installed (a GPU machine without the rollout engine), and a learner-only figure where it
is.

Run by ``accelerate launch --config_file launch/accelerate/gpu_single.yaml`` (what `stonk
stage1` starts on one GPU: DeepSpeed ZeRO-2 from ds_config.json, bf16, NCCL), on a random-init
model of Qwen2.5-1.5B-Instruct's architecture (benchmarks/gpu_check.py builds it), with
configs/stage1.yaml's settings. It:
1. builds the real ``trainer.learner.Learner`` (4-bit nf4 base, LoRA, DeepSpeed) and checks
   the 4-bit layers sit on the GPU;
2. makes one rank's batch at the plan's worst case (``prompts_per_rank x group_size`` rows,
   every prompt at the plan's longest prompt and every completion at ``rollout.max_tokens``),
   its rollout log-probs the learner's own (as a worker's would be, up to rounding);
3. runs ``--steps`` optimizer steps, timing each and reading torch's peak memory, and reduces
   the step's metrics across ranks through ``trainer.dist`` (NCCL: CUDA tensors only);
4. saves the DeepSpeed state, changes the adapter, loads the state back and checks the
   adapter returned to what was saved (resume);
5. saves the adapter, loads it with plain peft on the bf16 base (what a vLLM worker serves)
   and reports the mean |log-prob| gap between that and the 4-bit learner on two rows.
Writes ``OUT/learner.json``; prints one line per part.

    accelerate launch --config_file launch/accelerate/gpu_single.yaml \\
        benchmarks/gpu_learner.py --model DIR --out DIR [--steps 2] [--compare-layouts]

``--compare-layouts``: each step runs twice, with the shared-prefix layout and with one row
per completion, alternating on the same learner (``train.shared_prefix``), each with its own
time and peak memory: the learner's speed-up from forwarding each prompt once, one command.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GIB = 2**30


def worst_case_batch(n: int, prompt: int, completion: int, vocab: int, group: int, seed: int):
    """``n`` rows (groups of ``group``) of random tokens: prompts of ``prompt`` tokens, full
    completions of ``completion`` tokens, advantages standardised within each group."""
    import torch

    from trainer.types import RolloutBatch

    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(3, vocab, (n // group, prompt), generator=g)
    ids = torch.randint(3, vocab, (n, completion), generator=g)
    rewards = torch.rand(n, generator=g)
    r = rewards.view(-1, group)
    adv = ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)).view(-1)
    return RolloutBatch([prompts[i // group].tolist() for i in range(n)], ids,
                        torch.ones(n, completion), torch.zeros(n, completion), rewards, adv,
                        torch.zeros(n, dtype=torch.long), group_size=group)


def rollout_logprobs(learner, batch) -> None:
    """The learner's own log-probs as the batch's rollout log-probs, one micro-batch at a
    time. In train mode: on a CPU with AVX512-BF16, bitsandbytes repacks 4-bit weights for
    inference on an eval-mode no-grad forward, and a training forward then fails."""
    import torch

    learner.model.train()
    with torch.no_grad():
        for k in range(0, len(batch), learner.micro):
            mb = batch.slice(k, k + learner.micro)
            batch.rollout_logp[k:k + learner.micro] = learner.logprobs(mb).float().cpu()


def bf16_gap(model_dir: str, adapter: Path, learner, batch) -> float:
    """Mean |log p| difference on ``batch`` between the adapter on the bf16 base (plain
    transformers + peft) and the 4-bit learner."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from trainer.logprobs import token_logprobs

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).to(
        learner.device)
    plain = PeftModel.from_pretrained(base, str(adapter)).eval()
    learner.model.eval()
    with torch.no_grad():
        ours = learner.logprobs(batch).float()
        theirs = token_logprobs(plain, batch, learner.pad_id, learner.cfg.rollout.temperature,
                                learner.device).float()
    del plain, base
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return float((ours - theirs).abs().mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--config", default="configs/stage1.yaml")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--compare-layouts", action="store_true",
                   help="each step with train.shared_prefix on and off, alternating")
    a = p.parse_args(argv)
    import bitsandbytes as bnb
    import torch
    from accelerate import Accelerator

    from launch.planning.memory import plan_memory
    from trainer.config import load_config, mixed_precision
    from trainer.dist import mean_across_ranks, rank_and_world
    from trainer.learner import Learner

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(a.config, [f"model.name_or_path={a.model}", *a.set])
    plan = plan_memory(cfg)
    t0 = time.perf_counter()
    acc = Accelerator(mixed_precision=mixed_precision(cfg))
    learner = Learner(cfg, acc)
    rank, world = rank_and_world()
    four_bit = [m for m in learner.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    on_gpu = all(m.weight.device.type == learner.device.type for m in four_bit)
    lora_dtypes = sorted({str(p.dtype) for n, p in learner.model.named_parameters()
                          if "lora_" in n})
    plugin = acc.state.deepspeed_plugin
    ds_bf16 = plugin.deepspeed_config.get("bf16", {}).get("enabled") if plugin else None
    precision_ok = acc.mixed_precision == mixed_precision(cfg) and (
        plugin is None or ds_bf16 == (acc.mixed_precision == "bf16"))
    print(f"[gpu-learner] 1 learner built in {time.perf_counter() - t0:.1f} s: "
          f"{len(four_bit)} 4-bit layers on {learner.device}: {on_gpu}; LoRA {lora_dtypes}; "
          f"DeepSpeed ZeRO-{learner.zero_stage}; mixed precision {acc.mixed_precision} "
          f"(DeepSpeed bf16 {ds_bf16}); {world} rank(s); "
          f"{torch.distributed.get_backend() if torch.distributed.is_initialized() else 'no group'}", flush=True)

    per_rank = cfg.train.prompts_per_rank * cfg.rollout.group_size
    batch = worst_case_batch(per_rank, plan.prompt.tokens, cfg.rollout.max_tokens,
                             len(learner.tokenizer), cfg.rollout.group_size, seed=rank)
    rollout_logprobs(learner, batch)
    print(f"[gpu-learner] 2 batch {per_rank} x ({plan.prompt.tokens} + "
          f"{cfg.rollout.max_tokens}) tokens", flush=True)

    cuda = learner.device.type == "cuda"  # a CPU run (accelerate's cpu config) tries the code
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    steps = []
    layouts = [True, False] if a.compare_layouts and learner.shared_prefix else \
        [learner.shared_prefix]
    for step in range(1, a.steps + 1):
        learner.set_step(step)
        for layout in layouts:
            learner.shared_prefix = layout
            sync()
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            stats = learner.train_step(batch)
            sync()
            record = mean_across_ranks(stats, learner.device)
            steps.append({"seconds": time.perf_counter() - t, "shared_prefix": layout,
                          "peak_gib": torch.cuda.max_memory_allocated() / GIB if cuda else 0.0,
                          **record})
            print(f"[gpu-learner] 3 step {step} (shared prefix {'on' if layout else 'off'}): "
                  f"{steps[-1]['seconds']:.2f} s, peak {steps[-1]['peak_gib']:.2f} GiB, loss "
                  f"{record['loss']:.4g}, logp_gap {record['logp_gap']:.2e}, grad_norm "
                  f"{record.get('grad_norm', float('nan')):.3g}", flush=True)
    peak = {"allocated_gib": max(s["peak_gib"] for s in steps),
            "reserved_gib": torch.cuda.max_memory_reserved() / GIB if cuda else 0.0}

    saved = {k: v.detach().float().cpu().clone() for k, v in learner.adapter_tensors().items()}
    learner.save_state(out / "state")
    with torch.no_grad():
        for n, prm in learner.model.named_parameters():
            if "lora_B" in n:
                prm.add_(1.0)
    learner.load_state(out / "state")
    back = learner.adapter_tensors()
    resumed = all(torch.equal(saved[k], back[k].detach().float().cpu()) for k in saved)
    print(f"[gpu-learner] 4 DeepSpeed state saved and loaded: adapter restored {resumed}",
          flush=True)

    learner.save_adapter(out / "adapter")
    gap = bf16_gap(a.model, out / "adapter", learner, batch.slice(0, 2))
    print(f"[gpu-learner] 5 adapter on the bf16 base (plain peft) vs 4-bit learner: mean "
          f"|logp gap| {gap:.3e}", flush=True)
    result = {
        "config": a.config, "model": a.model, "rank_world": [rank, world],
        "four_bit_layers": len(four_bit), "four_bit_on_gpu": on_gpu,
        "lora_dtypes": lora_dtypes, "zero_stage": learner.zero_stage,
        "mixed_precision": acc.mixed_precision, "deepspeed_bf16": ds_bf16,
        "batch": {"rows": per_rank, "prompt_tokens": plan.prompt.tokens,
                  "completion_tokens": cfg.rollout.max_tokens},
        "steps": steps, "torch_peak": peak, "plan_learner_gib": plan.learner.total_gib,
        "resume_restores_adapter": resumed, "bf16_vs_nf4_logp_gap": gap,
        "ok": bool(four_bit and on_gpu and resumed and precision_ok and all(
            torch.isfinite(torch.tensor(s["loss"])) for s in steps)),
    }
    if rank == 0:
        (out / "learner.json").write_text(json.dumps(result, indent=1))
    print(f"[gpu-learner] torch peak {peak['allocated_gib']:.2f} GiB allocated, "
          f"{peak['reserved_gib']:.2f} reserved; plan {result['plan_learner_gib']:.2f} GiB; "
          f"ok {result['ok']}", flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
