"""Can a LoRA learn the market's decision from the warm-started model? An offline probe.

Isolates the one choice GRPO has to learn on the synthetic market: the lean word
("bullish" / "bearish") written right after the up count of the last three days. The
reasoning before it is teacher-forced (the warm-start template, correct facts), the lean is
sampled, the reward is 0.6 when the direction it announces is the realised next-day move,
and a LoRA (the demo's r, alpha and target modules) takes one REINFORCE step with
group-normalised advantages per batch. No vLLM, no other tokens: this is the best case the
full recipe can approach, so a budget at which the probe does not learn is one at which
Stage I will not either. The reasoning NLL column says whether the update that moved the
lean left the rest of the answer alone (on-policy, that rest is sampled, not forced).

It also checks the warm start's half of the bargain: the share of prompts where the
greedy prediction follows a forced lean (1.0 when the copy was learned).

    python benchmarks/decision_probe.py [--model models/tiny-qwen2-fmt] [--lr 1e-3]
        [--steps 40] [--prompts 8] [--group 8] [--every 10] [--anchor 0] [--balance 0]
        [--schedule constant] [--seed 0] [--val 300] [--set data.synthetic_rule=streak]
        [--learner]

Prompts are drawn as Stage I draws them: from the balanced training split, every step 50/50
(``PromptSampler`` with the task's stratum).

``--balance w`` adds ``w`` x the learner's balance term (``train.balance_coef``: the KL of
the step's mean lean at the anchor's answers to 50/50, ``tasks/decisions.balance_kl``), which holds
the lean of every prompt from drifting together; ``--schedule`` the learning-rate shape
(``train.lr_schedule``, to 0 at ``--steps``).

``--anchor w`` adds ``w`` x the learner's supervised anchor (``train.anchor_coef``: the NLL
of a warm-start answer to each of the step's prompts, at its free choices, the lean and the
confidence figure, only that one of the options stands there; ``tasks/decisions.anchor_batch``,
``tasks/decisions.anchor_nll``) to the loss:
it holds the rest of the answer, like PPO-ptx's pretraining term. ``--seed`` changes the
LoRA init and the draws: whether and when the lean "clicks" varies with it.

``--learner`` makes the update the real ``Learner.train_step`` (one process, no DeepSpeed):
each sampled lean becomes a completion (the forced reasoning, then the lean token) in a
``RolloutBatch`` with the group-normalised advantages, ``pg_tokens: decision`` on the lean,
KL 0, ``anchor_coef`` = ``--anchor``, and the learner's AdamW and gradient clipping (the
probe's own update clips at the same global norm, 1.0); so a difference between the two
updates would show here, not in a Stage I run.

Prints a markdown table of P(bullish) per up count (the Bayes answer: bullish for 0 and 2,
bearish for 1 and 3) and the mean probability of the Bayes lean
(``synthetic.up_probability``) and the mean NLL per token of the teacher-forced reasoning
before the lean (what the update costs the rest of the answer), and writes it to
``benchmarks/results/decision_probe.json``.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, table  # noqa: E402


def _learner(cfg, name: str, a):
    """The real Learner (one process, no DeepSpeed) set up as the probe's update."""
    from accelerate import Accelerator

    from trainer.learner import Learner

    cfg.model.name_or_path = name
    tc = cfg.train
    tc.learning_rate, tc.kl_coef, tc.pg_tokens, tc.anchor_coef = a.lr, 0.0, "decision", a.anchor
    tc.balance_coef, tc.lr_schedule, tc.steps = a.balance, a.schedule, a.steps
    tc.prompts_per_rank, tc.micro_batch_size, tc.seed = a.prompts, a.prompts * a.group, a.seed
    cfg.rollout.group_size, cfg.rollout.temperature = a.group, 1.0
    return Learner(cfg, Accelerator(cpu=True))


def _lean_batch(tok, ws, prompt_ids, leans, logp, reward, adv, reasoning_prefix, lean_ids):
    """The sampled leans as a RolloutBatch: each completion the forced reasoning, then its
    lean token (the only marked decision, a choice between the two leans, with the
    sampler's log-prob of it)."""
    from rollout.client import Completion
    from trainer.tasks.decision_marks import decision_extras
    from trainer.types import RolloutBatch

    groups, marks, choices = [], [], []
    options = sorted(set(lean_ids))
    for i, w in enumerate(ws):
        text = reasoning_prefix(w.meta["closes"])
        reasoning = tok(text, add_special_tokens=False)["input_ids"]
        group = []
        for lean in leans[i].tolist():
            lps = [0.0] * len(reasoning) + [float(logp[i, lean])]  # only the lean's is used
            group.append(Completion(reasoning + [lean], lps, "", "stop", 0, "probe"))
            marks.append([0.0] * len(reasoning) + [1.0])
            choices.append({len(reasoning): options})  # the lean chose among both
        groups.append(group)
    return RolloutBatch.from_groups(prompt_ids, groups, reward.flatten().tolist(),
                                    adv.flatten(), tok.pad_token_id,
                                    decision_extras(marks, choices, empty_choices=False))


def main(argv: list[str] | None = None) -> int:
    import argparse

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.config import load_config
    from trainer.rollouts import PromptSampler, encode_prompt
    from trainer.schedules import lr_factor
    from trainer.tasks.decisions import anchor_batch, anchor_nll, anchor_terms, balance_kl
    from trainer.tasks.stock.task import StockTask
    from trainer.tasks.stock.warm_answers import LEAN, reasoning_prefix
    from trainer.types import RolloutBatch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/demo/stage1.yaml")
    p.add_argument("--model", default=None, help="default: the config's model")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--anchor", type=float, default=0.0,
                   help="weight of a supervised NLL term on the step's templated reasoning")
    p.add_argument("--balance", type=float, default=0.0,
                   help="weight of the balance term (train.balance_coef) on the anchor's answers")
    p.add_argument("--schedule", default="constant", help="train.lr_schedule (to 0 at --steps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val", type=int, default=300,
                   help="validation windows measured (the copy rate: the first third)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. data.synthetic_rule=streak")
    p.add_argument("--learner", action="store_true",
                   help="update through the real Learner.train_step instead of the probe's loss")
    a = p.parse_args(argv)
    cfg = load_config(a.config, a.set)
    name = a.model or cfg.model.name_or_path
    learner = None
    if a.learner:
        learner = _learner(cfg, name, a)
        model, tok = learner.peft_model, learner.tokenizer
    else:
        torch.manual_seed(a.seed)
        tok = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32)
        model = get_peft_model(model, LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha,
                                                 target_modules=list(cfg.lora.target_modules)))
    task = StockTask(cfg.data, cfg.reward)
    # Stage I's own draws: the balanced training split, every step 50/50 (PromptSampler)
    sampler = PromptSampler(task.split("train"), seed=a.seed, key=task.stratum)
    val = task.split("val")[:a.val]
    bayes_up = [w.meta["up_prob"] > 0.5 for w in val]

    def tid(word: str) -> int:
        return tok(f" {word}", add_special_tokens=False)["input_ids"][0]

    bull, bear, up_id, down_id = tid(LEAN["UP"]), tid(LEAN["DOWN"]), tid("UP"), tid("DOWN")

    def ups(w) -> int:
        return sum(c > 0 for c in w.meta["changes_pct"][-3:])

    def prompt_of(w) -> str:
        return tok.apply_chat_template(w.messages, add_generation_prompt=True, tokenize=False)

    def before_lean(w) -> str:
        return prompt_of(w) + reasoning_prefix(w.meta["closes"])

    def last_logits(texts: list[str]) -> torch.Tensor:
        ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        width = max(map(len, ids))
        x = torch.full((len(ids), width), tok.pad_token_id)
        mask = torch.zeros_like(x)
        for i, t in enumerate(ids):  # left-padded: the last position is every text's end
            x[i, width - len(t):] = torch.tensor(t)
            mask[i, width - len(t):] = 1
        return model(input_ids=x, attention_mask=mask).logits[:, -1]

    with torch.no_grad():
        follows = 0
        for direction, lean in LEAN.items():
            lg = last_logits([before_lean(w) + f" {lean}.\nPrediction:"
                              for w in val[:len(val) // 3]])
            said_up = lg[:, up_id] > lg[:, down_id]
            follows += int((said_up == (direction == "UP")).sum())
    copy_rate = follows / (2 * (len(val) // 3))

    def measure() -> list[float | None]:
        """Mean P(bullish) per up count 0..3, then the mean probability of the Bayes lean."""
        with torch.no_grad():
            lg = last_logits([before_lean(w) for w in val])
        pb = torch.stack([lg[:, bull], lg[:, bear]], 1).softmax(1)[:, 0].tolist()
        per = defaultdict(list)
        for w, q in zip(val, pb, strict=True):
            per[ups(w)].append(q)
        agree = [q if up else 1 - q for q, up in zip(pb, bayes_up, strict=True)]
        return [sum(per[k]) / len(per[k]) if per[k] else None for k in range(4)] + [
            sum(agree) / len(agree), reasoning_nll()]

    probe_reasoning = RolloutBatch.teacher_forced(
        [encode_prompt(tok, x) for x in val[:len(val) // 5]],
        [tok(reasoning_prefix(w.meta["closes"]), add_special_tokens=False)["input_ids"]
         for w in val[:len(val) // 5]], tok.pad_token_id)

    def reasoning_nll() -> float:
        """Mean NLL per token of the reasoning before the lean on the first fifth of the
        validation windows (60 by default), teacher-forced as the learner's anchor is: what
        the update costs the rest of the answer."""
        with torch.no_grad():
            return float(anchor_nll(model, probe_reasoning, tok.pad_token_id,
                                    torch.device("cpu")))

    rows = [[0, *measure(), 0.0]]
    opt = (None if learner else
           torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=a.lr))
    rng = random.Random(a.seed)
    t0 = time.perf_counter()
    for step in range(1, a.steps + 1):
        ws = sampler.next(a.prompts)
        with torch.no_grad() if learner else nullcontext():
            lg = last_logits([before_lean(w) for w in ws])
        logp = torch.stack([lg[:, bull], lg[:, bear]], 1).log_softmax(1)
        act = torch.multinomial(logp.detach().exp(), a.group, replacement=True)  # 0: bullish
        realised_up = torch.tensor([w.meta["label"] == "UP" for w in ws])[:, None]
        reward = ((act == 0) == realised_up).float() * 0.6
        adv = (reward - reward.mean(1, keepdim=True)) / (reward.std(1, keepdim=True) + 1e-6)
        prompt_ids = [encode_prompt(tok, x) for x in ws]
        # the learner's anchor on these prompts (no label in it)
        ref = (anchor_batch(task, ws, prompt_ids, tok, tok.pad_token_id, rng)
               if a.anchor or a.balance else None)
        if learner is not None:
            learner.set_step(step)
            leans = torch.where(act == 0, bull, bear)
            learner.train_step(_lean_batch(tok, ws, prompt_ids, leans, lg.log_softmax(-1),
                                           reward, adv, reasoning_prefix, (bull, bear)),
                               {"anchor": ref})
        else:
            loss = -(adv * logp.gather(1, act)).mean()
            if ref is not None:
                nll, shares, prior = anchor_terms(model, ref, tok.pad_token_id,
                                                  torch.device("cpu"))
                loss = loss + a.anchor * nll + a.balance * balance_kl(shares, prior)[0]
            for group in opt.param_groups:
                group["lr"] = a.lr * lr_factor(step, a.steps, a.schedule)
            opt.zero_grad()
            loss.backward()
            # the learner's clipping (Learner.train_step; gradient_clipping in ds_config.json)
            torch.nn.utils.clip_grad_norm_(opt.param_groups[0]["params"], 1.0)
            opt.step()
        if step % a.every == 0 or step == a.steps:
            elapsed = time.perf_counter() - t0
            rows.append([step, *measure(), elapsed])
            print(f"decision probe step {step}/{a.steps} | {elapsed:.0f}s | "
                  f"ETA {elapsed / step * (a.steps - step):.0f}s", flush=True)
    head = ["step", "P(bullish) 0 up", "1 up", "2 up", "3 up", "Bayes agreement",
            "reasoning NLL", "seconds"]
    print(f"\nmodel {name}, lr {a.lr}, {a.prompts} prompts x {a.group} samples per step; "
          f"greedy prediction follows a forced lean: {copy_rate:.2f}")
    print(table(head, rows))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "decision_probe.json").write_text(json.dumps(
        {"model": name, "args": vars(a), "copy_rate": copy_rate, "header": head,
         "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
