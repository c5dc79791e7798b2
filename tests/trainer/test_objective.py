"""The objective's composition (trainer/objective.py): terms add in one place, each logs
what the run's "loss" metric shows, and the anchor and balance terms behave on a rank
without anchor rows (they still take part: the balance term is a collective)."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.config import TrainConfig
from trainer.objective import Term, anchor_term, balance_term, compose


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


def test_a_rank_without_anchor_rows_adds_nothing_but_still_balances():
    tc = TrainConfig(anchor_coef=2.0, balance_coef=3.0)
    held, share, prior = anchor_term(tc, model=None, chunk=None, pad_id=0,
                                     device=torch.device("cpu"))
    assert float(held.loss) == 0.0 and held.logged == 0.0 and held.metrics == {}
    assert share.shape == prior.shape == (0, 1)
    term = balance_term(tc, share, prior)
    assert float(term.loss) == 0.0 and term.metrics == {}
    rl = torch.tensor(0.5, requires_grad=True)
    loss, logged, _ = compose([Term(rl * 1.0, 0.5), held, term])
    loss.backward()  # the rank's backward runs with the policy term's gradient alone
    assert logged == 0.5 and float(rl.grad) == 1.0


def test_the_balance_term_weighs_the_kl_and_logs_the_mean_share():
    tc = TrainConfig(balance_coef=3.0)
    shares = torch.tensor([[0.9, 0.1], [0.7, 0.3]], requires_grad=True)
    term = balance_term(tc, shares, torch.tensor([[0.5, 0.5], [0.5, 0.5]]))
    kl = 0.8 * math.log(1.6) + 0.2 * math.log(0.4)  # KL((0.8, 0.2) || (0.5, 0.5))
    assert float(term.loss.detach()) == pytest.approx(3.0 * kl, rel=1e-6)
    assert term.logged == pytest.approx(3.0 * kl, rel=1e-6)  # one process: world size 1
    assert term.metrics["balance_share"] == pytest.approx(0.8)
