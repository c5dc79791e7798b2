"""The policy model: the tokenizer, and the base (4-bit nf4 through bitsandbytes when
configured) with a fresh LoRA adapter, as every learner rank loads them (trainer/learner.py)."""

from __future__ import annotations

import torch

from trainer.config import StageConfig

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
    if cfg.model.load_in_4bit and device.type == "cpu":
        keep_4bit_training_layout(model)
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


def keep_4bit_training_layout(model) -> None:
    """On CPUs with AVX512-BF16, bitsandbytes repacks a 4-bit layer's weight for inference
    (bf16 block scales) the first time the layer runs in eval mode without gradients, and
    keeps it so: a later training forward then fails (an in-place bias add on a tensor that
    requires grad) and eval and training passes would differ. The learner needs both (the
    shared-prefix check and the reference scores run in eval mode), so it keeps the one
    layout bitsandbytes trains with."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
