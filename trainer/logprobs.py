"""Token log-probs of sampled completions under the learner's model, without the
full-vocabulary tensor.

The naive way asks the model for logits at every completion position, ``[n, T, vocab]`` in
the model's dtype, then a float32 copy and a log-softmax of it: with Qwen2.5's 151,936-token
vocabulary that is ~1.9 GB per float32 copy at 8 x 384 tokens, held again by autograd for
the backward. Here the model runs with ``logits_to_keep=1`` while a forward hook keeps the
decoder's last hidden state ``[n, T, H]``; the output head then runs over at most
``chunk_tokens`` positions at a time, and under autograd each chunk is checkpointed, so only
the hidden states are kept for the backward and one chunk's logits are recomputed there. The
results equal the naive computation (``log_softmax`` of the float32 logits) to float32
rounding; tests/trainer/test_logprobs.py holds that, gradients included.

Assumes the head is the whole map from hidden state to logits (true of Qwen2 and the Llama
family; not of models that soft-cap their final logits), and that it is frozen (LoRA never
trains it). Under ZeRO-3 the head's weight is partitioned outside a module's forward: it is
gathered once per call and used as a plain tensor, because a checkpointed chunk recomputed in
the backward would otherwise find the released ``[0]``-shaped shard.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from trainer.prefix_attention import NAME as BLOCKS
from trainer.shared_prefix import attention_mask, pack
from trainer.types import RolloutBatch


def build_inputs(prompt_ids: list[list[int]], completion_ids: torch.Tensor,
                 completion_mask: torch.Tensor, pad_id: int):
    """Left-pad prompts so every completion starts at column P (the longest prompt).

    Returns input_ids [n, P+T], attention_mask [n, P+T], position_ids [n, P+T], P.
    Position ids count real tokens only, so they match what the worker used.
    """
    n, t = completion_ids.shape
    p = max(len(x) for x in prompt_ids)
    input_ids = torch.full((n, p + t), pad_id, dtype=torch.long)
    attn = torch.zeros((n, p + t), dtype=torch.long)
    for i, ids in enumerate(prompt_ids):
        input_ids[i, p - len(ids):p] = torch.tensor(ids, dtype=torch.long)
        attn[i, p - len(ids):p] = 1
    input_ids[:, p:] = completion_ids
    attn[:, p:] = completion_mask.long()
    position_ids = (attn.cumsum(dim=1) - 1).clamp(min=0)
    return input_ids, attn, position_ids, p


def _inner(model):
    """The transformers/peft model under DeepSpeed's engine or DDP (they keep it as .module)."""
    return getattr(model, "module", model)


def completion_hidden(model, batch: RolloutBatch, pad_id: int, device: torch.device,
                      shared_prefix: bool = False) -> torch.Tensor:
    """The decoder's last hidden state at each position that predicts a completion token:
    [n, T, H] (position j predicts completion token j). The forward goes through ``model``
    itself (DeepSpeed's engine included) and computes logits at one position only.
    ``shared_prefix``: the rows sharing a prompt are forwarded as one packed row
    (trainer/shared_prefix.py); the hidden states are the same, padding positions zero."""
    kept: dict[str, torch.Tensor] = {}

    def keep(module, args, output):
        kept["h"] = output[0] if isinstance(output, tuple) else output.last_hidden_state

    inner = _inner(model)
    extra = {}
    if shared_prefix:
        packed = pack(batch.prompt_ids, batch.completion_ids, batch.completion_mask, pad_id)
        if inner.config._attn_implementation == BLOCKS:  # by blocks: no [L, L] mask
            # a 2-D mask of ones: transformers then makes none (SDPA's causal shortcut) and
            # does not read the restarting position ids as packed sequences
            mask = torch.ones(packed.input_ids.shape, dtype=torch.long)
            extra = {"prefix_segments": packed.segments}
        else:
            mask = attention_mask(packed, inner.get_input_embeddings().weight.dtype, device)
        inputs = (packed.input_ids, mask, packed.position_ids)
    else:
        input_ids, attn, pos, _ = build_inputs(batch.prompt_ids, batch.completion_ids,
                                               batch.completion_mask, pad_id)
        inputs = (input_ids, attn, pos)
    handle = inner.get_decoder().register_forward_hook(keep)
    try:
        model(input_ids=inputs[0].to(device), attention_mask=inputs[1].to(device),
              position_ids=inputs[2].to(device), logits_to_keep=1, use_cache=False, **extra)
    finally:
        handle.remove()
    h = kept["h"]
    if not shared_prefix:
        return h[:, -(batch.completion_ids.shape[1] + 1):-1]
    source = packed.source.to(device)
    picked = h.reshape(-1, h.shape[-1])[source.clamp(min=0).reshape(-1)].view(
        *source.shape, h.shape[-1])
    return picked * (source >= 0).unsqueeze(-1).to(picked.dtype)


def output_head(model):
    """The map from hidden state to logits. Under ZeRO-3 (the weight carries DeepSpeed's
    ``ds_id``) a frozen, full copy of the gathered weight, so that checkpoint recomputes in
    the backward see the same tensor as the forward; otherwise the module itself."""
    head = _inner(model).get_output_embeddings()
    weight = head.weight
    if not hasattr(weight, "ds_id"):
        return head
    if weight.requires_grad:
        raise ValueError("trainer/logprobs.py: a trainable output head under ZeRO-3 is not "
                         "supported (LoRA keeps the head frozen)")
    import deepspeed  # lazy: only ZeRO-3 runs reach here
    params = [p for p in (weight, head.bias) if p is not None]
    with deepspeed.zero.GatheredParameters(params):
        w = weight.detach().clone()
        b = None if head.bias is None else head.bias.detach().clone()
    return partial(F.linear, weight=w, bias=b)


def _chunk_scores(head, entropy: bool, h: torch.Tensor, ids: torch.Tensor,
                  alt_ids: torch.Tensor | None, temperature: float | torch.Tensor):
    """One chunk of K positions: (log p of ``ids`` [K], log p of each alternative [K, A] with
    -inf at padding (or None), the sampling entropy [K] detached (or None)). ``temperature``:
    one for every position, or each position's [K]."""
    if isinstance(temperature, torch.Tensor):
        temperature = temperature[:, None]
    logits = head(h).float() / temperature  # [K, vocab]: the only full-vocabulary tensor
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    picked = (logits.gather(-1, ids[:, None]) - lse).squeeze(-1)
    alts = None
    if alt_ids is not None:
        alts = (logits.gather(-1, alt_ids.clamp(min=0)) - lse).masked_fill(alt_ids < 0,
                                                                          float("-inf"))
    ent = None
    if entropy:
        with torch.no_grad():
            logp = logits - lse
            ent = -(logp.exp() * logp).sum(-1)
    return picked, alts, ent


@dataclass
class TokenScores:
    """One scoring pass over a batch's completions, each ``[n, T]`` (float32):

    - ``logp``: log p(sampled token) at each completion position;
    - ``entropy`` (``entropy=True``): the detached sampling entropy at each position;
    - ``alternatives`` (given ``alternatives`` ids ``[n, T, A]``, -1 padded): ``[n, T, A]``,
      each alternative token's log-prob at its position, -inf at padding, with grad. A
      task's contribution names them (e.g. a decision's options: trainer/tasks/decisions.py)."""

    logp: torch.Tensor
    entropy: torch.Tensor | None = None
    alternatives: torch.Tensor | None = None


def token_logprobs(model, batch: RolloutBatch, pad_id: int, temperature: float,
                   device: torch.device, chunk_tokens: int = 0,
                   shared_prefix: bool = False) -> torch.Tensor:
    """log p(sampled token) for every completion position: [n, T] (float32)."""
    return score_tokens(model, batch, pad_id, temperature, device, chunk_tokens=chunk_tokens,
                        shared_prefix=shared_prefix).logp


def score_tokens(model, batch: RolloutBatch, pad_id: int, temperature: float | torch.Tensor,
                 device: torch.device, *, entropy: bool = False,
                 alternatives: torch.Tensor | None = None, chunk_tokens: int = 0,
                 shared_prefix: bool = False) -> TokenScores:
    """:class:`TokenScores` of the batch's completions; ``entropy`` and ``alternatives``
    add its optional parts. ``temperature``: one for every row, or each row's ``[n]``
    (trainer/joint.py scores rows of several terms in one pass). ``chunk_tokens``: positions
    per pass of the output head (0: all at once). ``shared_prefix``: one forward of each
    prompt (``completion_hidden``)."""
    h = completion_hidden(model, batch, pad_id, device, shared_prefix)
    n, t = batch.completion_ids.shape
    flat_h = h.reshape(n * t, h.shape[-1])
    ids = batch.completion_ids.to(device).reshape(-1)
    alt = None if alternatives is None else alternatives.to(device).reshape(n * t, -1)
    temp = temperature
    if isinstance(temp, torch.Tensor):
        temp = temp.to(device, torch.float32).repeat_interleave(t)
    score = partial(_chunk_scores, output_head(model), entropy)
    size = chunk_tokens if chunk_tokens > 0 else max(n * t, 1)
    recompute = torch.is_grad_enabled() and flat_h.requires_grad and size < n * t
    parts = []
    for s in range(0, n * t, size):
        args = (flat_h[s:s + size], ids[s:s + size], None if alt is None else alt[s:s + size],
                temp[s:s + size] if isinstance(temp, torch.Tensor) else temp)
        parts.append(checkpoint(score, *args, use_reentrant=False) if recompute
                     else score(*args))
    out = TokenScores(torch.cat([p[0] for p in parts]).view(n, t))
    if alt is not None:
        out.alternatives = torch.cat([p[1] for p in parts]).view(n, t, -1)
    if entropy:
        out.entropy = torch.cat([p[2] for p in parts]).view(n, t)
    return out


def option_log_shares(alts: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """``[N, T, K]``: the log of the policy's shares among a choice's options (its options'
    log-probs ``alts`` [N, T, K] renormalised, -inf at padding options) where ``at`` ([N, T]
    bool), 0 elsewhere. In float32, also under a bf16 learner: the shares are a softmax of
    a few nearly equal log-probs."""
    return torch.log_softmax(alts.float().masked_fill(~at[..., None], 0.0), dim=-1)


def option_entropy(alts: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """``[N, T]``: the entropy of the policy's shares among a choice's options where ``at``,
    0 elsewhere (:func:`option_log_shares`)."""
    logs = option_log_shares(alts, at)
    ent = -(logs.exp() * logs.masked_fill(torch.isinf(logs), 0.0)).sum(-1)
    return torch.where(at, ent, torch.zeros_like(ent))
