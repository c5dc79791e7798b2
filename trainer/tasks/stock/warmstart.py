"""Format warm start: a short supervised pass that teaches a model the answer format.

A randomly initialised model (the embedded one) cannot yet produce ``Reasoning / Prediction /
Confidence``, so every completion would score zero and GRPO would have no signal. This step
fine-tunes all weights on prompts from the training split paired with templated answers
(``trainer/tasks/stock/warm_answers.py``) whose prediction and confidence are random: it teaches the
format and data-grounded reasoning, never the label. The result is saved with
``save_pretrained`` and used as a base model like any other. A real instruct model (Qwen2.5)
does not need this step.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING

from trainer.tasks.stock.config import DataConfig
from trainer.tasks.stock.data import Window
from trainer.tasks.stock.warm_answers import LEAN, answer_and_choices

if TYPE_CHECKING:  # torch only where a model trains: `stonk warmstart --help` stays light
    import torch

DECISION_WEIGHT = 10.0
DECISION_WORDS = [f" {w}" for w in (*LEAN, *LEAN.values())]  # " UP", ..., " bullish", ...


def paired_answers(closes: list[float], rng: random.Random) -> tuple[str, str]:
    """A templated answer and its twin with the other lean (and so the other prediction),
    same facts and confidence. Trained side by side, everything but the lean and what
    follows from it cancels between the two: the lean -> prediction copy is learned in far
    fewer steps than from single answers with random leans (those took ~600)."""
    state = rng.getstate()
    text, _ = answer_and_choices(closes, rng)
    after = rng.getstate()
    rng.setstate(state)  # the twin draws the same confidence
    other = "DOWN" if "Prediction: UP" in text else "UP"
    twin, _ = answer_and_choices(closes, rng, prediction=other)
    rng.setstate(after)
    return text, twin


def _examples(data: DataConfig, tokenizer,
              rng: random.Random) -> list[list[tuple[list[int], int]]]:
    """Per training window of the data source, two (input ids, prompt length) examples: the
    same prompt and answer with either lean (``paired_answers``)."""
    from trainer.tasks.stock import data as market
    from trainer.tasks.stock.task import window_to_sample

    series = []
    if data.source in ("synthetic", "both"):
        series.append(market.synthetic_series(data.synthetic_days, data.seed,
                                              data.synthetic_rule))
    if data.source in ("bundled", "both"):
        series += market.load_bundled(data.tickers or None)
    wins: list[Window] = [w for s in series for w in market.windows(s, data.window)
                          if w.next_date <= data.train_end]
    out = []
    for w in wins:
        msgs = window_to_sample(w).messages
        prompt = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        pair = []
        for answer in paired_answers(w.closes, rng):
            a_ids = tokenizer(answer + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
            pair.append((p_ids + a_ids, len(p_ids)))
        out.append(pair)
    return out


def weighted_loss(logits: torch.Tensor, labels: torch.Tensor,
                  decision_ids: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy on the answer, with the lean and prediction tokens weighted
    ``DECISION_WEIGHT`` times: they are 2 of ~30 answer tokens, and copying the lean into the
    prediction is what lets GRPO's choice of lean decide the answer."""
    import torch

    logits, labels = logits[:, :-1], labels[:, 1:]
    mask = labels != -100
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0),
                                           reduction="none")
    weight = torch.where(torch.isin(labels, decision_ids), DECISION_WEIGHT, 1.0) * mask
    return (ce * weight).sum() / weight.sum()


def warm_start(base: str, out: str, data: DataConfig, steps: int, batch_size: int, lr: float,
               seed: int) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    rng = random.Random(seed)
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    examples = _examples(data, tok, rng)
    decision_ids = torch.tensor(sorted({t for word in DECISION_WORDS
                                        for t in tok(word, add_special_tokens=False)["input_ids"]}))
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20)
                                              * max(0.1, 1 - s / steps))
    model.train()
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        chunk = [x for pair in rng.sample(examples, batch_size // 2) for x in pair]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), tok.pad_token_id, dtype=torch.long)
        labels = torch.full((len(chunk), width), -100, dtype=torch.long)
        attn = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, (x, p) in enumerate(chunk):
            ids[i, :len(x)] = torch.tensor(x)
            labels[i, p:len(x)] = torch.tensor(x[p:])  # loss on the answer only
            attn[i, :len(x)] = 1
        loss = weighted_loss(model(input_ids=ids, attention_mask=attn).logits, labels,
                             decision_ids)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        if step % 25 == 0 or step == steps:
            rate = (time.perf_counter() - t0) / step
            print(f"warmstart step {step}/{steps} | loss {loss.item():.4f} | "
                  f"{rate:.2f} s/step | ETA {rate * (steps - step):.0f}s", flush=True)
    out_dir = Path(out)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    print(f"saved warm-started model to {out_dir}")
    return out_dir


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="stonk warmstart", description=__doc__.splitlines()[0])
    p.add_argument("--base", default="models/tiny-qwen2")
    p.add_argument("--out", default="models/tiny-qwen2-fmt")
    p.add_argument("--source", choices=["bundled", "synthetic", "both"], default="both")
    p.add_argument("--window", type=int, default=5)
    # 400 steps of 12 twin answers: the reasoning's NLL ends below ~0.01, where the answer
    # survives Stage I's updates (the figures per step count and batch size:
    # docs/demo-learning-history.md, "Measurements behind the code")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=12)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    data = DataConfig(source="bundled", window=a.window, synthetic_days=6000)
    data.source = a.source  # "both" is warm-start only: synthetic and bundled windows
    warm_start(a.base, a.out, data, a.steps, a.batch_size, a.lr, a.seed)

