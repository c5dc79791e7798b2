"""The shared-prefix layout (``train.shared_prefix``): each group's prompt forwarded once.

The G completions of a group share one prompt, so the per-row layout (one row per
completion, prompt + completion) forwards and back-propagates that prompt G times in every
learner pass. Here the rows of a micro-batch that share a prompt (consecutive rows with equal
``prompt_ids``: a group, or the part of one a micro-batch holds) become one packed row::

    prompt p0..p3 | completion a: a0 a1 a2 | completion b: b0 b1 | padding

                  p0 p1 p2 p3 a0 a1 a2 b0 b1 .
        p0         x
        p1         x  x
        p2         x  x  x
        p3         x  x  x  x
        a0         x  x  x  x  x
        a1         x  x  x  x  x  x
        a2         x  x  x  x  x  x  x
        b0         x  x  x  x           x
        b1         x  x  x  x           x  x
        .                                   x   (padding sees itself: no empty row)

Each completion attends to the whole prompt and causally to itself, never to another
completion; its position ids continue from the prompt's end (P, P+1, ...), as if it stood
alone. So every hidden state equals the per-row layout's, and the gradients of the G
completions sum into the one prompt computation: the same forward outputs and gradients
(Prefix Grouper, arXiv 2506.05433) from P + sum(R_i) tokens instead of G * P + sum(R_i).

A model whose attention is ``sdpa`` computes the layout by blocks, only the pairs the
picture allows, from :attr:`Packed.segments` (trainer/prefix_attention.py). Otherwise the
mask goes to the model as a 4-D ``[B, 1, L, L]`` tensor, which transformers passes to the
attention as it is: additive (0 / the dtype's min) in the model's dtype, which SDPA and eager
both take. Not boolean: SDPA would convert a boolean mask to an additive one in every layer,
and autograd would keep each layer's copy for the backward (28 x L^2 x 2 bytes at Qwen2.5-1.5B's
shapes); the one additive tensor is kept once.
FlashAttention's varlen kernels cannot express "the prompt plus my own segment", and a
sliding-window layer would need the window in the mask: for those ``auto`` stays per-row.
A group that a micro-batch boundary cuts becomes one packed row in each micro-batch, each
with the prompt (``micro_batch_size`` a multiple of ``rollout.group_size`` avoids it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from trainer.prefix_attention import NAME as BLOCKS
from trainer.prefix_attention import Segments

SUPPORTED_ATTENTION = ("sdpa", "eager", BLOCKS)


@dataclass
class Packed:
    """A micro-batch in the shared-prefix layout: B packed rows of L tokens."""

    input_ids: torch.Tensor  # [B, L] long, pad_id after each row's last completion
    position_ids: torch.Tensor  # [B, L] long: prompt 0..P-1, each completion P, P+1, ...
    allowed: torch.Tensor  # [B, L, L] bool: query i may attend to key j
    # [n, T] long: for completion row r's token j, the flat index (b * L + column) of the
    # hidden state that predicts it (the prompt's last token for j = 0); -1 at padding
    source: torch.Tensor
    segments: Segments  # each row's prompt length and completions' columns (for the blocks)


def prompt_runs(prompt_ids: list[list[int]]) -> list[tuple[int, int]]:
    """[start, stop) of each run of consecutive rows with the same prompt, in row order."""
    runs, start = [], 0
    for i in range(1, len(prompt_ids) + 1):
        if i == len(prompt_ids) or prompt_ids[i] != prompt_ids[start]:
            runs.append((start, i))
            start = i
    return runs


def pack(prompt_ids: list[list[int]], completion_ids: torch.Tensor,
         completion_mask: torch.Tensor, pad_id: int, align: int = 8) -> Packed:
    """The shared-prefix layout of a batch whose completions are right padded (each row's
    ``completion_mask`` a run of ones from its first column). ``align``: the packed width
    is a multiple of it (CUDA's memory-efficient SDPA kernel wants the mask's last dimension
    aligned to 16 bytes, else it pads a copy of the mask in every layer)."""
    n, t = completion_ids.shape
    lengths = completion_mask.sum(1).long().tolist()
    for r, m in enumerate(lengths):
        if m and not bool(completion_mask[r, :m].all()):
            raise ValueError(f"row {r}: completion_mask is not a run of ones from column 0; "
                             f"the shared-prefix layout needs right-padded completions")
    runs = prompt_runs(prompt_ids)
    width = max(len(prompt_ids[a]) + sum(lengths[a:b]) for a, b in runs)
    width = -(-width // align) * align
    ids = torch.full((len(runs), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(runs), width), dtype=torch.long)
    allowed = torch.zeros((len(runs), width, width), dtype=torch.bool)
    source = torch.full((n, t), -1, dtype=torch.long)
    prompts, segments = [], []
    for b, (a, stop) in enumerate(runs):
        prompt = prompt_ids[a]
        p = len(prompt)
        if p == 0:
            raise ValueError(f"row {a}: an empty prompt; the shared-prefix layout needs one")
        ids[b, :p] = torch.tensor(prompt, dtype=torch.long)
        pos[b, :p] = torch.arange(p)
        allowed[b, :p, :p] = torch.ones(p, p, dtype=torch.bool).tril()
        col = p
        prompts.append(p)
        segments.append([])
        for r in range(a, stop):
            m = lengths[r]
            if m == 0:
                continue
            segments[-1].append((col, m))
            ids[b, col:col + m] = completion_ids[r, :m]
            pos[b, col:col + m] = torch.arange(p, p + m)
            allowed[b, col:col + m, :p] = True
            allowed[b, col:col + m, col:col + m] = torch.ones(m, m, dtype=torch.bool).tril()
            source[r, 0] = b * width + p - 1
            source[r, 1:m] = b * width + torch.arange(col, col + m - 1)
            col += m
        pad = torch.arange(col, width)
        allowed[b, pad, pad] = True
    return Packed(ids, pos, allowed, source,
                  Segments(tuple(prompts), tuple(tuple(x) for x in segments)))


def attention_mask(packed: Packed, dtype: torch.dtype,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """The additive ``[B, 1, L, L]`` mask (0: attend; the dtype's min: not), made on
    ``device`` (only the boolean layout crosses from the host)."""
    allowed = packed.allowed.to(device)
    out = torch.zeros((allowed.shape[0], 1, *allowed.shape[1:]), dtype=dtype, device=device)
    return out.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)


def unsupported(config) -> str | None:
    """Why a model with this transformers ``config`` cannot use the layout, or None."""
    impl = getattr(config, "_attn_implementation", None) or "eager"
    if impl not in SUPPORTED_ATTENTION:
        return (f"its attention is {impl!r}; the grouped mask needs one of "
                f"{', '.join(SUPPORTED_ATTENTION)}")
    if getattr(config, "use_sliding_window", False) or any(
            kind != "full_attention" for kind in getattr(config, "layer_types", None) or ()):
        return "it has sliding-window layers, which the grouped mask does not carry"
    return None


def mismatch(per_row: torch.Tensor, grouped: torch.Tensor, mask: torch.Tensor,
             dtype: torch.dtype) -> str | None:
    """Whether one group's log-probs, scored both ways, differ by more than ``dtype``'s
    rounding (float32: 1e-4 mean absolute; half precision: 0.05, where a wrong mask or wrong
    positions move them by tenths of a nat and more); a line saying by how much, or None."""
    m = mask.bool()
    diff = (per_row - grouped).abs()[m]
    if not diff.numel():
        return None
    tol = 1e-4 if dtype == torch.float32 else 0.05
    mean, worst = float(diff.mean()), float(diff.max())
    if mean <= tol and torch.isfinite(grouped[m]).all():
        return None
    return (f"mean |difference| {mean:.2e} nats (max {worst:.2e}) over {diff.numel()} tokens "
            f"against {tol:g} allowed")


def resolve(want: str, config, micro: int, group: int) -> tuple[bool, str]:
    """``train.shared_prefix`` (``want``) for a model with this transformers ``config``:
    (on, the run's line saying which and why). ``on`` where the attention cannot take the
    mask is a config error."""
    from trainer.config import ConfigError

    why = unsupported(config)
    if want == "on" and why:
        raise ConfigError(f"train.shared_prefix: on, but {why}; use auto or off")
    if want == "off" or why:
        return False, (f"off ({'train.shared_prefix: off' if want == 'off' else why}): one "
                       f"row per completion")
    cut = (f"; micro-batches of {micro} do not hold whole groups of {group}: a group's prompt "
           f"is forwarded once in each micro-batch it spans (a multiple of {group} avoids it)"
           if micro % group else "")
    return True, (f"on ({config._attn_implementation} attention): each group's prompt is "
                  f"forwarded once, its completions packed after it{cut}")


def check_layout(score: Callable[..., torch.Tensor], mask: torch.Tensor,
                 dtype: torch.dtype) -> str | None:
    """One group's log-probs both ways (``score(shared_prefix=...)``, no grad): why the
    layout cannot be trusted on this run (they differ, or its forward fails), or None."""
    with torch.no_grad():
        per_row = score(shared_prefix=False)
        try:
            grouped = score(shared_prefix=True)
        except RuntimeError as exc:  # e.g. a kernel that refuses the 4-D mask
            return f"its forward failed: {str(exc).strip().splitlines()[0][:200]}"
    return mismatch(per_row, grouped, mask, dtype)
