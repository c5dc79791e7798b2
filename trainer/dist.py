"""Rank/world and every cross-rank collective of the learner (the only module that calls
``torch.distributed``'s collectives; a test holds that).

Two rules, both invisible on a CPU run:
- The world size comes from the process group: on CPU ``Accelerator().num_processes`` can
  say 1 while the group has 2 ranks.
- Every tensor handed to a collective lives on the learner's device. On CUDA, accelerate
  starts the group with NCCL, which takes CUDA tensors only; gloo (CPU) takes anything, so
  a CPU run cannot show the mistake. The helpers therefore take the device explicitly,
  build their tensor there and read the result back on the host.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    if initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce of ``t`` (a no-op without a process group; with one rank it still
    runs, so a one-GPU run meets NCCL's rules as a node does); returns ``t``."""
    if initialized():
        dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN}[op])
    return t


def mean_across_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """The mean of each value over every rank (same keys on every rank). float64, so step
    counters and sums keep their integer parts."""
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    if initialized():
        all_reduce_(t)
        t /= dist.get_world_size()
    return dict(zip(keys, t.cpu().tolist(), strict=True))


def all_ranks_ok(ok: bool, device: torch.device) -> bool:
    """True when ``ok`` holds on every rank (a collective: every rank must call it)."""
    if not initialized():
        return ok
    flag = torch.tensor([1 if ok else 0], dtype=torch.int32, device=device)
    all_reduce_(flag, op="min")
    return bool(flag.item())
