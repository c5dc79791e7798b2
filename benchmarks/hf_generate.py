"""Batched sampling with transformers ``generate`` on token-id prompts (left padded): the
baseline the rollout benchmark measures our workers against, and the greedy evaluation of
the TRL side of the learning benchmark. Counts only generated tokens up to and including
the first stop token, so short completions are not credited with padding."""

from __future__ import annotations


def generate(model, tokenizer, prompts: list[list[int]], n: int, max_new_tokens: int,
             temperature: float = 1.0) -> list[list[list[int]]]:
    """prompts: P token-id lists -> P groups of n completion token-id lists (stop token
    included when one was produced). temperature 0: greedy."""
    import torch

    pad = tokenizer.pad_token_id
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = (torch.arange(width)[None, :] >= torch.tensor([width - len(p) for p in prompts])[:, None])
    kwargs = sampling_kwargs(temperature)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask.long(), max_new_tokens=max_new_tokens,
                             num_return_sequences=n, pad_token_id=pad, use_cache=True,
                             **kwargs)
    stops = set(_stop_ids(model, tokenizer))
    rows = [_cut(r.tolist(), stops) for r in out[:, width:]]
    return [rows[i * n:(i + 1) * n] for i in range(len(prompts))]


def sampling_kwargs(temperature: float) -> dict:
    """``generate`` settings for the plain softmax at ``temperature`` (0: greedy). Every field
    is stated: the model's generation_config.json (Qwen2.5-Instruct's: top_k 20, top_p 0.8, a
    repetition penalty) fills any left out, in greedy decoding too."""
    kwargs = ({"do_sample": False} if temperature == 0 else
              {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0,
               "min_p": None})
    return {**kwargs, "repetition_penalty": 1.0}


def _stop_ids(model, tokenizer) -> list[int]:
    eos = model.generation_config.eos_token_id
    eos = eos if isinstance(eos, list) else [eos]
    return [e for e in [*eos, tokenizer.eos_token_id] if e is not None]


def _cut(tokens: list[int], stops: set[int]) -> list[int]:
    for i, t in enumerate(tokens):
        if t in stops:
            return tokens[:i + 1]
    return tokens
