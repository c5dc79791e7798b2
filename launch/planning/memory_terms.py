"""What one vLLM worker and one learner rank hold at their peak, as named terms in bytes:
the estimators behind the memory plan (launch/planning/memory.py). Pure arithmetic, no torch.

S = longest prompt + rollout.max_tokens (every completion may run to the limit), H hidden,
I intermediate, L layers, nh heads, kv = KV heads x head_dim, V vocabulary, r = lora.r,
b = bytes of model.dtype.

Worker (vLLM), per worker process, on its GPU(s):
- CUDA context: 0.5 GiB, outside vLLM's share (vLLM measures free memory after creating it).
- share = rollout.gpu_memory_utilization x GPU memory; vLLM takes all of it, in this order:
  weights (params x rollout.dtype bytes, "auto" = the checkpoint's dtype; 4-bit is the
  learner's only: workers serve the full-precision base) / tensor_parallel_size; LoRA slots
  (max_loras 1 x r x (in + out) of every projection vLLM can adapt, all layers); the
  profiling peak (max_num_batched_tokens x (3I + 4H) x b for the MLP and attention, plus
  the sampler's max_num_seqs x V float32 logits, three copies; 2048 tokens and 256
  sequences below 70 GiB, 8192 and 1024 above); 0.25 GiB not held by torch
  (cuBLAS and attention workspaces); CUDA graphs 0.5 GiB unless rollout.enforce_eager (an
  allowance: vLLM reports 0.1-0.6 GiB for 0.5B-7B models); the KV cache gets the rest.
- KV needed for one step = (train.prompts_per_rank x learner ranks / rollout.num_workers)
  x rollout.group_size sequences x S tokens (rounded up to 16-token blocks) x
  2 x L x kv x b bytes per token. Fits when the rest holds it.
- On CPU vLLM reserves the share of RAM for the KV cache alone; the weights and a 1.3 GiB
  runtime (Python, torch, vLLM; BENCHMARKS.md section 5) come on top.

Learner rank:
- CUDA context and cuBLAS workspace: 0.5 GiB (on CPU: the 1.3 GiB runtime, section 5).
- base weights: with model.load_in_4bit the decoder's projections in nf4 with double
  quantization, 0.5 + 1/64 + 4/16384 bytes per parameter (4-bit codes, an 8-bit absmax per
  64, a float32 absmax per 256 of those); the rest (embeddings, norms, biases, an untied
  head) in float32 (prepare_model_for_kbit_training upcasts it), or in b where DeepSpeed
  runs bf16/fp16 (it casts every float parameter to that dtype); without 4-bit, b per param.
- LoRA: r x (in + out) per adapted projection and layer; weights (float32, or b under
  DeepSpeed bf16/fp16), their gradients (same), and under DeepSpeed a float32 master copy,
  its gradient and AdamW's two moments partitioned over the ranks (ZeRO-2); plain AdamW
  without DeepSpeed: weights, grads and two moments, float32.
- ZeRO-2 gradient bucket: reduce_bucket_size elements of the gradient dtype, two with
  overlap_comm (DeepSpeed allocates it whole; ds_config.json, or launch.ds_config).
- activations kept for the backward, per micro-batch of train.micro_batch_size x S tokens
  (with train.anchor_coef or balance_coef > 0, plus its share of the anchor answers,
  prompts_per_rank / micro-batches of S tokens; of max_tokens each with the shared prefix,
  where each is one more completion in its group's packed row): per layer and token
  4(2H + nh + 2) + b(3H + 3I + 2kv + 4r) bytes (float32 RMSNorm inputs and attention
  log-sum-exps; the rest in b: the frozen base keeps no inputs of its own, each LoRA A
  keeps its input, the MLP keeps gate, up and SiLU); an adapted MLP projection keeps its
  input too; with lora.dropout each adapted projection keeps a copy of its input and a mask
  (float32 on CPU, bool on CUDA); after the decoder (4H + bH) per token (the final norm's
  input, the kept hidden states). With train.gradient_checkpointing: b x H per layer and
  token (each layer's input) + one layer's set, recomputed in the backward. Checked against
  autograd's saved tensors in tests/launch/test_memory_plan.py.
  With train.shared_prefix (auto counts as on) a micro-batch forwards each prompt once: its
  rows that share a prompt are one packed row of P + (their number) x R tokens, so it holds
  (packed rows) x P + micro_batch_size x R tokens. Its attention runs by blocks (sdpa models,
  trainer/prefix_attention.py): per packed row of C completions each layer keeps the
  completions' queries gathered (b x H x C x R) and the keys and values each completion reads,
  heads repeated (2 x b x H x C x (P + R)); for one layer with gradient checkpointing, every
  layer without. (An eager model takes the dense mask instead: b per (query, key) pair of
  each packed row, once for every layer; the plan counts the blocks.)
- logits: the output head scores K = train.logits_chunk_tokens completion positions at a
  time (0: the whole micro-batch, with the shared prefix its anchor answers too); the peak,
  in a chunk's backward, is five float32 [K, V] tensors (the recomputed logits,
  exp(logits - logsumexp) and its product with the gradient, the gather's scattered
  gradient, their sum; the forward's entropy holds four).
- backward working set: gradients through one layer, 2 x (H + I) x b per token.
The process's figure is the sum of its terms: the logits and backward peaks are counted on
top of all kept activations (they overlap them in time; the CPU benchmark, BENCHMARKS.md
section 8, measures the whole).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from launch.planning.model_shape import Architecture
from trainer.config import StageConfig

GIB = 2**30
DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2}
CUDA_CONTEXT = 0.5 * GIB
CPU_RUNTIME = 1.3 * GIB
WORKER_NON_TORCH = 0.25 * GIB
CUDA_GRAPHS = 0.5 * GIB
NF4_BYTES = 0.5 + 1 / 64 + 4 / 16384
LOGITS_COPIES = 5  # float32 [chunk, vocab] tensors alive at the scoring's peak
KV_BLOCK = 16  # vLLM's KV cache block, in tokens
VLLM_ADAPTABLE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Term:
    name: str
    bytes: float
    how: str = ""  # the formula with this config's numbers


@dataclass
class ProcessMemory:
    """One process's estimate: the terms it holds at its peak, and notes to print."""

    role: str
    terms: list[Term]
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(t.bytes for t in self.terms)

    @property
    def total_gib(self) -> float:
        return self.total / GIB

    def get(self, name: str) -> float:
        return sum(t.bytes for t in self.terms if t.name == name)


@dataclass
class WorkerMemory(ProcessMemory):
    share: float = 0.0  # what vLLM reserves: utilization x GPU memory (CPU: of RAM)
    kv_available: float = 0.0  # the share's rest, for the KV cache
    kv_needed: float = 0.0  # one step's tokens
    kv_min: float = 0.0  # one max_model_len sequence: vLLM refuses to start below it
    step_tokens: int = 0
    kv_token_bytes: int = 0


def _b(dtype: str) -> int:
    return DTYPE_BYTES[dtype]


def step_sequences(cfg: StageConfig) -> int:
    """Sequences one worker generates per step: its share of every rank's prompts x G."""
    prompts = cfg.train.prompts_per_rank * cfg.launch.num_processes
    return math.ceil(prompts / cfg.rollout.num_workers) * cfg.rollout.group_size


def worker_memory(arch: Architecture, cfg: StageConfig, prompt: int,
                  device_bytes: float) -> WorkerMemory:
    """One vLLM worker on a GPU of ``device_bytes`` (on CPU: the machine's RAM)."""
    rc, tp = cfg.rollout, cfg.rollout.tensor_parallel_size
    b = _b(arch.dtype if rc.dtype == "auto" else rc.dtype)
    seqs, seq = step_sequences(cfg), prompt + rc.max_tokens
    per_token = 2 * arch.layers * arch.kv_dim * b // tp
    step_tokens = seqs * math.ceil(seq / KV_BLOCK) * KV_BLOCK
    share = rc.gpu_memory_utilization * device_bytes
    weights = Term("weights", arch.params * b / tp, f"{arch.params / 1e6:,.0f}M params x {b} B")
    if cfg.launch.device == "cpu":
        terms = [Term("runtime", CPU_RUNTIME, "Python, torch, vLLM"), weights,
                 Term("KV cache", share, f"{rc.gpu_memory_utilization} x RAM")]
        kv_available = share
    else:
        lora = arch.layers * cfg.lora.r * sum(a + c for m, (a, c) in arch.linear_shapes().items()
                                              if m in VLLM_ADAPTABLE) * b / tp
        # the OpenAI server's max_num_batched_tokens and max_num_seqs (vLLM's defaults by
        # card size; without chunked prefill the launcher asks for a whole sequence's worth)
        big = device_bytes >= 70 * GIB
        batch = (max(cfg.model.max_model_len, 2048) if rc.chunked_prefill is False
                 else 8192 if big else 2048)
        seqs_max = 1024 if big else 256
        act = (batch * (3 * arch.intermediate + 4 * arch.hidden) * b / tp
               + 3 * seqs_max * arch.vocab * 4)
        inside = [weights, Term("LoRA slots", lora, f"r {cfg.lora.r}, every projection"),
                  Term("profiling peak", act, f"{batch} tokens, sampler {seqs_max} x V"),
                  Term("non-torch", WORKER_NON_TORCH, "cuBLAS, attention workspaces")]
        if not rc.enforce_eager:
            inside.append(Term("CUDA graphs", CUDA_GRAPHS, "allowance"))
        kv_available = share - sum(t.bytes for t in inside)
        terms = [Term("CUDA context", CUDA_CONTEXT, "outside the share"), *inside,
                 Term("KV cache", max(kv_available, 0.0), "the rest of the share")]
    kv_needed = step_tokens * per_token
    w = WorkerMemory("worker", terms, share=share, kv_available=kv_available,
                     kv_needed=kv_needed, kv_min=cfg.model.max_model_len * per_token,
                     step_tokens=step_tokens, kv_token_bytes=per_token)
    w.notes.append(
        f"KV cache for one step: {seqs} sequences x {seq} tokens = {step_tokens} tokens x "
        f"{per_token / 1024:.0f} KiB = {kv_needed / GIB:.2f} GiB needed, "
        f"{max(kv_available, 0) / GIB:.2f} GiB there "
        f"({max(kv_available, 0) / max(kv_needed, 1):.1f}x)")
    return w


def _ds_bucket(cfg: StageConfig, grad_bytes: int) -> Term | None:
    """DeepSpeed ZeRO-2's contiguous gradient bucket(s), from the learner's DeepSpeed file."""
    import json
    from pathlib import Path

    la = cfg.launch
    name = la.ds_config if la.ds_config != "auto" else (
        "launch/accelerate/ds_zero3.json" if la.zero_stage == 3 else "ds_config.json")
    path = Path(name) if Path(name).is_absolute() else Path(__file__).parents[2] / name
    try:
        zero = json.loads(path.read_text()).get("zero_optimization", {})
    except (OSError, ValueError):
        return None
    if zero.get("stage") != 2 or not zero.get("contiguous_gradients", True):
        return None
    size = int(zero.get("reduce_bucket_size", 5e8))
    count = 2 if zero.get("overlap_comm") else 1
    return Term("ZeRO-2 gradient bucket", count * size * grad_bytes,
                f"{count} x reduce_bucket_size {size:.0e} x {grad_bytes} B")


def activation_bytes(arch: Architecture, cfg: StageConfig, tokens: int, b_res: int, b: int,
                     checkpointing: bool) -> float:
    """Bytes kept for the backward by a forward over ``tokens`` tokens (module doc)."""
    h, i, r, shapes = arch.hidden, arch.intermediate, cfg.lora.r, arch.linear_shapes()
    adapted = [m for m in cfg.lora.target_modules if m in shapes]
    layer = (4 * (2 * h + arch.heads + 2) + b_res * (3 * h + 2 * arch.kv_dim + len(adapted) * r)
             + b * 3 * i)
    if {"gate_proj", "up_proj"} & set(adapted):
        layer += b_res * h  # the second norm's output, kept for their LoRA A
    if "down_proj" in adapted:
        layer += b * i
    if cfg.lora.dropout > 0:  # a copy and a mask per adapted projection (float on CPU)
        mask = 1 if cfg.launch.device == "cuda" else 4
        layer += sum(shapes[m][0] for m in adapted) * (b_res + mask) - b_res * h
    after = 4 * h + b_res * h
    if checkpointing:
        return tokens * (arch.layers * b_res * h + after) + tokens * layer
    return tokens * (arch.layers * layer + after)


def micro_batch_tokens(cfg: StageConfig, prompt: int) -> tuple[int, int, int]:
    """(tokens a learner micro-batch forwards at most, its packed rows, the longest packed
    row): one row of prompt + max_tokens per completion, or with train.shared_prefix one
    packed row per group a micro-batch touches (rows 0 when off)."""
    tc, r = cfg.train, cfg.rollout.max_tokens
    micro, g = tc.micro_batch_size, cfg.rollout.group_size
    if tc.shared_prefix == "off":
        return micro * (prompt + r), 0, 0
    n_micro = max(1, tc.prompts_per_rank * g // micro)
    # micro-batch k holds rows k*micro .. (k+1)*micro - 1: the groups it touches
    rows = max(((k + 1) * micro - 1) // g - (k * micro) // g + 1 for k in range(n_micro))
    return rows * prompt + micro * r, rows, prompt + min(micro, g) * r


def learner_memory(arch: Architecture, cfg: StageConfig, prompt: int,
                   deepspeed: bool = True, world: int | None = None) -> ProcessMemory:
    """One learner rank (module doc); ``deepspeed``: under DeepSpeed as launched (the CPU
    benchmark runs plain AdamW under Accelerate); ``world``: ZeRO-2 ranks."""
    tc, mc = cfg.train, cfg.model
    world = world or cfg.launch.num_processes
    cuda = cfg.launch.device == "cuda"
    b = _b(mc.dtype)
    mixed = deepspeed and cuda and b == 2  # DeepSpeed casts float params to bf16/fp16
    other_b = b if mixed or not mc.load_in_4bit else 4
    terms = [Term("CUDA context", CUDA_CONTEXT, "and cuBLAS workspace") if cuda
             else Term("runtime", CPU_RUNTIME, "Python, torch, DeepSpeed")]
    if mc.load_in_4bit:
        base = arch.linear_params * NF4_BYTES + arch.other_params * other_b
        how = (f"{arch.linear_params / 1e6:,.0f}M in nf4 + {arch.other_params / 1e6:,.0f}M "
               f"x {other_b} B")
    else:
        base, how = arch.params * b, f"{arch.params / 1e6:,.0f}M params x {b} B"
    terms.append(Term("base weights", base, how))
    shapes = arch.linear_shapes()
    lora = arch.layers * cfg.lora.r * sum(sum(shapes[m]) for m in cfg.lora.target_modules
                                          if m in shapes)
    lora_b = b if mixed else 4
    per_param = 2 * lora_b + ((4 + 4 + 8) / world if deepspeed else 8)
    terms.append(Term("LoRA + AdamW", lora * per_param,
                      f"{lora / 1e6:.2f}M params x {per_param:.1f} B"))
    if deepspeed and (bucket := _ds_bucket(cfg, lora_b)):
        terms.append(bucket)
    seq = prompt + cfg.rollout.max_tokens
    tokens, rows, width = micro_batch_tokens(cfg, prompt)
    n_micro = tc.prompts_per_rank * cfg.rollout.group_size // tc.micro_batch_size
    anchors = (math.ceil(tc.prompts_per_rank / n_micro)
               if tc.anchor_coef > 0 or tc.balance_coef > 0 else 0)
    # the anchor's answers: under the shared prefix one more completion in their groups'
    # packed rows (trainer/joint.py), scored in the policy's pass; else a pass of their own
    tokens += anchors * (cfg.rollout.max_tokens if rows else seq)
    width += cfg.rollout.max_tokens if rows and anchors else 0
    b_res = b if mixed or not mc.load_in_4bit else 4
    acts = {gc: activation_bytes(arch, cfg, tokens, b_res, b, gc) for gc in (False, True)}
    gc = tc.gradient_checkpointing
    terms.append(Term("activations", acts[gc],
                      f"{tokens} tokens, gradient checkpointing {'on' if gc else 'off'}"))
    if rows:
        per_row = min(tc.micro_batch_size, cfg.rollout.group_size) + (1 if anchors else 0)
        r = cfg.rollout.max_tokens
        kept = 1 if gc else arch.layers
        blocks = kept * rows * b_res * arch.hidden * per_row * (r + 2 * (prompt + r))
        terms.append(Term("shared-prefix blocks", blocks,
                          f"{kept} layer(s) x {rows} packed row(s) x {per_row} completions: "
                          f"queries, and the keys and values each reads"))
    positions = (tc.micro_batch_size + (anchors if rows else 0)) * cfg.rollout.max_tokens
    chunk = min(tc.logits_chunk_tokens or positions, positions)
    terms.append(Term("logits", LOGITS_COPIES * chunk * arch.vocab * 4,
                      f"{LOGITS_COPIES} x {chunk} positions x {arch.vocab} x 4 B"))
    terms.append(Term("backward working set", 2 * tokens * (arch.hidden + arch.intermediate) * b,
                      "one layer's gradients"))
    p = ProcessMemory("learner rank", terms)
    layout = (f"shared prefix: {rows} packed row(s) of at most {width} tokens instead of "
              f"{tc.micro_batch_size} x {seq}" if rows else f"{tc.micro_batch_size} x {seq}")
    p.notes.append(f"activations: {acts[True] / GIB:.2f} GiB with gradient checkpointing, "
                   f"{acts[False] / GIB:.2f} GiB without (micro-batch of {tokens} tokens: "
                   f"{layout})")
    return p

