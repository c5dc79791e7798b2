"""GRPO math against values computed by hand."""

import math

import pytest
import torch

from trainer.grpo import (
    ADVANTAGE_ESTIMATORS,
    LOSS_AGGREGATIONS,
    TOKEN_SELECTIONS,
    LossSettings,
    grpo_advantages,
    grpo_loss,
    k3_kl,
)


def test_grpo_advantages_hand_values():
    # group 1: rewards 1, 0  -> mean 0.5, sample std sqrt(0.5) -> +-0.5/0.70711 = +-0.70711
    # group 2: rewards 0.2, 0.2 -> all equal -> zeros
    adv = grpo_advantages(torch.tensor([1.0, 0.0, 0.2, 0.2]), group_size=2)
    assert adv.tolist() == pytest.approx([0.70710, -0.70710, 0.0, 0.0], abs=1e-4)


def test_grpo_advantages_three_member_group():
    # rewards 0, 0.6, 0.9: mean 0.5, sample var ((.25)+(.01)+(.16))/2 = 0.21
    std = math.sqrt(0.21)
    adv = grpo_advantages(torch.tensor([0.0, 0.6, 0.9]), group_size=3)
    assert adv.tolist() == pytest.approx([-0.5 / std, 0.1 / std, 0.4 / std], abs=1e-4)


def test_all_equal_group_gives_zero_not_nan():
    adv = grpo_advantages(torch.full((8,), 0.6), group_size=8)
    assert torch.equal(adv, torch.zeros(8))


def test_dr_grpo_is_mean_centred_only():
    adv = ADVANTAGE_ESTIMATORS["dr_grpo"](torch.tensor([1.0, 0.0, 0.4, 0.2]), 2)
    assert adv.tolist() == pytest.approx([0.5, -0.5, 0.1, -0.1])


def test_advantage_rejects_ragged_groups():
    with pytest.raises(ValueError, match="group_size=3"):
        grpo_advantages(torch.zeros(4), group_size=3)


def test_k3_kl_hand_values():
    logp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.0, -1.5]])
    # equal -> 0 ; delta = 0.5 -> e^0.5 - 0.5 - 1 = 0.148721
    assert k3_kl(logp, ref).tolist()[0] == pytest.approx([0.0, 0.1487212707], abs=1e-7)
    assert (k3_kl(torch.randn(4, 5), torch.randn(4, 5)) >= 0).all()


def _loss(logp, old, adv, mask, **kw):
    return grpo_loss(logp, old, None, old.clone(), adv, mask, LossSettings(**kw))


def test_clipping_positive_advantage_caps_ratio():
    # ratio e^0.5 = 1.6487 > 1.2 with A=+1: objective min(1.6487, 1.2) = 1.2 -> loss -1.2
    old = torch.zeros(1, 1)
    logp = torch.full((1, 1), 0.5, requires_grad=True)
    loss, stats = _loss(logp, old, torch.tensor([1.0]), torch.ones(1, 1))
    assert loss.item() == pytest.approx(-1.2, abs=1e-6)
    assert stats.clip_frac == 1.0
    loss.backward()
    assert logp.grad.abs().sum() == 0  # clipped: no gradient


def test_clipping_negative_advantage_keeps_pessimistic_term():
    # ratio e^0.5 with A=-1: min(-1.6487, -1.2) = -1.6487 -> loss +1.6487, gradient flows
    old = torch.zeros(1, 1)
    logp = torch.full((1, 1), 0.5, requires_grad=True)
    loss, _ = _loss(logp, old, torch.tensor([-1.0]), torch.ones(1, 1))
    assert loss.item() == pytest.approx(math.exp(0.5), abs=1e-6)
    loss.backward()
    assert logp.grad.item() == pytest.approx(math.exp(0.5), abs=1e-6)


def test_on_policy_gradient_is_minus_advantage_over_length():
    # ratio 1 (old = logp detached): d loss / d logp_t = -A / len(seq) on valid tokens
    logp = torch.tensor([[-1.0, -2.0, -3.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, _ = _loss(logp, logp.detach(), torch.tensor([2.0]), mask)
    loss.backward()
    assert logp.grad.tolist()[0] == pytest.approx([-1.0, -1.0, 0.0])


def test_kl_term_is_added_with_coefficient():
    logp = torch.tensor([[-2.0]])
    ref = torch.tensor([[-1.5]])
    loss, stats = grpo_loss(logp, logp, ref, logp, torch.tensor([0.0]), torch.ones(1, 1),
                            LossSettings(kl_coef=0.1, is_cap=2.0))
    assert loss.item() == pytest.approx(0.1 * 0.1487212707, abs=1e-7)
    assert stats.kl == pytest.approx(0.1487212707, abs=1e-7)


def test_truncated_importance_weight():
    # learner old logp -1, worker logp -3 -> raw weight e^2 = 7.39, truncated at is_cap=2
    logp = torch.tensor([[-1.0]], requires_grad=True)
    rollout = torch.tensor([[-3.0]])
    loss, stats = grpo_loss(logp, logp.detach(), None, rollout, torch.tensor([1.0]),
                            torch.ones(1, 1), LossSettings())
    assert stats.is_weight == pytest.approx(2.0)
    assert stats.is_truncated_frac == 1.0
    assert loss.item() == pytest.approx(-2.0)


def test_aggregations_differ_on_unequal_lengths():
    per_token = torch.tensor([[1.0, 1.0, 1.0, 1.0], [3.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    assert LOSS_AGGREGATIONS["seq-mean-token-mean"](per_token, mask).item() == pytest.approx(2.0)
    assert LOSS_AGGREGATIONS["token-mean"](per_token, mask).item() == pytest.approx(7 / 5)


def test_high_entropy_selection_keeps_the_top_share_of_valid_tokens():
    entropy = torch.tensor([[0.1, 2.0, 0.3, 9.0], [1.5, 0.2, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])  # 9.0 is padding
    pick = TOKEN_SELECTIONS["high_entropy"]
    assert pick(entropy, mask, 0.4, None).tolist() == [[0, 1, 0, 0], [1, 0, 0, 0]]  # 2 of 5
    assert pick(entropy, mask, 0.01, None).tolist() == [[0, 1, 0, 0], [0, 0, 0, 0]]  # at least 1
    assert torch.equal(pick(entropy, mask, 1.0, None), mask)
    assert torch.equal(TOKEN_SELECTIONS["all"](entropy, mask, 0.2, None), mask)


def test_pg_weight_gates_the_policy_gradient_but_not_the_kl():
    logp = torch.tensor([[-1.0, -2.0, -3.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, -1.5, -1.5]])
    mask = torch.ones(1, 3)
    weight = torch.tensor([[0.0, 1.0, 0.0]])
    loss, _ = grpo_loss(logp, logp.detach(), ref, logp.detach(), torch.tensor([3.0]), mask,
                        LossSettings(kl_coef=0.1, is_cap=2.0), pg_weight=weight)
    loss.backward()
    # pg: -A/len on the selected token only; kl: d/dlogp k3 = -(exp(ref - logp) - 1) on all
    kl_grad = [-(math.exp(r - lp) - 1.0) * 0.1 / 3 for r, lp in ((-1.5, -1), (-1.5, -2),
                                                                   (-1.5, -3))]
    want = [kl_grad[0], kl_grad[1] - 1.0, kl_grad[2]]
    assert logp.grad[0].tolist() == pytest.approx(want, abs=1e-6)


def test_a_view_among_options_moves_probability_among_them_only():
    """With the view of a decision's options (``trainer/tasks/decisions.among_options``:
    logp - log p(any option)), the policy gradient at a decision token is that of
    log p(token | one of the options): the options' total mass gets no gradient, and the
    ratio, importance weight and KL are as without it."""
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0]], requires_grad=True)  # one position, V=4
    logp_all = torch.log_softmax(logits, -1)
    token, options = 0, [0, 1]  # sampled token 0, chosen between tokens 0 and 1
    logp = logp_all[:, token][:, None]  # [N=1, T=1]
    lse = torch.logsumexp(logp_all[:, options], -1)[:, None]
    adv, mask = torch.tensor([1.0]), torch.ones(1, 1)
    loss, st = grpo_loss(logp, logp.detach(), None, logp.detach(), adv, mask, LossSettings(),
                         pg_view=lambda lp, old: (lp - lse, old - lse.detach()))
    loss.backward()
    g = logits.grad[0]
    p = torch.softmax(logits.detach()[0, options], -1)  # p(token | options)
    # d(-log p(0 | {0, 1}))/dlogits: (p0 - 1, p1) on the options, nothing elsewhere
    assert torch.allclose(g[:2], torch.tensor([p[0] - 1, p[1]]), atol=1e-6)
    assert torch.allclose(g[2:], torch.zeros(2), atol=1e-7)
    assert float(g[:2].sum()) == pytest.approx(0.0, abs=1e-6)  # the options' mass: untouched
    assert st.clip_frac == 0.0 and st.is_weight == pytest.approx(1.0)
    # without it the same step pushes mass into the other tokens too
    logits.grad = None
    logp = torch.log_softmax(logits, -1)[:, token][:, None]
    grpo_loss(logp, logp.detach(), None, logp.detach(), adv, mask, LossSettings())[0].backward()
    assert float(logits.grad[0, 2:].abs().sum()) > 0.1
