"""The memory plan: what each process of a config needs, per GPU, before anything starts.

``plan_memory(cfg)`` returns a :class:`MemoryPlan`: the vLLM worker's and the learner rank's
estimates as named terms (launch/planning/memory_terms.py has each term's formula), the GPUs they share
and what is left, and one line per problem naming the setting to change with the numbers.
``stonk plan`` and ``--dry-run`` print it; preflight refuses a config whose plan does not fit.
No torch at import: it is asked for the GPUs' memory only where an NVIDIA driver is present
and no figure was given. The model's shape and the prompt length come from
launch/planning/model_shape.py. Units: GiB (2^30 bytes; a "24 GB" card has 24 GiB as nvidia-smi
counts them).

Which memory: ``--gpu-memory`` (stonk plan) if given; else on a machine with GPUs each GPU's
total memory as torch.cuda reports it; else ``launch.gpu_memory_gb``, the card the config is
written for. On CPU (launch.device: cpu) every process shares the machine's RAM.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from launch.planning.memory_terms import (
    GIB,
    ProcessMemory,
    WorkerMemory,
    learner_memory,
    step_sequences,
    worker_memory,
)
from launch.planning.model_shape import Architecture, PromptLength, architecture, prompt_length
from trainer.config import ConfigError, StageConfig


@dataclass
class GpuGroup:
    """GPUs that hold the same processes (one colocated GPU, the workers' GPUs, ...)."""

    label: str  # "GPU 0", "GPUs 4-7" (each holds the processes), "RAM"
    capacity: float
    processes: list[ProcessMemory]

    @property
    def used(self) -> float:
        return sum(p.total for p in self.processes)


@dataclass
class MemoryPlan:
    arch: Architecture
    prompt: PromptLength
    seq: int
    capacity_from: str
    worker: WorkerMemory
    learner: ProcessMemory
    groups: list[GpuGroup]
    problems: list[str]

    @property
    def fits(self) -> bool:
        return not self.problems

    def render(self) -> str:
        a = self.arch
        lines = [f"model: {a.params / 1e6:,.0f}M parameters, {a.layers} layers, hidden "
                 f"{a.hidden}, vocabulary {a.vocab} ({a.source})",
                 f"prompt: {self.prompt.tokens} tokens ({self.prompt.how}); sequence "
                 f"{self.prompt.tokens} + rollout.max_tokens {self.seq - self.prompt.tokens}"
                 f" = {self.seq} tokens",
                 f"memory: {self.capacity_from}"]
        for g in self.groups:
            kinds = list({id(p): p for p in g.processes}.values())  # identical ones once
            count = {id(p): sum(q is p for q in g.processes) for p in kinds}
            each = " each" if "GPUs " in g.label else ""
            lines.append(f"{g.label} ({g.capacity / GIB:.1f} GiB{each}): " + " + ".join(
                f"{count[id(p)]} x {p.role}" if count[id(p)] > 1 else p.role for p in kinds))
            for p in kinds:
                each = " each" if count[id(p)] > 1 else ""
                lines.append(f"  {p.role:<34}{p.total_gib:7.2f} GiB{each}")
                lines += [f"    {t.name:<32}{t.bytes / GIB:7.2f}   {t.how}" for t in p.terms]
                lines += [f"    {n}" for n in p.notes]
            verdict = "fits" if g.used <= g.capacity else "does NOT fit"
            lines.append(f"  total {g.used / GIB:.2f} of {g.capacity / GIB:.1f} GiB: {verdict} "
                         f"({(g.capacity - g.used) / GIB:+.2f} GiB)")
        lines.append("problems: none" if self.fits else "problems:")
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


def _gpus_visible() -> bool:
    """Cheap: an NVIDIA driver is here (so asking torch is worth its import time)."""
    import os

    return os.path.exists("/dev/nvidiactl") or os.path.exists("/proc/driver/nvidia/gpus")


def device_memory(cfg: StageConfig, gpu_memory_gb: float | None = None):
    """(memory of GPU i in bytes, where that figure comes from); on CPU, the RAM."""
    if gpu_memory_gb:
        return (lambda i: gpu_memory_gb * GIB), f"{gpu_memory_gb:g} GiB per GPU (--gpu-memory)"
    if cfg.launch.device == "cpu":
        import psutil

        ram = psutil.virtual_memory().total
        return (lambda i: ram), f"this machine's RAM, {ram / GIB:.1f} GiB, shared by all"
    if _gpus_visible():
        import torch

        if torch.cuda.is_available():
            sizes = [torch.cuda.get_device_properties(i).total_memory
                     for i in range(torch.cuda.device_count())]
            listed = ", ".join(f"{s / GIB:.1f}" for s in sizes)
            # a GPU the config names but this machine lacks: gpu_problem refuses that
            return ((lambda i: sizes[i] if i < len(sizes) else min(sizes)),
                    f"this machine's GPUs (torch.cuda): {listed} GiB")
    if cfg.launch.gpu_memory_gb > 0:
        gb = cfg.launch.gpu_memory_gb
        return (lambda i: gb * GIB), f"{gb:g} GiB per GPU (launch.gpu_memory_gb, no GPU here)"
    raise ConfigError("launch.gpu_memory_gb: 0 asks the GPU, but no GPU is visible here; name "
                      "the card's memory in GiB (launch.gpu_memory_gb, or stonk plan "
                      "--gpu-memory GB)")


def _placement(cfg: StageConfig) -> dict[str, list[str]]:
    """GPU label -> roles on it. Overlapping lists without launch.colocate are different
    nodes (Slurm worker and learner nodes)."""
    la, rc = cfg.launch, cfg.rollout
    tp = rc.tensor_parallel_size
    wg = la.worker_gpus or list(range(rc.num_workers * tp))
    lg = la.learner_gpus or list(range(0 if la.colocate else len(wg),
                                       (0 if la.colocate else len(wg)) + la.num_processes))
    nodes = not la.colocate and bool(set(wg) & set(lg))
    roles: dict[str, list[str]] = {}
    for gpu in wg[:rc.num_workers * tp]:
        roles.setdefault(f"{'worker node ' if nodes else ''}GPU {gpu}", []).append("worker")
    for gpu in lg[:la.num_processes]:
        roles.setdefault(f"{'learner node ' if nodes else ''}GPU {gpu}", []).append("learner")
    return roles


def _with(cfg: StageConfig, **train) -> StageConfig:
    out = copy.deepcopy(cfg)
    for key, value in train.items():
        setattr(out.train, key, value)
    return out


def _learner_problem(cfg: StageConfig, arch: Architecture, prompt: int, need: ProcessMemory,
                     avail: float, where: str) -> str:
    """The one line for a learner rank that does not fit in ``avail`` bytes."""
    tc = cfg.train
    ways = []
    per_rank = tc.prompts_per_rank * cfg.rollout.group_size
    fits = [m for m in range(tc.micro_batch_size - 1, 0, -1) if per_rank % m == 0
            and learner_memory(arch, _with(cfg, micro_batch_size=m), prompt).total <= avail]
    if fits:
        ways.append(f"lower train.micro_batch_size to {fits[0]}")
    if not tc.gradient_checkpointing:
        gc = learner_memory(arch, _with(cfg, gradient_checkpointing=True), prompt).total
        ways.append(f"set train.gradient_checkpointing: true ({gc / GIB:.2f} GiB)")
    if need.get("logits") > 0.25 * need.total and tc.logits_chunk_tokens != 256:
        small = learner_memory(arch, _with(cfg, logits_chunk_tokens=256), prompt).total
        ways.append(f"lower train.logits_chunk_tokens to 256 ({small / GIB:.2f} GiB)")
    if not fits:
        ways.append(f"lower rollout.max_tokens ({cfg.rollout.max_tokens})")
    if not cfg.model.load_in_4bit:
        ways.append("set model.load_in_4bit: true")
    biggest = max(("activations", "logits", "base weights"), key=need.get)
    setting = {"activations": "train.micro_batch_size", "logits": "train.logits_chunk_tokens",
               "base weights": "model.load_in_4bit"}[biggest]
    parts = ", ".join(f"{t.name} {t.bytes / GIB:.2f}" for t in need.terms if t.bytes > 0.05 * GIB)
    return (f"{setting}: the learner rank on {where} needs {need.total / GIB:.2f} GiB ({parts}; "
            f"micro_batch_size {tc.micro_batch_size} x {prompt + cfg.rollout.max_tokens} "
            f"tokens) but {avail / GIB:.2f} GiB is there; " + ", or ".join(ways))


def _worker_problem(cfg: StageConfig, w: WorkerMemory, capacity: float, where: str) -> str | None:
    rc = cfg.rollout
    fixed = w.share - w.kv_available  # weights, profiling peak, workspaces, graphs
    if w.kv_available >= max(w.kv_needed, w.kv_min):
        if w.share + w.get("CUDA context") <= capacity:
            return None
        top = (capacity - w.get("CUDA context")) / capacity
        return (f"rollout.gpu_memory_utilization: {rc.gpu_memory_utilization} x "
                f"{capacity / GIB:.1f} GiB + the CUDA context is more than {where} has; use "
                f"at most {top:.2f}")
    want = (fixed + max(w.kv_needed, w.kv_min)) / capacity
    short = ("less than one model.max_model_len sequence, so vLLM will not start"
             if w.kv_available < w.kv_min else
             f"one step needs {w.kv_needed / GIB:.2f} GiB ({w.step_tokens} tokens: "
             f"{step_sequences(cfg)} sequences of {w.step_tokens // step_sequences(cfg)} in "
             f"16-token blocks)")
    return (f"rollout.gpu_memory_utilization: the worker on {where} gets "
            f"{rc.gpu_memory_utilization} x {capacity / GIB:.1f} = {w.share / GIB:.2f} GiB; "
            f"weights and overheads take {fixed / GIB:.2f}, leaving "
            f"{max(w.kv_available, 0) / GIB:.2f} GiB of KV cache, {short}; raise it to "
            f"{want:.2f}, or lower rollout.max_tokens ({rc.max_tokens}), "
            f"train.prompts_per_rank ({cfg.train.prompts_per_rank}) or rollout.group_size "
            f"({rc.group_size})")


def _label(labels: list[str]) -> str:
    """"GPU 4" / "GPUs 0-3" / "worker node GPUs 0-7" for the GPUs ``labels`` name."""
    if len(labels) == 1:
        return labels[0]
    ids = [int(x.rsplit(" ", 1)[1]) for x in labels]
    runs: list[list[int]] = []
    for i in ids:
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    text = ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)
    return f"{labels[0].rsplit('GPU ', 1)[0]}GPUs {text}"


def plan_memory(cfg: StageConfig, gpu_memory_gb: float | None = None,
                prompt: PromptLength | None = None) -> MemoryPlan:
    """The memory plan of ``cfg`` (module doc); ConfigError when the model is unknown or no
    memory figure is to be had."""
    arch = architecture(cfg.model.name_or_path)
    prompt = prompt or prompt_length(cfg)
    capacity, source = device_memory(cfg, gpu_memory_gb)
    learner = learner_memory(arch, cfg, prompt.tokens)
    problems: list[str] = []
    if cfg.launch.device == "cpu":
        ram = capacity(0)
        worker = worker_memory(arch, cfg, prompt.tokens, ram)
        procs = [worker] * cfg.rollout.num_workers + [learner] * cfg.launch.num_processes
        groups = [GpuGroup("RAM", ram, procs)]
        if groups[0].used > ram:
            problems.append(f"rollout.gpu_memory_utilization: the workers' KV cache and every "
                            f"process together need {groups[0].used / GIB:.1f} GiB of "
                            f"{ram / GIB:.1f} GiB RAM; lower it, rollout.num_workers or "
                            f"launch.num_processes")
        return MemoryPlan(arch, prompt, prompt.tokens + cfg.rollout.max_tokens, source,
                          worker, learner, groups, problems)
    same: dict[tuple, list[str]] = {}
    for label, roles in _placement(cfg).items():
        same.setdefault((tuple(roles), capacity(int(label.rsplit(" ", 1)[1]))), []).append(label)
    groups, worker = [], None
    for (roles, size), labels in same.items():
        where = _label(labels)
        procs = []
        if "worker" in roles:
            worker = worker_memory(arch, cfg, prompt.tokens, size)
            procs.append(worker)
            if line := _worker_problem(cfg, worker, size, where):
                problems.append(line)
        if "learner" in roles:
            procs.append(learner)
            avail = size - sum(p.total for p in procs[:-1])
            if learner.total > avail:
                problems.append(_learner_problem(cfg, arch, prompt.tokens, learner, avail, where))
        groups.append(GpuGroup(where, size, procs))
    worker = worker or worker_memory(arch, cfg, prompt.tokens, capacity(0))
    return MemoryPlan(arch, prompt, prompt.tokens + cfg.rollout.max_tokens, source, worker,
                      learner, groups, problems)


def describe(cfg: StageConfig, gpu_memory_gb: float | None = None) -> str:
    """The plan as text for ``--dry-run``; a line saying why when there is none."""
    try:
        return "memory plan:\n" + plan_memory(cfg, gpu_memory_gb).render()
    except ConfigError as exc:
        return f"memory plan: none ({exc})"
