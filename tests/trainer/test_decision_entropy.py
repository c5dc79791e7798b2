"""The entropy bonus at a decision (``train.decision_entropy_coef``, trainer/tasks/decisions.py):
the entropy among the decision's options only, and a learner step that, from a group whose
answers all took one option (no advantage can move it), widens that decision's shares."""

from __future__ import annotations

import random

import pytest
import torch

from rollout.client import Completion
from trainer.config import ConfigError, from_dict
from trainer.tasks.decisions import decision_entropy

SETS = ["launch.num_processes=1", "train.anchor_coef=0", "train.balance_coef=0",
        "train.prompts_per_rank=1", "train.micro_batch_size=8", "train.learning_rate=0.01",
        "train.lr_schedule=constant"]


def test_the_entropy_is_among_the_options_where_a_choice_is_made():
    # one row, two positions: a choice between 2 options (a third slot is padding), then none
    alts = torch.log(torch.tensor([[[0.1, 0.3, 1.0], [0.5, 0.5, 1.0]]])).masked_fill(
        torch.tensor([[[False, False, True], [False, False, False]]]), float("-inf"))
    ids = torch.tensor([[[4, 5, -1], [-1, -1, -1]]])
    got = decision_entropy(alts, ids)
    s = torch.tensor([0.25, 0.75])  # the shares renormalised over the two options
    assert float(got[0, 0]) == pytest.approx(float(-(s * s.log()).sum()), abs=1e-6)
    assert float(got[0, 1]) == 0.0


def _learner_and_groups(warm_model):
    """A learner, a group of 8 answers to one sample where 4 state its label and 4 the
    other option, and a group where all 8 state the label (different figures): there
    nothing tells the options apart."""
    from accelerate import Accelerator

    from trainer.config import load_config
    from trainer.learner import Learner
    from trainer.objective import active_markers
    from trainer.rollouts import build_batch, encode_prompt
    from trainer.tasks.registry import build_task
    from trainer.tasks.stock.warm_answers import answer_and_choices

    cfg = load_config("configs/demo/stage1.yaml", [f"model.name_or_path={warm_model}", *SETS])
    learner = Learner(cfg, Accelerator(cpu=True))
    task, tok = build_task(cfg), learner.tokenizer
    sample = task.split("train")[0]
    label = sample.meta["label"]
    other = "DOWN" if label == "UP" else "UP"
    eos = tok.convert_tokens_to_ids("<|im_end|>")

    def group(leans):
        texts = []
        for i, lean in enumerate(leans):
            text, _ = answer_and_choices(sample.meta["closes"], random.Random(i), lean)
            cut = text.rindex("Confidence: ") + len("Confidence: ")
            texts.append(f"{text[:cut]}{50 + 10 * (i % 5)}%")
        done = [Completion(tok(t, add_special_tokens=False)["input_ids"] + [eos], [0.0], t,
                           "stop", 0, "w") for t in texts]
        for c in done:
            c.logprobs = [0.0] * len(c.token_ids)
        drawn = ([encode_prompt(tok, sample)], [done], task.score_batch([sample], [texts])[0])
        return build_batch(task, tok, drawn, group_size=8, advantage=cfg.train.advantage,
                           pad_id=learner.pad_id, markers=active_markers(cfg.train))

    return learner, group([label] * 4 + [other] * 4), group([label] * 8)


def test_a_step_widens_a_decision_no_advantage_can_move(warm_model):
    """The warm start's decision is 50/50 (nothing to widen): a step on a group split
    between the options narrows it towards the label, then one step on a group that chose
    the label in every answer (no advantage; Adam's momentum narrows it further) with and
    without the bonus, from the same start: with it the decision ends wider. One narrowing
    step, not more: on the shipped model (the lean after the stated majority) two steps at
    this learning rate leave ~0.004 nats, where no bonus has room to show."""
    def change(coef):
        learner, mixed, unanimous = _learner_and_groups(warm_model)
        assert float(unanimous.advantages.abs().max()) == 0.0
        learner.set_step(1)
        learner.train_step(mixed)
        with torch.no_grad():
            before = learner.scores(unanimous, {"decision_entropy"})[1]["decision_entropy"]
        learner.cfg.train.decision_entropy_coef = coef
        learner.set_step(2)
        stats = learner.train_step(unanimous)
        with torch.no_grad():
            after = learner.scores(unanimous, {"decision_entropy"})[1]["decision_entropy"]
        at = before > 0
        return float(before[at].mean()), float(after[at].mean()), stats

    start, plain, _ = change(0.0)
    assert start < 0.68 and plain < start  # narrowed from ln 2 = 0.693, and on
    start_too, held, stats = change(1.0)
    assert start_too == pytest.approx(start, abs=1e-4)
    assert held > plain + 0.01, (start, plain, held)
    assert stats["decision_entropy"] == pytest.approx(start, abs=1e-3)
    assert stats["loss"] == pytest.approx(stats["policy_loss"], abs=1e-6)  # not in the level


@pytest.mark.parametrize("cfg,problem", [
    ({"train": {"decision_entropy_coef": 0.1, "pg_tokens": "all"}},
     "train.decision_entropy_coef: needs train.pg_tokens: decision"),
    ({"task": "prompts", "train": {"decision_entropy_coef": 0.1}},
     "train.decision_entropy_coef: > 0 needs a task that marks decisions"),
])
def test_the_bonus_needs_decisions(cfg, problem):
    with pytest.raises(ConfigError, match=problem):
        from_dict(cfg)
