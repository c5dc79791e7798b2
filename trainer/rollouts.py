"""From prompts to a scored RolloutBatch: tokenise, sample through the workers, reward.

Also owns the per-rank prompt sampler and the ``rollouts.rank{r}.jsonl`` record, which lets
anyone re-check which adapter version sampled what and with which log-probs.
"""

from __future__ import annotations

import copy
import json
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rollout.source import RolloutSource
from trainer.credit import token_advantages
from trainer.grpo import ADVANTAGE_ESTIMATORS, overlong_penalty
from trainer.objective import MarkerSpec
from trainer.tasks.base import Sample, Task
from trainer.types import RolloutBatch


class PromptSampler:
    """Endless, epoch-shuffled draws from this rank's shard; position is (epoch, index).

    With ``key`` (``Task.stratum``: the stock task's label in Stage I), each epoch
    interleaves the classes: each shuffled on its own, then one of each in turn (classes
    in sorted order), what is left of the larger ones shuffled after. So every run of
    consecutive draws holds the classes as evenly as the shard allows, and the label mean
    of a step's prompts cannot drift from the set's: GRPO moves every prompt's answer
    towards a drifting mean (measured: docs/demo-learning-history.md, "Measurements behind
    the code"). A key that names fewer than two classes is plain shuffling."""

    def __init__(self, samples: list[Sample], seed: int, key=None):
        if not samples:
            raise ValueError("this learner rank has no training samples (shard is empty)")
        self.samples = samples
        self.seed = seed
        self.epoch = 0
        self.index = 0
        classes: dict[str, list[int]] = {}
        for i, s in enumerate(samples if key is not None else ()):
            classes.setdefault(str(key(s)), []).append(i)
        self._classes = [classes[k] for k in sorted(classes)] if len(classes) > 1 else None
        self._order = self._shuffled(0)

    def _shuffled(self, epoch: int) -> list[int]:
        rng = random.Random(self.seed * 100_003 + epoch)
        if self._classes is None:
            order = list(range(len(self.samples)))
            rng.shuffle(order)
            return order
        classes = [list(c) for c in self._classes]
        for c in classes:
            rng.shuffle(c)
        even = min(map(len, classes))
        rest = [i for c in classes for i in c[even:]]
        rng.shuffle(rest)
        return [c[j] for j in range(even) for c in classes] + rest

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

    def state_dict(self) -> dict[str, int]:
        """The data position (the order is a pure function of seed and epoch)."""
        return {"seed": self.seed, "epoch": self.epoch, "index": self.index,
                "size": len(self.samples)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from ``state``'s position, however many prompts each step drew (dynamic
        sampling draws more). ValueError when it belongs to another shard."""
        if (state["seed"], state["size"]) != (self.seed, len(self.samples)):
            raise ValueError(f"seed/size {state['seed']}/{state['size']} vs {self.seed}/"
                             f"{len(self.samples)}")
        if not 0 <= state["index"] <= len(self.samples) or state["epoch"] < 0:
            raise ValueError(f"position {(state['epoch'], state['index'])} is out of range")
        self.epoch, self.index = state["epoch"], state["index"]
        self._order = self._shuffled(self.epoch)

    def snapshot(self) -> PromptSampler:
        """This position, unaffected by later draws (what a checkpoint records while the
        next step's prompts are already drawn)."""
        return copy.copy(self)  # next() rebinds _order, never mutates it


class Background:
    """One call on its own thread (``rollout.overlap``: the next step's sampling while the
    learner trains). ``result()`` waits for it and returns its value or raises its error;
    ``seconds`` is how long the call took."""

    def __init__(self, fn: Callable[[], Any], name: str = "rollout-prefetch"):
        self.seconds = 0.0
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), name=name, daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        t0 = time.perf_counter()
        try:
            self._value = fn()
        except BaseException as exc:  # handed to the caller by result()
            self._error = exc
        finally:
            self.seconds = time.perf_counter() - t0

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


def encode_prompt(tokenizer, sample: Sample) -> list[int]:
    text = tokenizer.apply_chat_template(sample.messages, add_generation_prompt=True,
                                         tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@dataclass
class StepRollout:
    """One step's scored groups on one rank: the prompts they answer (with dynamic sampling,
    the kept ones), the batch, per-row reward components, the raw completion groups and the
    sampling's own metrics (``rollout/...``)."""

    samples: list[Sample]
    batch: RolloutBatch
    components: list[dict[str, float]]
    groups: list
    stats: dict[str, float] = field(default_factory=dict)


# (samples, round) -> (prompt ids, completion groups, per-row reward components)
Drawn = tuple[list[list[int]], list, list[dict[str, float]]]


def total_reward(components: dict[str, float]) -> float:
    """A completion's reward: the sum of its (weighted) components."""
    return sum(components.values())


def sample_groups(task: Task, samples: list[Sample], client: RolloutSource, tokenizer, *,
                  group_size: int, max_tokens: int, temperature: float, top_p: float,
                  seed: int | None, overlong_buffer: int = 0,
                  overlong_coef: float = 1.0) -> Drawn:
    """Sample G completions per prompt and score them: the task's components, plus the
    task-independent ``overlong`` (``reward.overlong_buffer`` > 0: DAPO's soft penalty)."""
    prompt_ids = [encode_prompt(tokenizer, s) for s in samples]
    groups = client.generate(prompt_ids, n=group_size, max_tokens=max_tokens,
                             temperature=temperature, top_p=top_p, seed=seed)
    scored = task.score_batch(samples, [[c.text for c in group] for group in groups])
    components = [c for per_sample in scored for c in per_sample]
    if overlong_buffer > 0:
        lengths = torch.tensor([len(c.token_ids) for group in groups for c in group])
        for c, p in zip(components, overlong_penalty(lengths, max_tokens, overlong_buffer),
                        strict=True):
            c["overlong"] = overlong_coef * float(p)
    return prompt_ids, groups, components


def informative_groups(samples: list[Sample], draw: Callable[[list[Sample], int], Drawn],
                       more: Callable[[int], list[Sample]],
                       max_extra: int) -> tuple[list[Sample], Drawn, dict[str, float]]:
    """DAPO's dynamic sampling (Yu et al. 2025): a group whose G rewards are all equal has
    zero advantage everywhere and gives no gradient, so it is dropped and ``more(k)`` draws
    the k prompts still missing (``draw(samples, round)`` samples and scores them), until
    ``len(samples)`` groups are informative or ``max_extra`` extra prompts were drawn; then
    dropped groups fill the batch, so every rank still trains on a full batch. Departure:
    the paper over-samples a whole batch per round; drawing only what is missing spends no
    sampling on groups that would be cut. Returns the kept prompts, their groups and
    ``rollout/filtered_groups``, ``rollout/extra_draws``, ``rollout/uninformative_kept``."""
    need, extra, rnd, chosen = len(samples), 0, 0, samples
    kept: list[tuple] = []
    dropped: list[tuple] = []
    while True:
        prompt_ids, groups, components = draw(chosen, rnd)
        g = len(groups[0])
        for i, s in enumerate(chosen):
            rows = components[i * g:(i + 1) * g]
            rewards = [total_reward(c) for c in rows]
            informative = max(rewards) - min(rewards) > 1e-9
            (kept if informative else dropped).append((s, prompt_ids[i], groups[i], rows))
        missing = need - len(kept)
        if missing <= 0 or extra >= max_extra:
            break
        chosen = more(min(missing, max_extra - extra))
        extra, rnd = extra + len(chosen), rnd + 1
    picked = kept + dropped[:max(0, need - len(kept))]
    stats = {"rollout/filtered_groups": float(len(dropped)),
             "rollout/extra_draws": float(extra),
             "rollout/uninformative_kept": float(max(0, need - len(kept)))}
    drawn = ([p for _, p, _, _ in picked], [gr for _, _, gr, _ in picked],
             [c for *_, rows in picked for c in rows])
    return [s for s, *_ in picked], drawn, stats


def build_batch(task: Task, tokenizer, drawn: Drawn, *, group_size: int, advantage: str,
                pad_id: int, markers: Sequence[MarkerSpec] = (),
                credit: dict[str, str] | None = None, credit_options: bool = False,
                credit_modal: bool = False,
                samples: list[Sample] | None = None) -> RolloutBatch:
    """The batch of scored groups, advantages per group. ``markers``: the enabled
    contributions' per-row extras (``objective.active_markers``; e.g. the tokens that state
    a decision), each computed over the batch's completions in row order. ``credit``
    (``train.credit``): per-token advantages by span (trainer/credit.py), the extra
    ``token_advantages``; with ``credit_options`` (``train.credit_options``, needs the
    ``samples`` the groups answer) also ``option_values`` (trainer/credit_options.py);
    ``credit_modal`` (``train.credit_modal``): only the modal answers learn a span."""
    prompt_ids, groups, components = drawn
    rewards = [total_reward(c) for c in components]
    adv = ADVANTAGE_ESTIMATORS[advantage](torch.tensor(rewards), group_size)
    completions = [c for group in groups for c in group]
    extras = {}
    for marker in markers:
        extras.update(marker.fn(task, tokenizer, completions))
    if credit:
        extras["token_advantages"] = token_advantages(
            task, tokenizer, completions, components, credit, group_size,
            ADVANTAGE_ESTIMATORS[advantage], options=credit_options, modal=credit_modal)
        if credit_options:
            from trainer.credit_options import option_values

            values = option_values(task, tokenizer, samples, completions, credit, group_size,
                                   extras.get("choice_ids"), modal=credit_modal)
            if values is not None:
                extras["option_values"] = values
    return RolloutBatch.from_groups(prompt_ids, groups, rewards, adv, pad_id, extras)


def write_rollouts(path: Path, step: int, samples: list[Sample], batch: RolloutBatch,
                   groups: list, components: list[dict[str, float]]) -> None:
    g = batch.group_size
    with open(path, "a") as fh:
        for i, (s, group) in enumerate(zip(samples, groups, strict=True)):
            for j, c in enumerate(group):
                row = i * g + j
                fh.write(json.dumps({
                    "step": step, "group": i, "sample": s.id, "label": s.meta.get("label"),
                    "prompt_ids": batch.prompt_ids[row], "token_ids": c.token_ids,
                    "worker_logprobs": c.logprobs, "text": c.text,
                    "finish_reason": c.finish_reason, "adapter_version": c.adapter_version,
                    "worker": c.worker, "reward": float(batch.rewards[row]),
                    "components": components[row], "advantage": float(batch.advantages[row]),
                }) + "\n")
