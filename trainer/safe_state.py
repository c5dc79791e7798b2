"""What the learner's DeepSpeed checkpoints hold and how they are read back: only the
trainable (LoRA) weights in the module state, and ``torch.load(weights_only=True)`` with an
explicit allowlist of the DeepSpeed types its files hold instead of DeepSpeed's default
``weights_only=False`` unpickling."""

from __future__ import annotations

import torch


def only_trainable_in_module_state(engine) -> None:
    """DeepSpeed's ``exclude_frozen_parameters`` keeps frozen weights that are tied to another
    name (a tied ``lm_head.weight``: 233M parameters for Qwen2.5-1.5B). Keep only the
    trainable ones: the LoRA weights are all a checkpoint needs from the module."""
    if getattr(engine, "_stonk_trainable_only", False):
        return
    trainable = {n for n, p in engine.module.named_parameters(remove_duplicate=False)
                 if p.requires_grad}
    full = engine.module_state_dict

    def module_state_dict(*args, exclude_frozen_parameters=False, **kwargs):
        sd = full(*args, exclude_frozen_parameters=exclude_frozen_parameters, **kwargs)
        if exclude_frozen_parameters:
            for name in [k for k in sd if k not in trainable]:
                del sd[name]
        return sd

    engine.module_state_dict = module_state_dict
    engine._stonk_trainable_only = True


def _deepspeed_safe_globals() -> list:
    """The non-tensor types DeepSpeed's ZeRO checkpoint files hold (seen in 0.19)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def safe_torch_load(path, map_location=None):
    """``torch.load(weights_only=True)``: tensors, containers, numbers, and the DeepSpeed
    types above; anything else in the file is refused rather than unpickled."""
    allowed = []
    try:
        allowed = _deepspeed_safe_globals()
    except ImportError:  # pragma: no cover - deepspeed is a dependency
        pass
    with torch.serialization.safe_globals(allowed):
        try:
            return torch.load(path, map_location=map_location or "cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - UnpicklingError and friends
            if "Weights only load failed" not in str(exc):
                raise
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
            raise RuntimeError(f"{path}: refusing to unpickle types outside the allowlist "
                               f"(torch.load weights_only=True): {unsafe}") from None
