"""Chunked scoring (trainer/logprobs.py) against the naive full-vocabulary computation it
replaced: the model's logits at every completion position, a float32 log-softmax, gather.
Values within 1e-5 in float32 and the same LoRA gradients, for every chunk size, with
gradient checkpointing on, and on a 4-bit base."""

from __future__ import annotations

import pytest
import torch

from trainer.config import StageConfig
from trainer.logprobs import build_inputs, score_tokens, token_logprobs
from trainer.policy import load_policy
from trainer.types import RolloutBatch

CPU = torch.device("cpu")
PROMPTS = [[1, 40, 41, 42, 43, 44], [1, 50, 51], [1, 45, 46, 47]]
COMPLETIONS = [[60, 61, 62], [70, 71, 72, 73, 74], [80, 81]]


def _batch() -> RolloutBatch:
    t = max(map(len, COMPLETIONS))
    ids = torch.zeros((len(COMPLETIONS), t), dtype=torch.long)
    mask = torch.zeros((len(COMPLETIONS), t))
    for i, c in enumerate(COMPLETIONS):
        ids[i, :len(c)], mask[i, :len(c)] = torch.tensor(c), 1
    zeros = torch.zeros(len(COMPLETIONS))
    batch = RolloutBatch(PROMPTS, ids, mask, torch.zeros_like(mask), zeros, zeros, zeros.long(),
                         group_size=1)
    # alternative tokens named at two positions (e.g. a decision's options), -1 padding
    batch.extras["alt"] = torch.full((len(COMPLETIONS), t, 2), -1, dtype=torch.long)
    batch.extras["alt"][0, 1] = torch.tensor([61, 90])
    batch.extras["alt"][1, 3] = torch.tensor([73, 20])
    return batch


def naive(model, batch: RolloutBatch, temperature: float):
    """The computation before chunking: full [n, T, vocab] float32 log-softmax."""
    ids, attn, pos, _ = build_inputs(batch.prompt_ids, batch.completion_ids,
                                     batch.completion_mask, 0)
    t = batch.completion_ids.shape[1]
    out = model(input_ids=ids, attention_mask=attn, position_ids=pos, logits_to_keep=t + 1,
                use_cache=False)
    logp = torch.log_softmax(out.logits[:, :t].float() / temperature, -1)
    picked = logp.gather(-1, batch.completion_ids.unsqueeze(-1)).squeeze(-1)
    ent = -(logp.exp() * logp).sum(-1)
    named = batch.extras["alt"]
    alts = logp.gather(-1, named.clamp(min=0)).masked_fill(named < 0, float("-inf"))
    return picked, ent.detach(), alts


def _model(model_path, **train):
    cfg = StageConfig()
    cfg.model.name_or_path, cfg.model.dtype = str(model_path), "float32"
    for k, v in train.items():
        setattr(cfg.train, k, v)
    torch.manual_seed(0)
    model = load_policy(cfg, CPU)
    with torch.no_grad():  # a non-trivial adapter, so its gradients are not all zero
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return model


def _grads(model, loss) -> dict[str, torch.Tensor]:
    model.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("chunk", [0, 1, 5, 7, 1000])
def test_chunked_values_and_gradients_equal_the_full_vocabulary_ones(tiny_model, chunk):
    model = _model(tiny_model).train()
    batch = _batch()
    scored = score_tokens(model, batch, 0, 0.7, CPU, entropy=True,
                          alternatives=batch.extras["alt"], chunk_tokens=chunk)
    picked, ent, alts = scored.logp, scored.entropy, scored.alternatives
    ref_picked, ref_ent, ref_alts = naive(model, batch, 0.7)
    named = batch.extras["alt"] >= 0
    assert torch.allclose(picked, ref_picked, atol=1e-5)
    assert torch.allclose(ent, ref_ent, atol=1e-5)
    assert torch.equal(torch.isinf(alts), ~named)  # -inf exactly at the padding
    assert torch.allclose(alts[named], ref_alts[named], atol=1e-5)
    assert not ent.requires_grad
    got = _grads(model, (picked * batch.completion_mask).sum() + alts[named].sum())
    want = _grads(model, (ref_picked * batch.completion_mask).sum() + ref_alts[named].sum())
    assert got.keys() == want.keys() and got
    for name in want:
        assert torch.allclose(got[name], want[name], atol=1e-5), name


def test_without_alternatives_the_pass_scores_the_sampled_tokens_only(tiny_model):
    model = _model(tiny_model).eval()
    batch = _batch()
    with torch.no_grad():
        scored = score_tokens(model, batch, 0, 1.0, CPU, chunk_tokens=4)
        ref_picked, _, _ = naive(model, batch, 1.0)
    assert scored.alternatives is None and scored.entropy is None
    assert torch.allclose(scored.logp, ref_picked, atol=1e-5)


def test_gradient_checkpointing_changes_memory_not_values(tiny_model):
    """With train.gradient_checkpointing the decoder layers recompute in the backward; the
    log-probs and LoRA gradients are the same as without it."""
    plain, ckpt = _model(tiny_model).train(), _model(tiny_model, gradient_checkpointing=True)
    ckpt.train()
    assert ckpt.base_model.model.model.gradient_checkpointing
    assert not plain.base_model.model.model.gradient_checkpointing
    batch = _batch()
    a = token_logprobs(plain, batch, 0, 1.0, CPU, chunk_tokens=4)
    b = token_logprobs(ckpt, batch, 0, 1.0, CPU, chunk_tokens=4)
    assert torch.allclose(a, b, atol=1e-6)
    ga, gb = _grads(plain, a.sum()), _grads(ckpt, b.sum())
    assert ga.keys() == gb.keys() and ga
    for name in ga:
        assert torch.allclose(ga[name], gb[name], atol=1e-5), name


def test_4bit_base_with_checkpointing_matches_its_full_vocabulary_scores(tiny_model):
    cfg = StageConfig()
    cfg.model.name_or_path, cfg.model.dtype = str(tiny_model), "float32"
    cfg.model.load_in_4bit, cfg.train.gradient_checkpointing = True, True
    model = load_policy(cfg, CPU).train()
    batch = _batch()
    picked = token_logprobs(model, batch, 0, 1.0, CPU, chunk_tokens=3)
    ref = naive(model, batch, 1.0)[0]
    assert torch.allclose(picked, ref, atol=1e-5)
    got, want = _grads(model, picked.sum()), _grads(model, ref.sum())
    assert got and all(torch.allclose(got[n], want[n], atol=1e-5) for n in want)
