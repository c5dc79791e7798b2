"""Credit over every option (trainer/credit_options.py, ``train.credit_options``): each option's
component value at the span's choice token, the exact expected-value gradient there, and a
learner step that raises the expected value while the span's sampled tokens carry none."""

from __future__ import annotations

import math
import random

import pytest
import torch

from rollout.client import Completion
from trainer.config import ConfigError, from_dict
from trainer.credit_options import choice_entropy, choice_value

SETS = ["launch.num_processes=1", "reward.confidence_is_decision=true",
        "reward.weights={calibration: 20.0}", "train.credit={calibration: confidence}",
        "train.credit_options=true", "train.anchor_coef=0", "train.balance_coef=0",
        "train.prompts_per_rank=1", "train.micro_batch_size=8", "train.learning_rate=0.01",
        "train.lr_schedule=constant"]
FIGURES = (50, 60, 70, 80, 90)


def _setup(warm_model, *extra, right=4, modal=False):
    from accelerate import Accelerator

    from trainer.config import load_config
    from trainer.learner import Learner
    from trainer.objective import active_markers
    from trainer.rollouts import build_batch, encode_prompt
    from trainer.tasks.registry import build_task
    from trainer.tasks.stock.warm_answers import answer_and_choices

    cfg = load_config("configs/demo/stage1.yaml", [f"model.name_or_path={warm_model}", *SETS,
                                                     *extra])
    learner = Learner(cfg, Accelerator(cpu=True))
    task, tok = build_task(cfg), learner.tokenizer
    sample = task.split("train")[0]
    label = sample.meta["label"]
    texts = []
    for i in range(8):  # `right` right answers, the others wrong, every figure
        text, _ = answer_and_choices(sample.meta["closes"], random.Random(i),
                                     label if i < right else ("DOWN" if label == "UP" else "UP"))
        cut = text.rindex("Confidence: ") + len("Confidence: ")
        texts.append(f"{text[:cut]}{FIGURES[i % 5]}%")
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    group = [Completion(tok(t, add_special_tokens=False)["input_ids"] + [eos], [0.0], t, "stop",
                        0, "w") for t in texts]
    for c in group:
        c.logprobs = [0.0] * len(c.token_ids)
    drawn = ([encode_prompt(tok, sample)], [group], task.score_batch([sample], [texts])[0])
    batch = build_batch(task, tok, drawn, group_size=8, advantage=cfg.train.advantage,
                        pad_id=learner.pad_id, markers=active_markers(cfg.train),
                        credit=cfg.train.credit, credit_options=True, credit_modal=modal,
                        samples=[sample])
    return learner, batch, texts, label


def test_each_option_gets_its_value_at_the_figure_and_the_learner_raises_the_expectation(
        warm_model):
    learner, batch, texts, label = _setup(warm_model)
    values = batch.extras["option_values"]
    for i, text in enumerate(texts):
        at = (~torch.isnan(values[i]).all(-1)).nonzero().flatten().tolist()
        assert len(at) == 1, text  # one choice token a row: the figure's
        right = i < 4
        # calibration 0.2 x (1 - (1 - p_right)^2) at weight 20, p_right the figure if the
        # direction was right, else one minus it (the reward's definition, by hand)
        want = [20 * 0.2 * (1 - (1 - (c / 100 if right else 1 - c / 100)) ** 2) for c in FIGURES]
        assert values[i, at[0], :5].tolist() == pytest.approx(want, abs=1e-6)
    # the figure's sampled tokens carry no advantage (no other component: none anywhere)
    assert (batch.extras["token_advantages"] == 0).all()

    def expected():
        _, extra, _ = learner.scores(batch, {"choice_value"})
        return float(extra["choice_value"].sum())

    with torch.no_grad():
        before = expected()
    learner.set_step(1)
    metrics = learner.train_step(batch)
    with torch.no_grad():
        after = expected()
    assert metrics["credit/option_value"] == pytest.approx(before / 8, rel=1e-4)
    assert after > before + 1e-3  # the only gradient: up the options' expected value


def test_with_modal_only_the_groups_most_frequent_direction_gets_option_values(warm_model):
    """``train.credit_modal``: 5 right answers and 3 wrong ones; only the 5, whose direction
    is the group's most frequent, get the figure's option values; without it all 8 do."""
    for modal, want in ((True, [True] * 5 + [False] * 3), (False, [True] * 8)):
        _, batch, texts, _ = _setup(warm_model, right=5, modal=modal)
        has = (~torch.isnan(batch.extras["option_values"]).all(-1)).any(-1)
        assert has.tolist() == want, modal


def test_the_gradient_is_each_options_share_times_its_value_above_the_mean():
    logits = torch.tensor([[[0.3, -0.2, 1.0, 0.0]]], requires_grad=True)
    ids = torch.tensor([[[11, 12, 13, -1]]])
    alts = torch.log_softmax(logits, -1).masked_fill(ids < 0, float("-inf"))
    v = torch.tensor([[[1.0, 2.0, 4.0, float("nan")]]])
    out = choice_value(alts, ids, v)
    out.sum().backward()
    p = torch.softmax(logits[0, 0, :3].detach(), -1)
    mean = float((p * v[0, 0, :3]).sum())
    assert float(out) == pytest.approx(mean)
    want = p * (v[0, 0, :3] - mean)  # d/d logit_k of sum_j p_j v_j
    assert logits.grad[0, 0, :3].tolist() == pytest.approx(want.tolist(), abs=1e-6)
    # no value or no choice at a position: 0, no gradient
    none = choice_value(alts, ids, torch.full_like(v, float("nan")))
    assert float(none) == 0.0


def test_the_entropy_bonus_keeps_the_shares_among_the_options_wider(warm_model):
    """One step from the same start with and without ``credit_options_entropy``: with a
    large bonus the shares at the figure end wider than with the value alone. The warm
    start leaves them near uniform (1.601 nats of ln 5 = 1.609 on the shipped model), so
    the margin is a share of the room left to widen, not a fixed amount."""
    def entropy_change(*extra):
        learner, batch, _, _ = _setup(warm_model, *extra)
        with torch.no_grad():
            before = learner.scores(batch, {"choice_entropy"})[1]["choice_entropy"]
        room = float((before > 0).sum()) * math.log(len(FIGURES)) - float(before.sum())
        learner.set_step(1)
        learner.train_step(batch)
        with torch.no_grad():
            after = learner.scores(batch, {"choice_entropy"})[1]["choice_entropy"].sum()
        return float(after - before.sum()), room

    (plain, room), (held, _) = entropy_change(), entropy_change("train.credit_options_entropy=50")
    assert room > 0.01
    assert held > plain + 0.1 * room, (plain, held, room)


def test_the_entropy_is_over_the_options_only():
    alts = torch.log(torch.tensor([[[0.1, 0.3, 0.0]]])).masked_fill(
        torch.tensor([[[False, False, True]]]), float("-inf"))
    ids = torch.tensor([[[4, 5, -1]]])
    got = choice_entropy(alts, ids, torch.tensor([[[1.0, 0.0, float("nan")]]]))
    s = torch.tensor([0.25, 0.75])
    assert float(got) == pytest.approx(float(-(s * s.log()).sum()), abs=1e-6)
    assert float(choice_entropy(alts, ids, torch.full((1, 1, 3), float("nan")))) == 0.0


@pytest.mark.parametrize("train,problem", [
    ({"credit_options_entropy": 0.1}, "needs train.credit_options: true"),
    ({"credit_options": True}, "needs train.credit"),
    ({"credit_options": True, "credit": {"accuracy": "confidence"}, "pg_tokens": "all"},
     "needs train.pg_tokens: decision"),
])
def test_credit_options_needs_credit_and_decision_tokens(train, problem):
    with pytest.raises(ConfigError, match=problem):
        from_dict({"train": train})
