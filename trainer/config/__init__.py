"""Typed, validated configuration for a training stage.

One YAML file per stage and scale (``configs/``) loads into :class:`StageConfig`, a tree of
dataclasses split by concern. Loading checks every key and type and fails with one
:class:`ConfigError` that names the file, the dotted field and what is allowed, before
anything heavy (torch, vLLM, DeepSpeed) is imported. Command-line overrides use the same
path: ``--set train.steps=3``.
"""

from trainer.config.loading import from_dict, load_config, save_config
from trainer.config.sections import (
    VLLM_LORA_RANKS,
    ConfigError,
    EvalConfig,
    GateConfig,
    LaunchConfig,
    LoraConfig,
    ModelConfig,
    RewardConfig,
    RolloutConfig,
    RunConfig,
    StageConfig,
    TrainConfig,
)
from trainer.config.validation import check_zero3, mixed_precision, validate

__all__ = [
    "VLLM_LORA_RANKS", "ConfigError", "EvalConfig", "GateConfig", "LaunchConfig", "LoraConfig",
    "ModelConfig", "RewardConfig", "RolloutConfig", "RunConfig", "StageConfig", "TrainConfig", "check_zero3",
    "from_dict", "load_config", "mixed_precision", "save_config", "validate",
]
