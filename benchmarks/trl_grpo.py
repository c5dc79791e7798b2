"""The peer: TRL's GRPOTrainer on our task, model, LoRA and hyper-parameters (one process).

Reads the same config as our recipe and maps it onto ``GRPOConfig``:
- prompts: the task's training split (``build_task``: same data source, windows, balance),
  as conversational prompts; the chat template is the model's own.
- rewards: our task's ``score_batch`` (all components, weighted as configured) wrapped as one
  TRL reward function; groups are rebuilt from the contiguous repeats TRL produces.
- model: ``trainer.policy.load_policy`` (the same base, 4-bit setting, LoRA r/alpha/targets,
  seeded init), passed to TRL as a PeftModel; the reference is the adapter disabled, as ours.
- one optimizer step per ``ranks x prompts_per_rank x G`` completions (generation_batch_size),
  micro-batches of ``train.micro_batch_size``; lr, KL beta = ``train.kl_coef``,
  epsilon = ``train.clip_eps``, loss_type "grpo" (sequence mean of token means, as ours),
  group-std reward scaling, constant lr, AdamW, grad-norm clip 1.0, one iteration per batch.
- generation: TRL's default (transformers ``generate``), or ``--use-vllm`` (colocate mode).
Departures we cannot remove: TRL runs in one process with all cores (ours: learner ranks and
workers share them); TRL's batch-level diversity reward sees all prompts of the step (ours:
one rank's); no importance-sampling correction is needed in its default generation.

Per step it records the wall interval between optimizer steps (eval time excluded), TRL's
logged reward and completion length; with ``--eval-every K`` it evaluates greedily on the
first ``eval.num_samples`` of ``eval.split`` (the same fixed subset our recipe uses).

    .venv/bin/python benchmarks/trl_grpo.py --steps 5 --out benchmarks/results/trl.json
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import completions_per_step, parser  # noqa: E402

LOGGED = {"loss", "reward", "kl", "entropy", "grad_norm"}  # besides TRL's "a/b" metrics


def reward_function(task, samples: list, group_size: int, last: dict):
    """A TRL reward function over our task: rewards (component sum) per completion; the
    batch's task diagnostics (accuracy ...) go into ``last``."""
    from trainer.rollouts import total_reward  # the reward ours trains on

    def stock_reward(prompts, completions, sample_index, **_) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        groups: list[tuple[int, list[str]]] = []
        for idx, text in zip(sample_index, texts, strict=True):
            if groups and groups[-1][0] == idx and len(groups[-1][1]) < group_size:
                groups[-1][1].append(text)
            else:
                groups.append((idx, [text]))
        chosen = [samples[i] for i, _ in groups]
        scored = task.score_batch(chosen, [g for _, g in groups])
        diags = [task.diagnostics(s, t) for s, (_, g) in zip(chosen, groups, strict=True)
                 for t in g]
        last.update(task.aggregate(diags))
        return [total_reward(c) for per_sample in scored for c in per_sample]

    return stock_reward


def grpo_args(cfg, steps: int, out_dir: str, use_vllm: bool):
    from trl import GRPOConfig

    tc, rc = cfg.train, cfg.rollout
    total = completions_per_step(cfg)
    micro = min(tc.micro_batch_size, total)
    return GRPOConfig(
        output_dir=out_dir, max_steps=steps, per_device_train_batch_size=micro,
        gradient_accumulation_steps=total // micro, generation_batch_size=total,
        num_generations=rc.group_size, max_completion_length=rc.max_tokens,
        temperature=rc.temperature, top_p=rc.top_p, learning_rate=tc.learning_rate,
        weight_decay=tc.weight_decay, lr_scheduler_type="constant", warmup_steps=0,
        max_grad_norm=1.0, beta=tc.kl_coef, epsilon=tc.clip_eps, loss_type="grpo",
        scale_rewards="group", num_iterations=1, seed=tc.seed, use_cpu=True, bf16=False,
        logging_steps=1, save_strategy="no", report_to=[], disable_tqdm=True,
        use_vllm=use_vllm, vllm_mode="colocate",
        vllm_gpu_memory_utilization=rc.gpu_memory_utilization,
        vllm_enable_sleep_mode=False, dataloader_num_workers=0)


def greedy_accuracy(model, tokenizer, task, samples, cfg, batch: int = 32) -> float:
    from benchmarks.hf_generate import generate
    from trainer.rollouts import encode_prompt

    was_training = model.training
    model.eval()
    texts = []
    for i in range(0, len(samples), batch):
        chunk = samples[i:i + batch]
        groups = generate(model, tokenizer, [encode_prompt(tokenizer, s) for s in chunk], 1,
                          cfg.eval.max_tokens or cfg.rollout.max_tokens, temperature=0)
        texts += [tokenizer.decode(g[0], skip_special_tokens=True) for g in groups]
    model.train(was_training)
    return float(task.evaluate(samples, texts)["accuracy"])


def main() -> int:
    p = parser(__doc__, model=False)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--out", required=True, help="JSON file for the per-step records")
    p.add_argument("--use-vllm", action="store_true", help="TRL's vLLM colocate generation")
    p.add_argument("--eval-every", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    a = p.parse_args()

    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    from trainer.config import load_config
    from trainer.evaluate import eval_samples
    from trainer.policy import load_policy, load_tokenizer
    from trainer.tasks import build_task

    t_start = time.perf_counter()
    cfg = load_config(a.config, a.set)
    torch.set_num_threads(a.threads)
    task = build_task(cfg)
    train = task.split("train")
    data = Dataset.from_list([{"prompt": s.messages, "sample_index": i}
                              for i, s in enumerate(train)])
    tokenizer = load_tokenizer(cfg)
    torch.manual_seed(cfg.train.seed)
    model = load_policy(cfg, torch.device("cpu"))
    watch = eval_samples(task, cfg, cfg.eval.split, cfg.eval.num_samples) if a.eval_every else []
    last: dict = {}
    steps: list[dict] = []

    class Timing(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kw):
            if steps and logs:
                steps[-1].update({k: v for k, v in logs.items() if isinstance(v, (int, float))
                                  and ("/" in k or k in LOGGED)})

        def on_step_end(self, args, state, control, **kw):
            now = time.perf_counter()
            row = {"step": state.global_step, "seconds": now - self.t,
                   **{f"task/{k}": v for k, v in last.items()}}
            if a.eval_every and state.global_step % a.eval_every == 0:
                row["eval/accuracy"] = greedy_accuracy(kw["model"], tokenizer, task, watch, cfg)
                row["time/eval"] = time.perf_counter() - now
            steps.append(row)
            self.t = time.perf_counter()  # eval time is not step time

    with tempfile.TemporaryDirectory() as tmp:
        trainer = GRPOTrainer(
            model=model, reward_funcs=reward_function(task, train, cfg.rollout.group_size, last),
            args=grpo_args(cfg, a.steps, tmp, a.use_vllm), train_dataset=data,
            processing_class=tokenizer, callbacks=[Timing()])
        t_train = time.perf_counter()
        trainer.train()
    result = {"side": "trl", "generation": "vllm-colocate" if a.use_vllm else
              "transformers generate", "completions_per_step": completions_per_step(cfg),
              "threads": a.threads, "setup_seconds": t_train - t_start,
              "train_seconds": time.perf_counter() - t_train, "steps": steps,
              "command": " ".join(sys.argv)}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(f"trl: {len(steps)} steps, {result['train_seconds']:.1f} s; wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
