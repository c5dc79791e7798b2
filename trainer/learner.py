"""The learner: a peft LoRA policy on a (optionally 4-bit) base, trained under DeepSpeed.

Owns model loading, the GRPO update (policy and reference log-probs come from
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
from pathlib import Path

import torch

from trainer.config import StageConfig, check_zero3
from trainer.dist import rank_and_world
from trainer.grpo import TOKEN_SELECTIONS
from trainer.logprobs import TokenScores, score_tokens, token_logprobs
from trainer.objective import anchor_term, balance_term, compose, rl_term
from trainer.safe_state import only_trainable_in_module_state, safe_torch_load
from trainer.schedules import lr_factor
from trainer.types import RolloutBatch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_tokenizer(cfg: StageConfig):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(cfg.model.name_or_path,
                                        trust_remote_code=cfg.model.trust_remote_code)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_policy(cfg: StageConfig, device: torch.device):
    """Base model (4-bit nf4 through bitsandbytes when configured) + a fresh LoRA adapter;
    with ``train.gradient_checkpointing`` each decoder layer's activations are recomputed in
    the backward instead of kept (the learner's memory then holds one layer's at a time)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = DTYPES[cfg.model.dtype]
    kwargs: dict = {"dtype": dtype, "trust_remote_code": cfg.model.trust_remote_code,
                    "use_safetensors": True}
    if cfg.model.load_in_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        kwargs["device_map"] = {"": device}
    model = AutoModelForCausalLM.from_pretrained(cfg.model.name_or_path, **kwargs)
    # non-reentrant: works with frozen inputs (no enable_input_require_grads) and DeepSpeed
    checkpointing = {"use_reentrant": False}
    if cfg.model.load_in_4bit:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.train.gradient_checkpointing,
            gradient_checkpointing_kwargs=checkpointing)
    elif cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=list(cfg.lora.target_modules), task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


class Learner:
    def __init__(self, cfg: StageConfig, accelerator):
        self.cfg = cfg
        self.acc = accelerator
        self.device = accelerator.device
        self.tokenizer = load_tokenizer(cfg)
        self.pad_id = self.tokenizer.pad_token_id
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

    @property
    def peft_model(self):
        return self.acc.unwrap_model(self.model)

    def logprobs(self, batch: RolloutBatch, adapter: bool = True) -> torch.Tensor:
        """log p(sampled token) [n, T] under the policy (``adapter=False``: the reference,
        the base with the adapter off)."""
        ctx = nullcontext() if adapter else self.peft_model.disable_adapter()
        with ctx:
            return token_logprobs(self.model, batch, self.pad_id, self.cfg.rollout.temperature,
                                  self.device, chunk_tokens=self.cfg.train.logits_chunk_tokens)

    def scores(self, batch: RolloutBatch, choice_lse: bool = False) -> TokenScores:
        """The policy's log-probs with their sampling entropy (and ``choice_lse``)."""
        return score_tokens(self.model, batch, self.pad_id, self.cfg.rollout.temperature,
                            self.device, entropy=True, choice_lse=choice_lse,
                            chunk_tokens=self.cfg.train.logits_chunk_tokens)

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
                   anchor: RolloutBatch | None = None) -> dict[str, float]:
        """One optimizer step on this rank's batch, accumulated over micro-batches.
        ``anchor``: reference answers whose NLL, times ``train.anchor_coef``, joins the loss
        (spread over the micro-batches)."""
        try:
            return self._train_step(batch, anchor)
        except torch.OutOfMemoryError as exc:
            raise OutOfMemory(out_of_memory_message(self.cfg, batch, exc)) from None

    def _train_step(self, batch: RolloutBatch, anchor: RolloutBatch | None) -> dict[str, float]:
        """``train.updates_per_batch`` optimizer steps on ``batch``: the first records its
        detached log-probs (the parameters' at the batch's start: the optimizer steps only
        after every micro-batch), every later one takes its ratio against them. Returns the
        updates' mean metrics."""
        n = self.cfg.train.updates_per_batch
        batch.old_logp = batch.old_choice_lse = None
        runs = [self._update(batch, anchor, record_old=n > 1)]
        runs += [self._update(batch, anchor) for _ in range(n - 1)]
        return {k: sum(r[k] for r in runs) / n for k in runs[0]}

    def _update(self, batch: RolloutBatch, anchor: RolloutBatch | None,
                record_old: bool = False) -> dict[str, float]:
        tc = self.cfg.train
        if record_old:
            batch.old_logp = torch.zeros_like(batch.rollout_logp)
            batch.old_choice_lse = torch.zeros_like(batch.rollout_logp)
        self.model.train()
        totals: dict[str, float] = {}
        n_micro = len(batch) // self.micro
        per_anchor = -(-len(anchor) // n_micro) if anchor is not None and len(anchor) else 0
        anchor_nlls: list[float] = []
        shares: list[float] = []
        for k in range(n_micro):
            mb = batch.slice(k * self.micro, (k + 1) * self.micro)
            mask = mb.completion_mask.to(self.device)
            # a decision's policy gradient moves probability among its options only
            # (``choice_lse``: log p(any option) where the task named them; grpo_loss)
            among = tc.pg_tokens == "decision" and mb.choice_ids is not None
            scored = self.scores(mb, choice_lse=among)
            logp, ent, lse = scored.logp, scored.entropy, scored.choice_lse
            pg_weight = TOKEN_SELECTIONS[tc.pg_tokens](ent, mask, tc.entropy_top_frac,
                                                       mb.decision_mask)
            ref = None
            if tc.kl_coef > 0:
                with torch.no_grad():
                    ref = self.logprobs(mb, adapter=False)
            rows = slice(k * self.micro, (k + 1) * self.micro)
            if record_old:
                batch.old_logp[rows] = logp.detach().cpu()
                if lse is not None:
                    batch.old_choice_lse[rows] = lse.detach().cpu()
            fresh = record_old or mb.old_logp is None
            old = logp.detach() if fresh else mb.old_logp.to(self.device)
            old_lse = None if fresh or lse is None else mb.old_choice_lse.to(self.device)
            terms = [rl_term(tc, logp, old, ref, mb.rollout_logp.to(self.device),
                             mb.advantages.to(self.device), mask, pg_weight,
                             lse, old_lse)]
            if anchor is not None or tc.balance_coef > 0:
                chunk = (None if anchor is None
                         else anchor.slice(k * per_anchor, (k + 1) * per_anchor))
                held, share, prior = anchor_term(tc, self.model, chunk, self.pad_id,
                                                 self.device)
                terms.append(held)
                if tc.balance_coef > 0:  # a collective: every rank, every micro-batch
                    terms.append(balance_term(tc, share, prior))
            loss, logged, metrics = compose(terms)
            if "anchor_nll" in metrics:
                anchor_nlls.append(metrics.pop("anchor_nll"))
            if "balance_share" in metrics:
                shares.append(metrics.pop("balance_share"))
            with torch.no_grad():
                n = mask.sum().clamp(min=1)
                lp_gap = float(((logp.detach() - mb.rollout_logp.to(self.device)).abs()
                                * mask).sum() / n)
                extra = {"entropy": float((ent * mask).sum() / n),
                         "pg_token_frac": float((pg_weight > 0).sum() / n)}
            self._accumulate(loss, n_micro)
            for key, val in {"loss": logged, "logp_gap": lp_gap, **extra, **metrics}.items():
                totals[key] = totals.get(key, 0.0) + val / n_micro
        if tc.anchor_coef > 0:  # every rank logs the same keys (NaN: no anchor text here)
            totals["anchor_nll"] = (sum(anchor_nlls) / len(anchor_nlls) if anchor_nlls
                                    else float("nan"))
        if tc.balance_coef > 0:  # the batch's mean share of the first option (e.g. UP)
            totals["balance_share"] = sum(shares) / len(shares) if shares else float("nan")
        totals.update(self._optimizer_step())
        return totals

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
