"""Side batches scored in the policy's pass (trainer/joint.py): each side row packs after its
group, every row keeps its own temperature and alternatives, and the joint pass gives each
part the scores and gradients of its own separate pass; the learner scores the stock task's
anchor that way under the shared-prefix layout (one forward a micro-batch instead of two)
and logs the same step as with separate passes."""

from __future__ import annotations

import random

import pytest
import torch

from tests.conftest import REPO
from tests.trainer.test_shared_prefix import CPU, _groups, _policy, _qwen_shaped
from trainer.joint import join
from trainer.logprobs import score_tokens
from trainer.shared_prefix import pack, prompt_runs
from trainer.types import RolloutBatch

DEMO = REPO / "configs/demo/stage1.yaml"


def _side(main: RolloutBatch, groups: list[int], extra_prompt: list[int]) -> RolloutBatch:
    """Teacher-forced rows after the prompts of ``groups`` (in that order), then one after a
    prompt no group has; lengths unlike the main rows'."""
    runs = prompt_runs(main.prompt_ids)
    prompts = [main.prompt_ids[runs[g][0]] for g in groups] + [extra_prompt]
    g = torch.Generator().manual_seed(5)
    targets = [torch.randint(3, 300, (4 + 9 * i,), generator=g).tolist()
               for i in range(len(prompts))]
    return RolloutBatch.teacher_forced(prompts, targets, 0)


def _alternatives(batch: RolloutBatch, width: int, seed: int) -> torch.Tensor:
    """-1 everywhere but at each row's second token: ``width`` token ids."""
    g = torch.Generator().manual_seed(seed)
    alt = torch.full((*batch.completion_ids.shape, width), -1, dtype=torch.long)
    alt[:, 1] = torch.randint(3, 300, (len(batch), width), generator=g)
    return alt


def test_side_rows_pack_after_their_group_each_with_its_temperature():
    main = _groups(320, prompts=(37, 21, 15), group=3)
    side = _side(main, [2, 0], [7, 8, 9])
    j = join(main, None, 0.7, {"anchor": (side, _alternatives(side, 2, 1))}, pad_id=0)
    runs = prompt_runs(j.batch.prompt_ids)
    # group 0 (3 rows) + its side row, group 1 alone, group 2 + its side row, the stray row
    assert [b - a for a, b in runs] == [4, 3, 4, 1]
    assert j.parts[""].rows == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert j.parts["anchor"].rows == [10, 3, 11]  # in the side batch's own order
    assert j.temperature.tolist() == pytest.approx([0.7] * 3 + [1.0] + [0.7] * 6 + [1.0] * 2)
    # the main rows named no alternatives: -1 there; the side's where it put them
    assert (j.alternatives[j.parts[""].rows] == -1).all()
    assert torch.equal(j.alternatives[j.parts["anchor"].rows, :side.completion_ids.shape[1]],
                       _alternatives(side, 2, 1))
    # one packed row per group, the side rows inside theirs
    assert pack(j.batch.prompt_ids, j.batch.completion_ids, j.batch.completion_mask,
                0).input_ids.shape[0] == 4


def _score(model, batch, temperature, alt):
    return score_tokens(model, batch, 0, temperature, CPU, entropy=True, alternatives=alt,
                        chunk_tokens=16, shared_prefix=True)


@pytest.mark.parametrize("tied", [True, False])
def test_the_joint_pass_scores_each_part_as_its_own_pass(tmp_path, tied):
    """Scores, alternatives and LoRA gradients of a main part (temperature 0.9, 3
    alternatives) and a side part (temperature 1, 2 alternatives, longer rows) from one
    pass equal their two separate passes (float32: 1e-5, gradients 1e-5 relative)."""
    model = _policy(_qwen_shaped(tmp_path, tied))
    main = _groups(320, prompts=(37, 21), group=4)
    side = _side(main, [1, 0], [11, 12, 13, 14])
    main_alt, side_alt = _alternatives(main, 3, 2), _alternatives(side, 2, 3)

    def loss(s, part, alt):
        m = part.completion_mask
        return (s.logp * m).sum() + s.alternatives[:, 1].logsumexp(-1).sum() * (alt >= 0).any()

    model.zero_grad()
    sep = _score(model, main, 0.9, main_alt), _score(model, side, 1.0, side_alt)
    (loss(sep[0], main, main_alt) + 0.5 * loss(sep[1], side, side_alt)).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    model.zero_grad()
    j = join(main, main_alt, 0.9, {"anchor": (side, side_alt)}, pad_id=0)
    got, sides = j.split(_score(model, j.batch, j.temperature, j.alternatives))
    (loss(got, main, main_alt) + 0.5 * loss(sides["anchor"], side, side_alt)).backward()
    for (a, b, part) in ((sep[0], got, main), (sep[1], sides["anchor"], side)):
        m = part.completion_mask.bool()
        assert a.logp.shape == b.logp.shape and a.alternatives.shape == b.alternatives.shape
        assert (a.logp - b.logp)[m].abs().max() <= 1e-5
        assert (a.entropy - b.entropy)[m].abs().max() <= 1e-5
        fin = torch.isfinite(a.alternatives)
        assert torch.equal(fin, torch.isfinite(b.alternatives)) and fin.any()
        assert (a.alternatives - b.alternatives)[fin].abs().max() <= 1e-5
    assert len(grads) >= 14
    for name, g in grads.items():
        other = dict(model.named_parameters())[name].grad
        assert (g - other).norm() <= 1e-5 * g.norm() + 1e-9, name


def _stock_step(warm_model):
    """Eight synthetic prompts, each with a group of eight warm-start answers (sampled as
    the workers' would be: their decisions marked) and the anchor's reference answers."""
    from transformers import AutoTokenizer

    from rollout.client import Completion
    from trainer.config import load_config
    from trainer.rollouts import encode_prompt
    from trainer.tasks.decision_marks import mark_completions
    from trainer.tasks.decisions import anchor_batch
    from trainer.tasks.registry import build_task
    from trainer.tasks.stock.warm_answers import answer_and_choices

    cfg = load_config(DEMO, [f"model.name_or_path={warm_model}"])
    task = build_task(cfg)
    tok = AutoTokenizer.from_pretrained(warm_model)
    samples = task.split("train")[:8]
    prompts = [encode_prompt(tok, s) for s in samples]
    rng, groups = random.Random(0), []
    for s in samples:
        texts = [answer_and_choices(s.meta["closes"], rng)[0] for _ in range(8)]
        ids = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
               for t in texts]
        groups.append([Completion(i, [0.0] * len(i), t, "stop", 0, "w")
                       for i, t in zip(ids, texts, strict=True)])
    rewards = [float(rng.random()) for _ in range(64)]
    adv = torch.tensor(rewards).view(8, 8)
    adv = ((adv - adv.mean(1, keepdim=True)) / adv.std(1, keepdim=True)).flatten()
    flat = [c for g in groups for c in g]
    batch = RolloutBatch.from_groups(prompts, groups, rewards, adv, tok.pad_token_id,
                                     mark_completions(task, tok, flat))
    side = anchor_batch(task, samples, prompts, tok, tok.pad_token_id, random.Random(1))
    return batch, {"anchor": side}


def test_the_learner_scores_the_anchor_in_the_policy_pass(warm_model, capsys):
    """The demo's objective (decision tokens, anchor and balance terms) on one batch, with
    the layout on (the anchor's rows scored in the policy's pass) and off (a pass of their
    own): one forward of the model per micro-batch against two, and the same step."""
    from accelerate import Accelerator

    from trainer.config import load_config
    from trainer.learner import Learner

    out = {}
    for setting in ("on", "off"):
        cfg = load_config(DEMO, [
            f"model.name_or_path={warm_model}", f"train.shared_prefix={setting}",
            "train.prompts_per_rank=8", "train.micro_batch_size=32"])
        learner = Learner(cfg, Accelerator(cpu=True))
        batch, side = _stock_step(warm_model)
        forwards = []
        learner.peft_model.get_decoder().register_forward_hook(
            lambda *_, seen=forwards: seen.append(1))
        learner._layout_checked = True  # count the training passes only
        learner.set_step(1)
        before = {n: t.clone() for n, t in learner.adapter_tensors().items()}
        metrics = learner.train_step(batch, side)
        out[setting] = (metrics, len(forwards), {n: t - before[n] for n, t in
                                                 learner.adapter_tensors().items()})
    (m_on, n_on, a_on), (m_off, n_off, a_off) = out["on"], out["off"]
    assert (n_on, n_off) == (2, 4)  # two micro-batches: one pass each, against two each
    assert m_on.keys() == m_off.keys() and {"anchor_nll", "balance_share"} <= m_on.keys()
    for key in ("loss", "policy_loss", "anchor_nll", "balance_share", "entropy"):
        assert m_on[key] == pytest.approx(m_off[key], abs=1e-5), key
    assert m_on["anchor_nll"] > 0.01
    # the same update: Adam's first step is lr x g / (|g| + eps), so where |g| is near eps
    # rounding of g moves an element by a share of lr (5e-4 of the update's norm here); an
    # anchor left out of the gradient or scored at the wrong place moves all of it
    step_on, step_off = (torch.cat([a[n].flatten() for n in sorted(a)]) for a in (a_on, a_off))
    assert float(step_off.norm()) > 0
    assert float((step_on - step_off).norm()) <= 1e-2 * float(step_off.norm())
