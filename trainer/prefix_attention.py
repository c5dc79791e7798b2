"""Attention for the shared-prefix layout by blocks: only the pairs its mask allows.

With the dense 4-D mask (trainer/shared_prefix.py) SDPA computes every (query, key) pair of a
packed row and masks most of them out: a row of a 222-token prompt and 8 completions of ~74
computes 814^2 pairs where the layout allows ~180k (27 %). Here each packed row is two
SDPA calls: the prompt, causal over itself; then its completions as one batch, each
completion's queries over [the prompt's keys, its own keys] with a causal mask on its own
part (completions padded to the row's longest). That is P^2/2 + G x R x (P + R) pairs, no
[L, L] mask in memory, the same outputs up to float rounding.

Wiring: the model's attention is switched to :data:`NAME` (registered with transformers'
``AttentionInterface``, and for its masks the same mask function as ``sdpa``) where it was
``sdpa``. A forward in the layout passes ``prefix_segments=`` (a :class:`Segments`) and no
mask; transformers hands that keyword to every attention call (and a checkpointed layer
recomputes with it), where :func:`attention` computes the blocks. Any other forward (one row
per completion, the first-micro-batch check's reference) carries no segments and goes to
``sdpa`` as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

NAME = "stonk_prefix_blocks"


@dataclass(frozen=True)
class Segments:
    """Where each packed row's parts lie: its prompt's length, and each completion's
    (first column, length), in column order."""

    prompts: tuple[int, ...]
    completions: tuple[tuple[tuple[int, int], ...], ...]


def _repeat_heads(t: torch.Tensor, n: int) -> torch.Tensor:
    """[G, KV, S, D] -> [G, KV * n, S, D], head h reading KV head h // n."""
    g, kv, s, d = t.shape
    return t[:, :, None].expand(g, kv, n, s, d).reshape(g, kv * n, s, d)


def _causal(n: int, device) -> torch.Tensor:
    """[n, n] bool: query i may read key j <= i."""
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()


def _row(query, key, value, p: int, comps, scaling, dropout: float, gqa: bool):
    """One packed row ([H, L, D] query, [KV, L, D] key and value): its output [H, L, D]."""
    kw = {"scale": scaling, "dropout_p": dropout, "enable_gqa": gqa}
    parts = [F.scaled_dot_product_attention(query[None, :, :p], key[None, :, :p],
                                            value[None, :, :p], is_causal=True, **kw)[0]]
    end = p
    if comps:
        r = max(m for _, m in comps)
        # each completion's columns, padded to r by repeating its last one (those rows'
        # outputs are dropped)
        cols = torch.tensor([[c + min(j, m - 1) for j in range(r)] for c, m in comps],
                            device=query.device)
        g = len(comps)
        q = query[:, cols].transpose(0, 1)  # [G, H, r, D]
        k = torch.cat([key[None, :, :p].expand(g, -1, -1, -1), key[:, cols].transpose(0, 1)], 2)
        v = torch.cat([value[None, :, :p].expand(g, -1, -1, -1),
                       value[:, cols].transpose(0, 1)], 2)
        # [r, p + r], one for every completion: the prompt, then its own tokens causally. A
        # shorter completion's padded keys come after its last real query: never read
        mask = torch.cat([torch.ones(r, p, dtype=torch.bool, device=query.device),
                          _causal(r, query.device)], 1)
        if gqa:  # CUDA's fused kernels take grouped heads only without a mask: repeat them
            k, v = (_repeat_heads(t, query.shape[0] // key.shape[0]) for t in (k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                             **{**kw, "enable_gqa": False})  # [G, H, r, D]
        for i, (_, m) in enumerate(comps):
            parts.append(out[i, :, :m])
        end = comps[-1][0] + comps[-1][1]
    if end < query.shape[1]:  # padding: no query of the row reads it
        parts.append(query.new_zeros(query.shape[0], query.shape[1] - end, query.shape[2]))
    return torch.cat(parts, 1)


def attention(module, query, key, value, attention_mask, dropout: float = 0.0,
              scaling: float | None = None, prefix_segments: Segments | None = None,
              **kwargs):
    """transformers' attention signature: query [B, H, L, D], key and value [B, KV, L, D];
    returns ([B, L, H, D], None). Without ``prefix_segments``: ``sdpa``'s."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if prefix_segments is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      dropout=dropout, scaling=scaling, **kwargs)
    seg = prefix_segments
    if len(seg.prompts) != query.shape[0]:
        raise ValueError(f"prefix_segments describe {len(seg.prompts)} packed rows; the "
                         f"batch has {query.shape[0]}")
    drop = dropout if module.training else 0.0
    gqa = key.shape[1] != query.shape[1]
    out = torch.stack([_row(query[b], key[b], value[b], seg.prompts[b], seg.completions[b],
                            scaling, drop, gqa) for b in range(query.shape[0])])
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Make :data:`NAME` known to transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(NAME, attention)
    AttentionMaskInterface.register(NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


def use_blocks(model) -> bool:
    """Switch a transformers model whose attention is ``sdpa`` to :data:`NAME`; whether its
    attention is now :data:`NAME`."""
    impl = getattr(model.config, "_attn_implementation", None)
    if impl == "sdpa":
        register()
        model.set_attn_implementation(NAME)
    return getattr(model.config, "_attn_implementation", None) == NAME
