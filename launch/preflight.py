"""Checks that run before anything heavy starts: is the model there, is the GPU there?

All problems are reported together, in the user's terms, with the way out (the demo config
runs on this machine with the embedded model).
"""

from __future__ import annotations

import os
from pathlib import Path

from trainer.config import StageConfig

DEMO_HINT = ("To run on this machine without a GPU or hub access, use the embedded demo: "
             "`make demo`, or `make stage1 CONFIG=configs/demo/stage1.yaml`.")


class PreflightError(RuntimeError):
    pass


def model_problem(name: str) -> str | None:
    """None when the model can be loaded; else what is missing."""
    path = Path(name)
    if path.is_dir():
        return None if (path / "config.json").is_file() else (
            f"model folder {path} has no config.json (not a save_pretrained checkpoint)")
    if name.startswith((".", "/")) or name.startswith("models/"):
        return (f"model folder {name} does not exist (the embedded models under models/ are "
                f"built by `make warmstart`)")
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub ships with transformers
        return None
    cached = try_to_load_from_cache(name, "config.json")
    if isinstance(cached, str):
        return None
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return f"model {name} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1"
    try:
        from huggingface_hub import HfApi

        HfApi().model_info(name, timeout=10)
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means we cannot fetch it
        return (f"model {name} is not in the local Hugging Face cache and the hub cannot be "
                f"reached ({type(exc).__name__}); download it on a connected machine "
                f"(`huggingface-cli download {name}`) or point model.name_or_path at a folder")


def gpu_problem(cfg: StageConfig) -> str | None:
    if cfg.launch.device != "cuda":
        return None
    import torch

    if not torch.cuda.is_available():
        return "launch.device is 'cuda' but no CUDA GPU is visible (torch.cuda.is_available())"
    return None


def check(cfg: StageConfig, config_path: str) -> None:
    problems = [p for p in (gpu_problem(cfg), model_problem(cfg.model.name_or_path)) if p]
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise PreflightError(f"{config_path}: cannot start:\n{lines}\n{DEMO_HINT}")
