"""The objective's composition (trainer/objective.py): terms registered by name and turned on
by the config add in one place, each logs what the run's "loss" metric shows, and the stock
task's anchor and balance terms (trainer/tasks/decisions.py) behave on a rank without anchor
rows (they still take part: the balance term is a collective)."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.config import TrainConfig
from trainer.objective import Scored, Term, compose
from trainer.tasks.decisions import anchor_term
from trainer.types import RolloutBatch


def test_compose_adds_the_terms_and_merges_their_metrics():
    a = torch.tensor(1.5, requires_grad=True)
    b = torch.tensor(-0.25, requires_grad=True)
    loss, logged, metrics = compose([Term(a * 2, 3.0, {"kl": 0.1}),
                                     Term(b, -0.25, {"anchor_nll": 0.7}),
                                     Term(b * 4, 0.5, {"balance_share": 0.4})])
    assert float(loss.detach()) == pytest.approx(3.0 - 0.25 - 1.0)
    assert logged == pytest.approx(3.0 - 0.25 + 0.5)  # the logged values, not the tensors
    assert metrics == {"kl": 0.1, "anchor_nll": 0.7, "balance_share": 0.4}
    loss.backward()
    assert float(a.grad) == 2.0 and float(b.grad) == 5.0


def _scored(tc, side):
    """A micro-batch as the terms see it, with only what the anchor term reads."""
    return Scored(tc, None, None, None, None, {}, None, {}, {"anchor": side}, None, 0,
                  torch.device("cpu"))


def test_a_rank_without_anchor_rows_adds_nothing_but_still_balances():
    tc = TrainConfig(anchor_coef=2.0, balance_coef=3.0)
    held, term = anchor_term(_scored(tc, None))
    assert float(held.loss) == 0.0 and held.logged == 0.0 and held.metrics == {}
    assert float(term.loss) == 0.0 and term.metrics == {}
    rl = torch.tensor(0.5, requires_grad=True)
    loss, logged, _ = compose([Term(rl * 1.0, 0.5), held, term])
    loss.backward()  # the rank's backward runs with the policy term's gradient alone
    assert logged == 0.5 and float(rl.grad) == 1.0
    # without the balance term the anchor term is one Term
    assert len(anchor_term(_scored(TrainConfig(anchor_coef=2.0), None))) == 1


def test_the_balance_term_weighs_the_kl_and_logs_the_mean_share(monkeypatch):
    from trainer.tasks import decisions

    shares = torch.tensor([[0.9, 0.1], [0.7, 0.3]], requires_grad=True)
    prior = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    monkeypatch.setattr(decisions, "anchor_terms",
                        lambda *a: (torch.tensor(0.0), shares, prior))
    rows = RolloutBatch.teacher_forced([[1]], [[2]], 0)
    _, term = anchor_term(_scored(TrainConfig(balance_coef=3.0), rows))
    kl = 0.8 * math.log(1.6) + 0.2 * math.log(0.4)  # KL((0.8, 0.2) || (0.5, 0.5))
    assert float(term.loss.detach()) == pytest.approx(3.0 * kl, rel=1e-6)
    assert term.logged == pytest.approx(3.0 * kl, rel=1e-6)  # one process: world size 1
    assert term.metrics["balance_share"] == pytest.approx(0.8)


def test_terms_are_registered_by_name_and_turned_on_by_the_config():
    """The core has the policy-gradient term only; the decision machinery is the stock task's
    contribution, registered when its module loads and on where the config says."""
    from trainer.objective import TERMS, active_terms, needed_scores

    assert "rl" in TERMS
    plain = TrainConfig(pg_tokens="all")
    assert [t.name for t in active_terms(plain)] == ["rl"] and needed_scores(plain) == set()
    demo = TrainConfig(pg_tokens="decision", anchor_coef=2.0, balance_coef=2.0)
    assert [t.name for t in active_terms(demo)] == ["rl", "anchor"]
    assert needed_scores(demo) == {"choice_lse"}
