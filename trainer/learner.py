"""The learner: a peft LoRA policy on a (optionally 4-bit) base, trained under DeepSpeed.

Owns the GRPO update (the model from trainer/policy.py; policy and reference log-probs from
trainer/logprobs.py, which never holds the full-vocabulary logits; the objective's named
terms from trainer/objective.py) and adapter saving. The
reference policy is the same model with the adapter disabled, so there is no second model
copy.

Training state for checkpoints (``save_state`` / ``load_state``, called by
trainer/checkpoint.py): under DeepSpeed the engine's own checkpoint (the trainable LoRA
weights only, each rank's ZeRO optimizer partition, scheduler, step counters), read back
with the allowlist of trainer/safe_state.py.

The update bypasses ``accelerator.backward`` on purpose: with DeepSpeed it steps the engine
on every call, while we accumulate gradients over micro-batches; ``engine.backward`` /
``engine.step`` let DeepSpeed own accumulation boundaries (``gradient_accumulation_steps``
is set from the batch shape below) and gradient clipping (``ds_config.json``).
"""

from __future__ import annotations

from contextlib import nullcontext
from functools import partial
from pathlib import Path

import torch

from trainer import credit_options  # noqa: F401  (registers its term and score)
from trainer.config import StageConfig, check_zero3
from trainer.dist import rank_and_world
from trainer.joint import join
from trainer.logprobs import TokenScores, score_tokens, token_logprobs
from trainer.objective import SCORES, TERMS, Scored, active_terms, compose, needed_scores
from trainer.policy import load_policy, load_tokenizer
from trainer.prefix_attention import use_blocks
from trainer.safe_state import only_trainable_in_module_state, safe_torch_load
from trainer.schedules import lr_factor
from trainer.shared_prefix import check_layout, prompt_runs, resolve
from trainer.tasks.registry import load_contributions
from trainer.types import RolloutBatch


class Learner:
    def __init__(self, cfg: StageConfig, accelerator):
        self.cfg = cfg
        self.acc = accelerator
        self.device = accelerator.device
        self.tokenizer = load_tokenizer(cfg)
        self.pad_id = self.tokenizer.pad_token_id
        load_contributions(cfg.task)  # the task's terms of the objective (e.g. the anchor)
        self.batch_start: dict[str, torch.Tensor] | None = None
        torch.manual_seed(cfg.train.seed)  # identical LoRA init on every rank
        model = load_policy(cfg, self.device)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.train.learning_rate,
                                      weight_decay=cfg.train.weight_decay)
        self.per_rank = cfg.train.prompts_per_rank * cfg.rollout.group_size
        self.micro = cfg.train.micro_batch_size
        plugin = accelerator.state.deepspeed_plugin
        if plugin is not None and plugin.zero_stage == 3:  # also under accelerate by hand
            check_zero3(cfg, "the DeepSpeed config's zero_optimization.stage")
        if plugin is not None:
            ds = plugin.deepspeed_config
            ds["train_micro_batch_size_per_gpu"] = self.micro
            ds["gradient_accumulation_steps"] = self.per_rank // self.micro
            ds["train_batch_size"] = self.per_rank * rank_and_world()[1]
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.is_deepspeed = plugin is not None
        self.zero_stage = plugin.zero_stage if plugin is not None else 0
        self.shared_prefix = self._shared_prefix(model)
        self._layout_checked = not self.shared_prefix

    def _shared_prefix(self, model) -> bool:
        """``train.shared_prefix`` resolved against the model's attention (SDPA's goes by
        blocks, trainer/prefix_attention.py); says which."""
        on, line = resolve(self.cfg.train.shared_prefix, model.config, self.micro,
                           self.cfg.rollout.group_size)
        if on and use_blocks(model.get_base_model()):
            line += "; attention by blocks, no [L, L] mask"
        if rank_and_world()[0] == 0:
            print(f"[learner] shared prefix: {line}", flush=True)
        return on

    def _check_layout(self, mb: RolloutBatch) -> None:
        """Once, at the run's first micro-batch: score its first group both ways (no
        dropout) and go back to one row per completion, with one warning line, if they
        differ: a mask or position regression must not train silently."""
        self._layout_checked = True
        a, b = prompt_runs(mb.prompt_ids)[0]
        group = mb.slice(a, b)
        training = self.model.training
        self.model.eval()
        try:
            problem = check_layout(
                partial(token_logprobs, self.model, group, self.pad_id,
                        self.cfg.rollout.temperature, self.device,
                        self.cfg.train.logits_chunk_tokens),
                group.completion_mask.to(self.device),
                self.peft_model.get_input_embeddings().weight.dtype)
        finally:
            self.model.train(training)
        if problem:
            self.shared_prefix = False
            print(f"[learner] warning: rank {rank_and_world()[0]}: the shared-prefix layout's "
                  f"log-probs differ from one row per completion on this run's first group "
                  f"({problem}); training continues with one row per completion "
                  f"(train.shared_prefix: off silences this)", flush=True)

    @property
    def peft_model(self):
        return self.acc.unwrap_model(self.model)

    def logprobs(self, batch: RolloutBatch, adapter: bool = True) -> torch.Tensor:
        """log p(sampled token) [n, T] under the policy (``adapter=False``: the reference,
        the base with the adapter off)."""
        ctx = nullcontext() if adapter else self.peft_model.disable_adapter()
        with ctx:
            return token_logprobs(self.model, batch, self.pad_id, self.cfg.rollout.temperature,
                                  self.device, chunk_tokens=self.cfg.train.logits_chunk_tokens,
                                  shared_prefix=self.shared_prefix)

    def scores(self, batch: RolloutBatch, extra: set[str] = frozenset(),
               side: dict[str, RolloutBatch | None] | None = None
               ) -> tuple[TokenScores, dict[str, torch.Tensor], dict[str, TokenScores]]:
        """The policy's log-probs with their sampling entropy, the ``extra`` scores the
        objective's enabled terms read (``objective.SCORES``: each from the log-probs of the
        alternative tokens the batch names), those the batch has the alternatives for, and
        the scores of the ``side`` slices whose terms have them scored in this pass (the
        shared-prefix layout on; trainer/joint.py)."""
        specs = [SCORES[name] for name in sorted(extra)
                 if SCORES[name].alternatives in batch.extras
                 and (SCORES[name].reads is None or SCORES[name].reads in batch.extras)]
        keys = {spec.alternatives for spec in specs}
        if len(keys) > 1:  # one scoring pass gathers one set of alternatives
            raise ValueError(f"the enabled scores read different alternatives: {sorted(keys)}")
        alt_ids = batch.extras[keys.pop()] if keys else None
        joined = {t.name: (side[t.name], side[t.name].extras.get(t.side_alternatives))
                  for t in TERMS.values() if t.side_in_policy_pass and self.shared_prefix
                  and (side or {}).get(t.name) is not None and len(side[t.name])}
        temp = self.cfg.rollout.temperature
        j = join(batch, alt_ids, temp, joined, self.pad_id) if joined else None
        scored = score_tokens(self.model, j.batch if j else batch, self.pad_id,
                              j.temperature if j else temp, self.device, entropy=True,
                              alternatives=j.alternatives if j else alt_ids,
                              chunk_tokens=self.cfg.train.logits_chunk_tokens,
                              shared_prefix=self.shared_prefix)
        scored, side_scores = j.split(scored) if j else (scored, {})
        ids = alt_ids.to(self.device) if alt_ids is not None else None
        return scored, {spec.name: spec.fn(scored.alternatives, ids,
                                           *([batch.extras[spec.reads].to(self.device)]
                                             if spec.reads else []))
                        for spec in specs}, side_scores

    def set_step(self, step: int) -> float:
        """Set the learning rate of optimizer step ``step`` (1-based, ``train.lr_schedule``);
        returns it. Under DeepSpeed the wrapped optimizer's groups are the ones it steps."""
        tc = self.cfg.train
        lr = tc.learning_rate * lr_factor(step, tc.steps, tc.lr_schedule, tc.warmup_steps,
                                          tc.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def train_step(self, batch: RolloutBatch,
                   side: dict[str, RolloutBatch | None] | None = None) -> dict[str, float]:
        """One optimizer step on this rank's batch, accumulated over micro-batches. ``side``:
        each objective term's side batch (the anchor's reference answers), spread over the
        micro-batches."""
        try:
            return self._train_step(batch, side or {})
        except torch.OutOfMemoryError as exc:
            raise OutOfMemory(out_of_memory_message(self.cfg, batch, exc)) from None

    def _train_step(self, batch: RolloutBatch,
                    side: dict[str, RolloutBatch | None]) -> dict[str, float]:
        """``train.updates_per_batch`` optimizer steps on ``batch``: the first records its
        detached log-probs and extra scores (the parameters' at the batch's start: the
        optimizer steps only after every micro-batch; kept as :attr:`batch_start`), every
        later one takes its ratio against them. Returns the updates' mean metrics."""
        n = self.cfg.train.updates_per_batch
        self.batch_start = {} if n > 1 else None
        runs = [self._update(batch, side, self.batch_start)]
        runs += [self._update(batch, side, self.batch_start, recorded=True)
                 for _ in range(n - 1)]
        return {k: sum(r[k] for r in runs) / n for k in runs[0]}

    def _update(self, batch: RolloutBatch, side: dict[str, RolloutBatch | None],
                start: dict[str, torch.Tensor] | None, recorded: bool = False
                ) -> dict[str, float]:
        """One optimizer step: per micro-batch, score, compose the enabled terms, accumulate.
        ``start``: the batch's start scores, filled here unless ``recorded`` (None: each
        micro-batch's own, detached)."""
        tc = self.cfg.train
        terms, extra = active_terms(tc), needed_scores(tc)
        self.model.train()
        n_micro = len(batch) // self.micro
        totals = MicroMeans(n_micro, {k for t in terms for k, on in t.sparse.items() if on(tc)})
        for k in range(n_micro):
            rows = slice(k * self.micro, (k + 1) * self.micro)
            s = self._scored(batch.slice(rows.start, rows.stop), side, k, n_micro, extra)
            if start is not None and not recorded:  # the batch's start: these parameters'
                for key, value in {"logp": s.logp, **s.extra}.items():
                    start.setdefault(key, torch.zeros_like(batch.rollout_logp))[rows] = \
                        value.detach().cpu()
            if recorded:
                s.old = {key: value[rows].to(self.device) for key, value in start.items()}
            loss, logged, metrics = compose([t for spec in terms
                                             for t in _as_list(spec.fn(s))])
            self._accumulate(loss, n_micro)
            totals.add({"loss": logged, **metrics})
        return {**totals.means(), **self._optimizer_step()}

    def _scored(self, mb: RolloutBatch, side: dict[str, RolloutBatch | None], k: int,
                n_micro: int, extra: set[str]) -> Scored:
        """Micro-batch ``k`` of ``n_micro`` as the terms see it: one scoring pass of the
        policy, the reference's log-probs (``kl_coef`` > 0), each side batch's share."""
        if not self._layout_checked:
            self._check_layout(mb)
        shares = {}
        for name, b in side.items():
            per = -(-len(b) // n_micro) if b is not None and len(b) else 0
            shares[name] = None if b is None else b.slice(k * per, (k + 1) * per)
        scored, extras, side_scores = self.scores(mb, extra, shares)
        ref = None
        if self.cfg.train.kl_coef > 0:
            with torch.no_grad():
                ref = self.logprobs(mb, adapter=False)
        return Scored(self.cfg.train, mb, mb.completion_mask.to(self.device), scored.logp,
                      scored.entropy, {"logp": scored.logp.detach(),
                                       **{n: v.detach() for n, v in extras.items()}},
                      ref, extras, shares, self.model, self.pad_id, self.device, side_scores)

    def _accumulate(self, loss: torch.Tensor, n_micro: int) -> None:
        """Add the gradient of ``loss / n_micro``: a step's loss is the mean over its
        micro-batches on either path. DeepSpeed divides by its gradient_accumulation_steps
        itself (set to n_micro in __init__) and steps the optimizer after the last
        micro-batch; under plain accelerate the division is here and the step in
        :meth:`_optimizer_step`. Across ranks both average the gradients."""
        if self.is_deepspeed:
            self.model.backward(loss)
            self.model.step()
        else:
            self.acc.backward(loss / n_micro)

    def _optimizer_step(self) -> dict[str, float]:
        """The step after the last micro-batch, gradients clipped to norm 1 on both paths
        (ds_config.json's gradient_clipping); DeepSpeed stepped already and reports the
        norm."""
        if not self.is_deepspeed:
            self.acc.clip_grad_norm_(self.model.parameters(), 1.0)
            self.optimizer.step()
            self.optimizer.zero_grad()
            return {}
        norm = self.model.get_global_grad_norm()
        return {"grad_norm": float(norm) if norm is not None else float("nan")}

    def adapter_state(self) -> dict[str, torch.Tensor] | None:
        """Collective under ZeRO-3 (every rank must call it): the full state dict, gathered
        on rank 0. None otherwise: every rank already holds the whole adapter."""
        if self.zero_stage == 3:
            return self.acc.get_state_dict(self.model)
        return None

    def save_adapter(self, path: Path, state: dict[str, torch.Tensor] | None = None) -> None:
        self.peft_model.save_pretrained(str(path), state_dict=state, safe_serialization=True)

    # ------------------------------------------------------------------ training state
    def trainable_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters()
                   if p.requires_grad)

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        """The adapter as peft saves it (keys without the adapter name), on CPU."""
        from peft import get_peft_model_state_dict

        return {k: v.detach().cpu() for k, v in get_peft_model_state_dict(
            self.peft_model).items()}

    def save_state(self, path: Path) -> None:
        """Collective: every rank writes its part of the optimizer state under ``path``."""
        if self.is_deepspeed:
            only_trainable_in_module_state(self.model)
            self.model.save_checkpoint(str(path), tag=STATE_TAG, client_state={},
                                       save_latest=False, exclude_frozen_parameters=True)
            return
        from safetensors.torch import save_file

        if rank_and_world()[0] == 0:
            path.mkdir(parents=True, exist_ok=True)
            trainable = {n: p.detach().cpu().contiguous()
                         for n, p in self.peft_model.named_parameters() if p.requires_grad}
            save_file(trainable, str(path / "trainable.safetensors"))
            torch.save(self.optimizer.state_dict(), path / "optimizer.pt")

    def load_state(self, path: Path) -> None:
        """Restore what ``save_state`` wrote (same world size), loading only safe types."""
        if self.is_deepspeed:
            self.model.checkpoint_engine.load = safe_torch_load
            load_path, _ = self.model.load_checkpoint(
                str(path), tag=STATE_TAG, load_module_strict=False,
                load_optimizer_states=True, load_lr_scheduler_states=True)
            if load_path is None:
                raise FileNotFoundError(f"{path / STATE_TAG}: no DeepSpeed checkpoint there")
            return
        from safetensors.torch import load_file

        trainable = load_file(str(path / "trainable.safetensors"))
        params = dict(self.peft_model.named_parameters())
        with torch.no_grad():
            for name, value in trainable.items():
                params[name].copy_(value)
        self.optimizer.load_state_dict(safe_torch_load(path / "optimizer.pt"))


STATE_TAG = "state"


def _as_list(terms) -> list:
    return terms if isinstance(terms, list) else [terms]


class MicroMeans:
    """A step's metrics over its micro-batches: each the mean over all of them, except the
    ``sparse`` ones: the mean over those that reported it, NaN when none did."""

    def __init__(self, n_micro: int, sparse: set[str]):
        self.n, self.sparse = n_micro, sparse
        self.sums: dict[str, float] = {}
        self.seen: dict[str, list[float]] = {k: [] for k in sparse}

    def add(self, metrics: dict[str, float]) -> None:
        for key, val in metrics.items():
            if key in self.seen:
                self.seen[key].append(val)
            else:
                self.sums[key] = self.sums.get(key, 0.0) + val / self.n

    def means(self) -> dict[str, float]:
        return {**self.sums, **{k: sum(v) / len(v) if v else float("nan")
                                for k, v in self.seen.items()}}


class OutOfMemory(RuntimeError):
    """The learner ran out of GPU memory; the message names the settings to lower."""


def out_of_memory_message(cfg: StageConfig, batch: RolloutBatch, exc: Exception) -> str:
    tc, rc = cfg.train, cfg.rollout
    seq = max(len(p) for p in batch.prompt_ids) + batch.completion_ids.shape[1]
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (f"the learner ran out of GPU memory in a micro-batch of train.micro_batch_size="
            f"{tc.micro_batch_size} sequences of up to {seq} tokens ({first}). Lower "
            f"train.micro_batch_size first (it must divide train.prompts_per_rank x "
            f"rollout.group_size = {tc.prompts_per_rank} x {rc.group_size}), then "
            f"rollout.max_tokens ({rc.max_tokens}); with a colocated worker also "
            f"rollout.gpu_memory_utilization ({rc.gpu_memory_utilization}); or set "
            f"model.load_in_4bit: true (now {cfg.model.load_in_4bit}).")
