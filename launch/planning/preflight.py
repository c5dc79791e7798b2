"""Checks that run before anything heavy starts, in the user's terms, with the way out.

Are the model and the data there, are there enough GPUs for the listed indices, do they
support the configured precision (bf16 needs compute capability 8.0), is 4-bit possible, does the model need custom code the config did not allow, does the workers' KV
cache fit in this machine's free RAM (CPU), does the memory plan fit (launch/planning/memory.py: each
GPU's workers and learner ranks against its memory, this machine's GPUs or else the card
the config names)? All problems are reported together. The demo
config runs on this machine with the embedded model.

Also the translation of resource errors that happen later into settings to change: a vLLM
worker that fails to start for lack of memory (``worker_failure_hint``), a learner out of
GPU memory (trainer/learner.py ``OutOfMemory``).
"""

from __future__ import annotations

import importlib.util
import json
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
                f"shipped: `git checkout models/` restores them)")
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


def gpu_problem(cfg: StageConfig, count: int | None = None) -> str | None:
    """None on CPU or when every GPU the plan names exists; ``count``: visible GPUs."""
    if cfg.launch.device != "cuda":
        return None
    if count is None:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        return ("launch.device is 'cuda' but no CUDA GPU is visible (torch.cuda.is_available() "
                f"is false, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')!r})")
    la, rc = cfg.launch, cfg.rollout
    listed = sorted(set(la.worker_gpus) | set(la.learner_gpus))
    missing = [i for i in listed if i >= count]
    if missing:
        return (f"launch.worker_gpus {la.worker_gpus} / launch.learner_gpus {la.learner_gpus}: "
                f"GPU(s) {missing} do not exist, {count} are visible (0-{count - 1}); list only "
                f"those, or lower rollout.num_workers ({rc.num_workers}) / "
                f"launch.num_processes ({la.num_processes})")
    want = rc.num_workers * rc.tensor_parallel_size
    if not listed and want > count:
        return (f"rollout.num_workers ({rc.num_workers}) x rollout.tensor_parallel_size "
                f"({rc.tensor_parallel_size}) = {want} GPUs, but {count} are visible")
    return None


def precision_problem(cfg: StageConfig,
                      gpus: dict[int, tuple[str, tuple[int, int]]] | None = None) -> str | None:
    """bfloat16 (model.dtype for the learner, rollout.dtype for the workers) needs compute
    capability 8.0 (Ampere) or newer: vLLM refuses it below, and the learner's bf16 would be
    emulated. ``gpus``: visible GPU index -> (name, capability); None asks torch."""
    if cfg.launch.device != "cuda":
        return None
    fields = [f"{k}: bfloat16" for k, v in (("model.dtype", cfg.model.dtype),
                                           ("rollout.dtype", cfg.rollout.dtype))
              if v == "bfloat16"]
    if not fields:
        return None
    if gpus is None:
        import torch

        if not torch.cuda.is_available():
            return None  # gpu_problem says so
        gpus = {i: (torch.cuda.get_device_name(i), torch.cuda.get_device_capability(i))
                for i in range(torch.cuda.device_count())}
    la = cfg.launch
    used = sorted(set(la.worker_gpus) | set(la.learner_gpus)) or sorted(gpus)
    old = [(i, *gpus[i]) for i in used if i in gpus and tuple(gpus[i][1]) < (8, 0)]
    if not old:
        return None
    i, name, (major, minor) = old[0]
    return (f"{' and '.join(fields)}: bfloat16 needs a GPU of compute capability 8.0 or newer, "
            f"GPU {i} ({name}) has {major}.{minor}; use float16: set model.dtype: float16 and "
            f"rollout.dtype: float16 (configs/stage1_11gb.yaml does)")


def quantization_problem(cfg: StageConfig) -> str | None:
    if cfg.model.load_in_4bit and importlib.util.find_spec("bitsandbytes") is None:
        return ("model.load_in_4bit: true needs bitsandbytes, which is not installed: "
                "`pip install bitsandbytes`, or set model.load_in_4bit: false")
    return None


def tracker_problem(cfg: StageConfig) -> str | None:
    from trainer.trackers import missing_packages

    if missing := missing_packages(cfg.run.report_to):
        return (f"run.report_to: {', '.join(cfg.run.report_to)} needs {', '.join(missing)}, "
                f"which is not installed: `pip install {' '.join(missing)}`, or leave it out")
    return None


def remote_code_problem(cfg: StageConfig) -> str | None:
    """A local model whose config asks for custom code runs it only when the config says so."""
    config = Path(cfg.model.name_or_path) / "config.json"
    if cfg.model.trust_remote_code or not config.is_file():
        return None
    try:
        auto_map = json.loads(config.read_text()).get("auto_map")
    except (OSError, ValueError):
        return None
    if auto_map:
        return (f"model {cfg.model.name_or_path} ships its own Python code (config.json "
                f"auto_map); it only runs with model.trust_remote_code: true, which you should "
                f"set only for code you trust")
    return None


def cpu_memory_problem(cfg: StageConfig, total: int | None = None,
                       available: int | None = None) -> str | None:
    """On CPU, vLLM reserves rollout.gpu_memory_utilization of the RAM per worker for its KV
    cache and refuses to start when that is not free (its own check, made here first)."""
    if cfg.launch.device != "cpu":
        return None
    if total is None or available is None:
        import psutil

        mem = psutil.virtual_memory()
        total, available = mem.total, mem.available
    rc, gib = cfg.rollout, 2**30
    per = rc.gpu_memory_utilization * total
    if per <= available:
        return None
    return (f"rollout.gpu_memory_utilization: {rc.gpu_memory_utilization} of this machine's "
            f"{total / gib:.1f} GiB RAM is {per / gib:.1f} GiB of KV cache for each of "
            f"rollout.num_workers={rc.num_workers} vLLM worker(s), but {available / gib:.1f} GiB "
            f"is free; lower rollout.gpu_memory_utilization (configs/demo/stage1.yaml uses "
            f"0.15), or free memory")


def memory_problems(cfg: StageConfig, gpu_memory_gb: float | None = None) -> list[str]:
    """The memory plan's problems, one line each naming the setting to change. Nothing when
    there is no plan to make: the model is missing, or no GPU and no card named (the model
    and GPU checks say so)."""
    from launch.planning.memory import plan_memory
    from trainer.config import ConfigError

    try:
        return plan_memory(cfg, gpu_memory_gb).problems
    except ConfigError:
        return []


def data_problem(cfg: StageConfig) -> str | None:
    """What the task's data check says before anything starts (``TaskEntry.preflight``)."""
    from trainer.tasks.registry import task_entry

    check = task_entry(cfg.task).preflight
    return check(cfg) if check is not None else None


def worker_failure_hint(text: str, cfg: StageConfig) -> str | None:
    """The settings to change when a vLLM worker failed for lack of memory (its log in
    ``text``); None for other failures."""
    rc, mm = cfg.rollout, cfg.model
    now = (f"rollout.gpu_memory_utilization={rc.gpu_memory_utilization}, "
           f"model.max_model_len={mm.max_model_len}, rollout.num_workers={rc.num_workers}")
    if "less than desired GPU memory utilization" in text:
        return (f"the GPU did not have the worker's share free when it started (the learner "
                f"or another process holds it): lower rollout.gpu_memory_utilization, free "
                f"that GPU, or give the worker a GPU of its own (launch.worker_gpus, "
                f"launch.colocate={cfg.launch.colocate}) ({now})")
    if "less than desired CPU memory utilization" in text:
        return (f"the worker could not reserve its KV cache in RAM: lower "
                f"rollout.gpu_memory_utilization or rollout.num_workers ({now})")
    if "is less than requested memory for kv" in text:
        return (f"the worker's share of RAM does not fit its KV cache: "
                f"rollout.gpu_memory_utilization must cover the model, its activations and at "
                f"least one model.max_model_len sequence, and stay below the free RAM ({now})")
    if ("No available memory for the cache blocks" in text
            or "larger than the available KV cache memory" in text):
        return (f"the worker's KV cache cannot hold one sequence of model.max_model_len: raise "
                f"rollout.gpu_memory_utilization or lower model.max_model_len ({now})")
    if "out of memory" in text.lower() or "OutOfMemoryError" in text:
        return (f"the worker ran out of GPU memory loading the model: lower "
                f"rollout.gpu_memory_utilization, give it more GPUs "
                f"(rollout.tensor_parallel_size={rc.tensor_parallel_size}), or move the "
                f"learner off its GPU (launch.colocate={cfg.launch.colocate}) ({now})")
    return None


def check(cfg: StageConfig, config_path: str) -> None:
    checks = (gpu_problem(cfg), precision_problem(cfg), model_problem(cfg.model.name_or_path),
              remote_code_problem(cfg), quantization_problem(cfg), cpu_memory_problem(cfg),
              data_problem(cfg), tracker_problem(cfg))
    problems = [p for p in checks if p] + memory_problems(cfg)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise PreflightError(f"{config_path}: cannot start:\n{lines}\n{DEMO_HINT}")
