"""Learner pieces on the embedded model, without DeepSpeed: log-prob alignment, 4-bit, the
supervised anchor's batch and NLL, and the rank's refusals of bad settings."""

import random
import re

import pytest
import torch

from tests.conftest import REPO
from trainer.config import StageConfig
from trainer.logprobs import build_inputs, score_tokens, token_logprobs
from trainer.policy import load_policy
from trainer.types import RolloutBatch

DEMO_CONFIG = REPO / "configs" / "demo" / "stage1.yaml"


def _cfg(model_path, **model):
    cfg = StageConfig()
    cfg.model.name_or_path = str(model_path)
    cfg.model.dtype = "float32"
    for k, v in model.items():
        setattr(cfg.model, k, v)
    return cfg


def _batch(prompts, completions, pad_id=0):
    t = max(len(c) for c in completions)
    ids = torch.full((len(completions), t), pad_id)
    mask = torch.zeros((len(completions), t))
    for i, c in enumerate(completions):
        ids[i, :len(c)] = torch.tensor(c)
        mask[i, :len(c)] = 1
    zeros = torch.zeros(len(completions))
    return RolloutBatch(prompts, ids, mask, torch.zeros_like(mask), zeros, zeros,
                        zeros.long(), group_size=1)


def test_build_inputs_left_pads_prompts_and_counts_positions():
    ids, attn, pos, p = build_inputs([[5, 6, 7], [8]], torch.tensor([[1, 2], [3, 0]]),
                                     torch.tensor([[1.0, 1.0], [1.0, 0.0]]), pad_id=0)
    assert p == 3
    assert ids.tolist() == [[5, 6, 7, 1, 2], [0, 0, 8, 3, 0]]
    assert attn.tolist() == [[1, 1, 1, 1, 1], [0, 0, 1, 1, 0]]
    assert pos[1, 2:4].tolist() == [0, 1]  # the short prompt starts at position 0


def test_batched_logprobs_match_unpadded_single_sequences(tiny_model):
    model = load_policy(_cfg(tiny_model), torch.device("cpu")).eval()
    prompts = [[1, 40, 41, 42, 43, 44], [1, 50, 51]]
    completions = [[60, 61, 62], [70, 71, 72, 73, 74]]
    with torch.no_grad():
        batched = token_logprobs(model, _batch(prompts, completions), 0, 1.0,
                                 torch.device("cpu"))
        for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
            logits = model(input_ids=torch.tensor([p + c])).logits[0].float()
            ref = torch.log_softmax(logits, -1)[len(p) - 1:len(p) + len(c) - 1]
            naive = ref.gather(-1, torch.tensor(c).unsqueeze(-1)).squeeze(-1)
            assert torch.allclose(batched[i, :len(c)], naive, atol=1e-5)


def test_entropy_is_the_sampling_entropy_at_each_completion_position(tiny_model):
    model = load_policy(_cfg(tiny_model), torch.device("cpu")).eval()
    prompt, completion = [1, 40, 41], [60, 61, 62]
    with torch.no_grad():
        scored = score_tokens(model, _batch([prompt], [completion]), 0, 0.7,
                              torch.device("cpu"), entropy=True)
        logp, ent = scored.logp, scored.entropy
        logits = model(input_ids=torch.tensor([prompt + completion])).logits[0].float() / 0.7
        probs = torch.softmax(logits[len(prompt) - 1:-1], -1)
    want = -(probs * probs.log()).sum(-1)
    assert torch.allclose(ent[0], want, atol=1e-4)
    assert ent.min() > 0.0  # a fresh tiny model is far from deterministic
    assert torch.allclose(logp[0], probs.log().gather(-1, torch.tensor(completion)[:, None])
                          .squeeze(-1), atol=1e-5)


def test_4bit_base_loads_nf4_and_lora_gets_gradients(tiny_model):
    import bitsandbytes as bnb

    model = load_policy(_cfg(tiny_model, load_in_4bit=True), torch.device("cpu"))
    four_bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert four_bit and four_bit[0].weight.quant_type == "nf4"
    batch = _batch([[1, 40, 41]], [[60, 61]])
    logp = token_logprobs(model, batch, 0, 1.0, torch.device("cpu"))
    logp.sum().backward()
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.grad is not None for p in lora_b)
    assert any(p.grad.abs().sum() > 0 for p in lora_b)
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora" not in n)


def test_4bit_base_trains_after_an_eval_pass_and_scores_alike_in_both_modes(tiny_model):
    """The learner scores in eval mode (the shared-prefix check, reference passes) and then
    trains: on CPUs with AVX512-BF16 bitsandbytes repacked the weights at the eval pass and
    the training forward failed (benchmarks/gpu_learner.py on 4 bits stopped there)."""
    model = load_policy(_cfg(tiny_model, load_in_4bit=True), torch.device("cpu"))
    batch = _batch([[1, 40, 41, 42]], [[60, 61, 62]])
    model.eval()
    with torch.no_grad():
        scored = token_logprobs(model, batch, 0, 1.0, torch.device("cpu"))
    model.train()
    logp = token_logprobs(model, batch, 0, 1.0, torch.device("cpu"))
    logp.sum().backward()  # raised on such CPUs
    # one layout in both modes (LoRA dropout is 0): float32 arithmetic, same kernels
    assert torch.allclose(logp.detach(), scored, atol=1e-5)
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_B" in n)


def test_a_choice_is_spelled_out_only_where_its_options_begin_apart(warm_model):
    """The anchor marks only the token where a choice is made when each option begins with
    a token of its own (the rest, its spelling, is held as written); when two options share
    their first token, or a choice names no options, the whole span stays marked."""
    from transformers import AutoTokenizer

    from trainer.tasks.base import Choice
    from trainer.tasks.decisions import anchor_batch

    tok = AutoTokenizer.from_pretrained(warm_model)
    text = "Confidence: 60%, then 55% and 72%"
    a, b, c = text.index("60"), text.index("55"), text.index("72")
    choices = [Choice(a, a + 2, ("50", "60", "70")),  # first digits apart
               Choice(b, b + 2, ("50", "55")),  # both begin with "5"
               Choice(c, c + 2)]  # no options

    class Stub:
        def anchor_text(self, sample, rng):
            return text, choices

    batch = anchor_batch(Stub(), [None], [tok("Q", add_special_tokens=False)["input_ids"]],
                         tok, tok.pad_token_id, random.Random(0))
    row = batch.completion_ids[0].tolist()
    marked = [tok.decode([row[j]]) for j in batch.extras["decision_mask"][0].nonzero()
              .flatten().tolist()]
    assert marked == ["6", "5", "5", "7", "2"], marked


def test_anchor_is_a_warm_answer_without_its_choices_and_the_warm_model_knows_it(warm_model,
                                                                               tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.rollouts import encode_prompt
    from trainer.tasks.base import Choice
    from trainer.tasks.decisions import anchor_batch, anchor_nll
    from trainer.tasks.stock.config import DataConfig, StockRewardConfig
    from trainer.tasks.stock.task import StockTask
    from trainer.tasks.stock.warm_answers import LEAN, answer_and_choices, reasoning_prefix

    task = StockTask(DataConfig(source="synthetic", synthetic_days=400, window=5,
                                train_end="2001-06-30", val_end="2001-09-30"), StockRewardConfig())
    samples = task.split("train")[:8]
    closes = samples[0].meta["closes"]
    text, (lean_choice, figure_choice) = answer_and_choices(closes, random.Random(3))
    # the warm-start answer; its lean is the decision, balanced to the split's up ratio
    assert task.anchor_text(samples[0], random.Random(3)) == (text, [
        Choice(lean_choice.start, lean_choice.end, lean_choice.options, (0.5, 0.5)),
        figure_choice])
    tok = AutoTokenizer.from_pretrained(warm_model)
    batch = anchor_batch(task, samples, [encode_prompt(tok, s) for s in samples], tok,
                         tok.pad_token_id, random.Random(0))
    assert len(batch) == 8 and batch.completion_mask.sum(1).min() > 10
    texts = [tok.decode(r[m > 0].tolist(), skip_special_tokens=True)
             for r, m in zip(batch.completion_ids, batch.completion_mask, strict=True)]
    # every answer stops where the warm start's do: the end-of-sequence token, held
    last = batch.completion_mask.sum(1).long() - 1
    assert all(int(batch.completion_ids[i, j]) == tok.eos_token_id for i, j in enumerate(last))
    assert all(float(batch.extras["decision_mask"][i, j]) == 0.0 for i, j in enumerate(last))
    assert all(t.startswith(reasoning_prefix(s.meta["closes"]))
               for t, s in zip(texts, samples, strict=True))
    leans = {re.search(r"up \d, mostly (?:up|down) (\w+)\.", t).group(1) for t in texts}
    assert leans == set(LEAN.values()), texts  # both leans drawn across the batch
    # exactly the choices' tokens, the lean word and the confidence figure's first digit,
    # are marked (the prediction that restates the lean is not, nor the figure's "0": every
    # option begins with a digit of its own, so the rest is its spelling, held as written);
    # each carries its options: both leans, the first digit of every confidence figure
    lean_ids = {tok(f" {w}", add_special_tokens=False)["input_ids"][0] for w in LEAN.values()}
    digit_ids = {tok(d, add_special_tokens=False)["input_ids"][0] for d in "56789"}
    for row, marks, sets, text in zip(batch.completion_ids, batch.extras["decision_mask"],
                                      batch.extras["choice_ids"], texts, strict=True):
        left_out = [tok.decode([int(t)]).strip() for t in row[marks > 0]]
        lean, digit = left_out
        assert lean in LEAN.values() and f" {lean}." in text, (left_out, text)
        assert text.endswith(f"Confidence: {digit}0%") and digit in "56789", (left_out, text)
        at = (sets[:, 0] >= 0).nonzero().flatten().tolist()
        assert at == (marks > 0).nonzero().flatten().tolist(), (at, marks)
        assert {int(t) for t in sets[at[0]] if t >= 0} == lean_ids
        assert {int(t) for t in sets[at[1]] if t >= 0} == digit_ids
        assert int(row[at[0]]) in lean_ids and int(row[at[1]]) in digit_ids
    # the lean carries its prior (bullish = UP first, 50/50 on the balanced split), the
    # confidence figure none, and nothing else does
    assert "choice_prior" in batch.extras
    bull = tok(" bullish", add_special_tokens=False)["input_ids"][0]
    for sets, prior in zip(batch.extras["choice_ids"], batch.extras["choice_prior"], strict=True):
        held = (prior.sum(-1) > 0).nonzero().flatten().tolist()
        assert len(held) == 1 and int(sets[held[0], 0]) == bull
        assert prior[held[0], :2].tolist() == [0.5, 0.5] and float(prior.sum()) == 1.0
    nll = {}
    for name, path in (("warm", warm_model), ("untrained", tiny_model)):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        nll[name] = float(anchor_nll(model, batch, tok.pad_token_id, torch.device("cpu")).detach())
    # the warm start learned this text; the untrained model (same tokenizer) did not
    assert nll["warm"] < 0.1 < 2.0 < nll["untrained"], nll
    # by hand for one row: prompt + target, next-token NLL of the written tokens outside the
    # choices (the figure's "0" among them), and -log p(any option) where a choice is made
    real = batch.completion_mask[0] > 0
    row = batch.completion_ids[0][real]
    sets = batch.extras["choice_ids"][0][real]
    keep = batch.extras["decision_mask"][0][real] == 0
    ids = torch.tensor([batch.prompt_ids[0] + row.tolist()])
    logp = model(input_ids=ids).logits[0, :-1].log_softmax(-1)[len(batch.prompt_ids[0]) - 1:]
    picked = logp.gather(-1, row[:, None]).squeeze(-1)
    terms = [picked[keep]]
    for j in (sets[:, 0] >= 0).nonzero().flatten().tolist():
        terms.append(torch.logsumexp(logp[j, [int(t) for t in sets[j] if t >= 0]], 0)[None])
    expected = -torch.cat(terms).mean()
    assert len(terms) == 3 and int(keep.sum()) + 2 == len(torch.cat(terms))
    one = anchor_nll(model, batch.slice(0, 1), tok.pad_token_id, torch.device("cpu"))
    assert float(one.detach()) == pytest.approx(float(expected.detach()), rel=1e-4)
    # the option terms are in it: without them the value differs
    assert float(-picked[keep].mean().detach()) != pytest.approx(float(one.detach()), rel=1e-4)
    # positions without options (-1 padded, -inf inside the log-sum-exp) give finite grads
    model.zero_grad()
    anchor_nll(model, batch, tok.pad_token_id, torch.device("cpu")).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_choice_lse_is_log_p_of_any_option_where_a_choice_is_made(tiny_model):
    from trainer.tasks.decisions import choice_lse

    model = load_policy(_cfg(tiny_model), torch.device("cpu")).eval()
    batch = _batch([[1, 40, 41]], [[60, 61, 62]])
    batch.extras["choice_ids"] = torch.full((1, 3, 2), -1, dtype=torch.long)
    batch.extras["choice_ids"][0, 1] = torch.tensor([61, 70])  # token 1 chose between 61 and 70
    with torch.no_grad():
        scored = score_tokens(model, batch, 0, 1.0, torch.device("cpu"),
                              alternatives=batch.extras["choice_ids"])
        logp, lse = scored.logp, choice_lse(scored.alternatives, batch.extras["choice_ids"])
        full = torch.log_softmax(model(input_ids=torch.tensor([[1, 40, 41, 60, 61, 62]]))
                                 .logits[0, 2:5].float(), -1)
    assert torch.allclose(logp[0], full.gather(-1, torch.tensor([[60], [61], [62]]))[:, 0],
                          atol=1e-5)
    assert lse[0, 0] == 0 and lse[0, 2] == 0
    assert torch.allclose(lse[0, 1], torch.logsumexp(full[1, [61, 70]], 0), atol=1e-5)


def test_a_zero3_deepspeed_file_refuses_what_zero3_cannot_run():
    """Under accelerate by hand the DeepSpeed file, not launch.zero_stage, says ZeRO-3: the
    learner refuses the anchor and balance terms there as load-time validation does."""
    from trainer.config import ConfigError, StageConfig, check_zero3

    cfg = StageConfig()
    cfg.train.anchor_coef, cfg.train.balance_coef = 0.0, 0.0
    by_hand = "the DeepSpeed config's zero_optimization.stage"
    check_zero3(cfg, by_hand)
    cfg.train.balance_coef = 2.0
    with pytest.raises(ConfigError, match=r"train\.balance_coef: .* zero_optimization\.stage 3"):
        check_zero3(cfg, by_hand)


def test_a_rank_given_bad_settings_says_so_in_one_line(tmp_path, capsys):
    """`accelerate launch -m trainer.train` by hand: a bad --set is a one-line error and
    exit code 2 on the rank, not a traceback."""
    from trainer import train

    with pytest.raises(SystemExit) as stop:
        train.main(["--run-dir", str(tmp_path), "--config", str(DEMO_CONFIG),
                    "--set", "train.learning_rate=-1"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "train.learning_rate" in err and "Traceback" not in err
