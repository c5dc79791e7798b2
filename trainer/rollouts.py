"""From prompts to a scored RolloutBatch: tokenise, sample through the workers, reward.

Also owns the per-rank prompt sampler and the ``rollouts.rank{r}.jsonl`` record, which lets
anyone re-check which adapter version sampled what and with which log-probs.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from rollout.client import RolloutClient
from trainer.credit import decision_mask, marks
from trainer.grpo import ADVANTAGE_ESTIMATORS
from trainer.tasks.base import Sample, Task
from trainer.types import RolloutBatch


class PromptSampler:
    """Endless, epoch-shuffled draws from this rank's shard; position is (epoch, index)."""

    def __init__(self, samples: list[Sample], seed: int):
        if not samples:
            raise ValueError("this learner rank has no training samples (shard is empty)")
        self.samples = samples
        self.seed = seed
        self.epoch = 0
        self.index = 0
        self._order = self._shuffled(0)

    def _shuffled(self, epoch: int) -> list[int]:
        order = list(range(len(self.samples)))
        random.Random(self.seed * 100_003 + epoch).shuffle(order)
        return order

    def next(self, k: int) -> list[Sample]:
        out = []
        for _ in range(k):
            if self.index == len(self._order):
                self.epoch += 1
                self.index = 0
                self._order = self._shuffled(self.epoch)
            out.append(self.samples[self._order[self.index]])
            self.index += 1
        return out


def encode_prompt(tokenizer, sample: Sample) -> list[int]:
    text = tokenizer.apply_chat_template(sample.messages, add_generation_prompt=True,
                                         tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def collect(task: Task, samples: list[Sample], client: RolloutClient, tokenizer, *, group_size: int,
            max_tokens: int, temperature: float, top_p: float, seed: int | None,
            advantage: str, pad_id: int,
            mark_decisions: bool = False) -> tuple[RolloutBatch, list[dict[str, float]], list]:
    """Sample G completions per prompt, score them; returns the batch, per-row reward
    components and the raw completion groups. ``mark_decisions``: also mark the tokens of
    each completion that state its decision (``Task.decision_spans``)."""
    prompt_ids = [encode_prompt(tokenizer, s) for s in samples]
    groups = client.generate(prompt_ids, n=group_size, max_tokens=max_tokens,
                             temperature=temperature, top_p=top_p, seed=seed)
    scored = task.score_batch(samples, [[c.text for c in group] for group in groups])
    components = [c for per_sample in scored for c in per_sample]
    rewards = [sum(c.values()) for c in components]
    adv = ADVANTAGE_ESTIMATORS[advantage](torch.tensor(rewards), group_size)
    marks = None
    if mark_decisions:
        marks = [decision_mask(tokenizer, c.token_ids, task.decision_spans)
                 for group in groups for c in group]
    batch = RolloutBatch.from_groups(prompt_ids, groups, rewards, adv, pad_id, marks)
    return batch, components, groups


def anchor_batch(task: Task, samples: list[Sample], prompt_ids: list[list[int]],
                 tokenizer, pad_id: int, rng: random.Random) -> RolloutBatch | None:
    """The supervised anchor for these prompts (``prompt_ids``: their token ids, as
    ``collect`` encoded them): each sample's ``Task.anchor_text`` after its prompt, the
    tokens of its free choices marked (``decision_mask``, from the tokenizer's own
    character offsets) to be left out of the NLL; None when the task gives none."""
    prompts, targets, choice_marks = [], [], []
    for s, p in zip(samples, prompt_ids, strict=True):
        if (ref := task.anchor_text(s, rng)) is None:
            continue
        text, spans = ref
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        if not enc["input_ids"]:
            continue
        prompts.append(p)
        targets.append(enc["input_ids"])
        choice_marks.append(marks(enc["offset_mapping"], spans))
    if not targets:
        return None
    return RolloutBatch.teacher_forced(prompts, targets, pad_id, choice_marks)


def write_rollouts(path: Path, step: int, samples: list[Sample], batch: RolloutBatch,
                   groups: list, components: list[dict[str, float]]) -> None:
    g = batch.group_size
    with open(path, "a") as fh:
        for i, (s, group) in enumerate(zip(samples, groups, strict=True)):
            for j, c in enumerate(group):
                row = i * g + j
                fh.write(json.dumps({
                    "step": step, "sample": s.id, "label": s.meta.get("label"),
                    "prompt_ids": batch.prompt_ids[row], "token_ids": c.token_ids,
                    "worker_logprobs": c.logprobs, "text": c.text,
                    "finish_reason": c.finish_reason, "adapter_version": c.adapter_version,
                    "worker": c.worker, "reward": float(batch.rewards[row]),
                    "components": components[row], "advantage": float(batch.advantages[row]),
                }) + "\n")
