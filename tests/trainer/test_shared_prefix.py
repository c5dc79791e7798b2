"""The shared-prefix layout (trainer/shared_prefix.py): the packed rows and their mask as the
layout's picture draws them; the same per-token log-probs (1e-5) and LoRA gradients (1e-5
relative) as one row per completion, float32 on the CPU, on the embedded model and on random
Qwen2.5-shaped models (grouped-query attention, tied and untied heads, rotary positions), LoRA
on attention and MLP projections, with and without gradient checkpointing and on a 4-bit
base; a group a micro-batch boundary cuts; the first-micro-batch check that falls back with
one warning; auto's choice; the recipe's losses with the layout on and off."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import REPO
from trainer.config import ConfigError, StageConfig, from_dict
from trainer.logprobs import score_tokens
from trainer.policy import load_policy
from trainer.prefix_attention import use_blocks
from trainer.shared_prefix import check_layout, pack, prompt_runs, resolve, unsupported
from trainer.types import RolloutBatch

CPU = torch.device("cpu")
REPLAY = REPO / "tests/trainer/recipe_replay"


def test_the_packed_row_is_the_picture():
    """prompt p0..p2, completions a (2 tokens) and b (1 token + padding), pad id 0."""
    prompt = [5, 6, 7]
    ids = torch.tensor([[8, 9], [10, 0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    p = pack([prompt, prompt], ids, mask, pad_id=0, align=1)
    assert p.input_ids.tolist() == [[5, 6, 7, 8, 9, 10]]
    assert p.position_ids.tolist() == [[0, 1, 2, 3, 4, 3]]  # b restarts after the prompt
    x, o = True, False
    assert p.allowed[0].tolist() == [
        # p0 p1 p2 a0 a1 b0
        [x, o, o, o, o, o],  # p0
        [x, x, o, o, o, o],  # p1
        [x, x, x, o, o, o],  # p2
        [x, x, x, x, o, o],  # a0
        [x, x, x, x, x, o],  # a1
        [x, x, x, o, o, x],  # b0: the prompt and itself, never a
    ]
    # the hidden state predicting each completion token: p2 for a0 and b0, a0 for a1
    assert p.source.tolist() == [[2, 3], [2, -1]]


def test_rows_pack_by_runs_of_one_prompt_and_padding_sees_itself():
    ids = torch.tensor([[8, 9], [10, 11], [12, 0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    p = pack([[5, 6], [5, 6], [7]], ids, mask, pad_id=0)
    assert prompt_runs([[5, 6], [5, 6], [7]]) == [(0, 2), (2, 3)]
    # 6 tokens at most, padded to a multiple of 8
    assert p.input_ids.tolist() == [[5, 6, 8, 9, 10, 11, 0, 0], [7, 12, 0, 0, 0, 0, 0, 0]]
    assert p.allowed[1, 2:, 2:].equal(torch.eye(6, dtype=torch.bool))  # no empty mask row
    assert p.allowed[0, 6:, 6:].equal(torch.eye(2, dtype=torch.bool))
    assert p.source.tolist() == [[1, 2], [1, 4], [8, -1]]
    with pytest.raises(ValueError, match="row 0: completion_mask is not a run of ones"):
        pack([[5]], torch.tensor([[8, 9]]), torch.tensor([[0.0, 1.0]]), 0)


def _qwen_shaped(tmp_path, tied: bool):
    """A random Qwen2.5-shaped model: grouped-query attention (4 query heads over 2 KV
    heads), rotary positions, q/k/v biases, a tied or an untied output head."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(1)
    cfg = Qwen2Config(vocab_size=320, hidden_size=64, intermediate_size=160,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, rope_theta=1e6,
                      tie_word_embeddings=tied, attn_implementation="sdpa")
    path = tmp_path / f"qwen-{'tied' if tied else 'untied'}"
    Qwen2ForCausalLM(cfg).save_pretrained(path)
    return path


def _policy(path, device=CPU, dtype="float32", blocks=False, **settings):
    cfg = StageConfig()
    cfg.model.name_or_path, cfg.model.dtype = str(path), dtype
    cfg.lora.target_modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                               "down_proj"]
    for key, value in settings.items():
        section, name = key.split("__")
        setattr(getattr(cfg, section), name, value)
    torch.manual_seed(0)
    model = load_policy(cfg, device)
    with torch.no_grad():  # a non-trivial adapter, so every LoRA matrix has a gradient
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    if blocks:  # the layout's attention by blocks instead of SDPA with the dense mask
        assert use_blocks(model.get_base_model())
    return model.train()


def _groups(vocab: int, prompts=(37, 21), group=4, seed=0) -> RolloutBatch:
    """Groups of ``group`` completions of unequal length (some sharing their first tokens,
    as sampled completions do), right padded."""
    g = torch.Generator().manual_seed(seed)
    prompt_ids, rows = [], []
    for length in prompts:
        prompt = torch.randint(3, vocab, (length,), generator=g).tolist()
        head = torch.randint(3, vocab, (3,), generator=g).tolist()
        for j in range(group):
            tail = torch.randint(3, vocab, (5 + 3 * j,), generator=g).tolist()
            prompt_ids.append(prompt)
            rows.append(head + tail if j % 2 == 0 else tail)
    t = max(map(len, rows))
    ids = torch.zeros((len(rows), t), dtype=torch.long)
    mask = torch.zeros((len(rows), t))
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), 1.0
    zeros = torch.zeros(len(rows))
    return RolloutBatch(prompt_ids, ids, mask, torch.zeros_like(mask), zeros, zeros,
                        zeros.long(), group_size=group)


def _both_ways(model, batch, device=CPU):
    out = {}
    for shared in (False, True):
        model.zero_grad()
        s = score_tokens(model, batch, 0, 0.9, device, entropy=True, shared_prefix=shared,
                         chunk_tokens=16)
        (s.logp * batch.completion_mask.to(device)).sum().backward()
        out[shared] = (s.logp.detach().cpu(), s.entropy.cpu(),
                       {n: p.grad.float().cpu() for n, p in model.named_parameters()
                        if p.grad is not None})
    return out[False], out[True]


def _assert_same(model, batch):
    (lp, ent, grads), (lp2, ent2, grads2) = _both_ways(model, batch)
    m = batch.completion_mask.bool()
    assert (lp - lp2)[m].abs().max() <= 1e-5
    assert (ent - ent2)[m].abs().max() <= 1e-5
    assert grads.keys() == grads2.keys() and len(grads) >= 14  # every LoRA A and B of a layer
    for name, g in grads.items():
        assert (g - grads2[name]).norm() <= 1e-5 * g.norm() + 1e-9, name


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("blocks", [False, True], ids=["mask", "blocks"])
def test_the_embedded_model_scores_the_same_both_ways(tiny_model, checkpointing, blocks):
    model = _policy(tiny_model, blocks=blocks, train__gradient_checkpointing=checkpointing)
    _assert_same(model, _groups(model.config.vocab_size))


@pytest.mark.parametrize("blocks", [False, True], ids=["mask", "blocks"])
@pytest.mark.parametrize("tied", [True, False])
def test_a_qwen_shaped_model_scores_the_same_both_ways(tmp_path, tied, blocks):
    path = _qwen_shaped(tmp_path, tied)
    model = _policy(path, blocks=blocks)
    assert model.config.tie_word_embeddings is tied
    _assert_same(model, _groups(320, seed=int(tied)))


@pytest.mark.parametrize("blocks", [False, True], ids=["mask", "blocks"])
def test_a_4bit_base_scores_the_same_both_ways(tiny_model, blocks):
    model = _policy(tiny_model, blocks=blocks, model__load_in_4bit=True)
    batch = _groups(model.config.vocab_size)
    (lp, _, grads), (lp2, _, grads2) = _both_ways(model, batch)
    # bitsandbytes dequantises the same weights either way; only the layout differs
    assert (lp - lp2)[batch.completion_mask.bool()].abs().max() <= 1e-4
    for name, g in grads.items():
        assert (g - grads2[name]).norm() <= 1e-4 * g.norm() + 1e-9, name


@pytest.mark.parametrize("blocks", [False, True], ids=["mask", "blocks"])
def test_a_group_cut_by_a_micro_batch_boundary_packs_once_per_micro_batch(tiny_model, blocks):
    """Two groups of 4 in micro-batches of 3: the middle micro-batch holds the end of the
    first group and the start of the second: two packed rows, each with its prompt."""
    model = _policy(tiny_model, blocks=blocks)
    batch = _groups(model.config.vocab_size)
    middle = batch.slice(3, 6)
    assert prompt_runs(middle.prompt_ids) == [(0, 1), (1, 3)]
    p = pack(middle.prompt_ids, middle.completion_ids, middle.completion_mask, 0)
    assert p.input_ids.shape[0] == 2
    assert p.input_ids[0, :37].tolist() == batch.prompt_ids[0]
    assert p.input_ids[1, :21].tolist() == batch.prompt_ids[4]
    for start in range(0, 8, 3):
        _assert_same(model, batch.slice(start, min(start + 3, 8)))


def test_auto_is_off_where_the_attention_cannot_take_the_mask(tiny_model):
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(tiny_model)
    cfg._attn_implementation = "sdpa"
    assert unsupported(cfg) is None
    cfg._attn_implementation = "flash_attention_2"
    assert "flash_attention_2" in unsupported(cfg)
    cfg._attn_implementation = "sdpa"
    cfg.layer_types = ["full_attention", "sliding_attention"]
    assert "sliding-window" in unsupported(cfg)


def test_the_runs_line_says_which_layout_and_why(tiny_model):
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(tiny_model)
    cfg._attn_implementation = "sdpa"
    on, line = resolve("auto", cfg, micro=32, group=8)
    assert on and line.startswith("on (sdpa attention)") and "do not hold" not in line
    on, line = resolve("auto", cfg, micro=6, group=8)
    assert on and "micro-batches of 6 do not hold whole groups of 8" in line
    assert resolve("off", cfg, 8, 8) == (False, "off (train.shared_prefix: off): one row per "
                                                "completion")
    cfg._attn_implementation = "flash_attention_2"
    on, line = resolve("auto", cfg, 8, 8)
    assert not on and "flash_attention_2" in line
    with pytest.raises(ConfigError, match="train.shared_prefix: on, but its attention is "
                                          "'flash_attention_2'"):
        resolve("on", cfg, 8, 8)


def test_a_grouped_forward_that_fails_is_a_reason_to_fall_back():
    def score(shared_prefix):
        if shared_prefix:
            raise RuntimeError("Expected attn_mask dtype to be bool or float or to match "
                               "query dtype\nmore")
        return torch.zeros(1, 3)

    problem = check_layout(score, torch.ones(1, 3), torch.float32)
    assert problem == ("its forward failed: Expected attn_mask dtype to be bool or float or "
                       "to match query dtype")


def test_on_and_off_read_from_yaml_as_written():
    for written, want in (("on", "on"), ("off", "off"), ("auto", "auto")):
        import yaml

        assert from_dict({"train": yaml.safe_load(f"shared_prefix: {written}")}
                         ).train.shared_prefix == want
    with pytest.raises(ConfigError, match="train.shared_prefix: 'sometimes' is not allowed"):
        from_dict({"train": {"shared_prefix": "sometimes"}})


def _learner(warm_model, *overrides):
    from accelerate import Accelerator

    from trainer.config import load_config
    from trainer.learner import Learner

    cfg = load_config(REPLAY / "config.yaml", [f"model.name_or_path={warm_model}", *overrides])
    return Learner(cfg, Accelerator(cpu=True))


def _replay_batch(learner, step=1) -> RolloutBatch:
    from rollout.client import Completion

    rows = [json.loads(x) for x in (REPLAY / "rollouts.rank0.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["step"] == step]
    g = learner.cfg.rollout.group_size
    groups = [[Completion(r["token_ids"], r["worker_logprobs"], r["text"], "stop", 0, "w")
               for r in rows[i:i + g]] for i in range(0, len(rows), g)]
    return RolloutBatch.from_groups([rows[i]["prompt_ids"] for i in range(0, len(rows), g)],
                                    groups, [float(r["reward"]) for r in rows],
                                    torch.tensor([float(r["advantage"]) for r in rows]),
                                    learner.pad_id)


@pytest.mark.parametrize("regression", ["leaky mask", "completion seen whole",
                                        "positions run on"])
def test_a_layout_regression_falls_back_with_one_warning(warm_model, monkeypatch, capsys,
                                                         regression):
    """Regressions the check must catch: a mask that lets completions see each other (the
    dense mask's path), a completion that sees its own later tokens (the blocks' path),
    position ids that run on across completions (both): the first micro-batch's check says
    so in one line and the run trains per row."""
    import trainer.logprobs as logprobs
    import trainer.prefix_attention as blocks

    learner = _learner(warm_model)
    assert learner.shared_prefix
    real = logprobs.pack

    def leaky(*args):
        packed = real(*args)
        if regression == "leaky mask":
            learner.peft_model.get_base_model().set_attn_implementation("sdpa")  # dense mask
            packed.allowed = torch.ones_like(packed.allowed).tril()  # plain causal: leaks
        elif regression == "positions run on":
            packed.position_ids = torch.arange(packed.position_ids.shape[1]).expand_as(
                packed.position_ids)
        return packed

    if regression == "completion seen whole":  # each completion reads its later tokens
        monkeypatch.setattr(blocks, "_causal",
                            lambda n, device: torch.ones(n, n, dtype=torch.bool, device=device))

    monkeypatch.setattr(logprobs, "pack", leaky)
    learner.set_step(1)
    metrics = learner.train_step(_replay_batch(learner))
    warned = [ln for ln in capsys.readouterr().out.splitlines() if "warning" in ln]
    assert len(warned) == 1 and "differ from one row per completion" in warned[0]
    assert not learner.shared_prefix and metrics["logp_gap"] < 1e-5


def test_the_learner_logs_the_same_step_both_ways(warm_model, capsys):
    """The same batch, one learner with the layout and one without: the same metrics (the
    high-entropy selection included: ties within rounding are kept either way) and the
    same adapter after the step."""
    out = {}
    for setting in ("on", "off"):
        learner = _learner(warm_model, f"train.shared_prefix={setting}")
        learner.set_step(1)
        batch = _replay_batch(learner)
        out[setting] = (learner.train_step(batch), learner.adapter_tensors())
        lr = learner.cfg.train.learning_rate
        assert learner.shared_prefix is (setting == "on")
    assert "[learner] shared prefix: on (sdpa attention)" in capsys.readouterr().out
    (m_on, a_on), (m_off, a_off) = out["on"], out["off"]
    assert m_on.keys() == m_off.keys()
    for key in ("loss", "policy_loss", "kl", "entropy", "pg_token_frac", "logp_gap"):
        assert m_on[key] == pytest.approx(m_off[key], abs=1e-5), key
    # Adam's first step is lr x g / (|g| + eps): where |g| is near eps, rounding of g moves
    # the step a little (23 of 28,672 elements by up to 3e-5 here); no element may differ by
    # a visible share of the step itself
    moved = torch.cat([(a_on[n] - t).abs().flatten() for n, t in a_off.items()])
    assert float(moved.max()) <= 0.01 * lr
