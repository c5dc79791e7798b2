"""Learning-rate schedules and the balance term, against values computed by hand; the
balance term's cross-rank reduction in 2 real gloo processes."""

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from trainer.schedules import LR_SCHEDULES, lr_factor
from trainer.tasks.decisions import balance_kl


def test_constant_is_one_everywhere():
    assert [lr_factor(k, 10, "constant") for k in (1, 5, 10)] == [1.0, 1.0, 1.0]


def test_linear_and_cosine_start_at_the_peak_and_end_just_above_the_floor():
    # 10 steps: progress (k - 1) / 10, so step 1 runs at the peak and step 10 at 0.1 / ...
    assert lr_factor(1, 10, "linear") == 1.0
    assert lr_factor(10, 10, "linear") == pytest.approx(0.1)
    assert lr_factor(6, 10, "cosine") == pytest.approx(0.5)  # halfway
    assert lr_factor(10, 10, "cosine") == pytest.approx(0.5 * (1 + math.cos(0.9 * math.pi)))
    assert lr_factor(10, 10, "linear", min_ratio=0.2) == pytest.approx(0.2 + 0.8 * 0.1)


def test_warmup_ramps_linearly_then_the_shape_starts():
    got = [lr_factor(k, 12, "linear", warmup=4) for k in range(1, 7)]
    assert got[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert got[4] == 1.0 and got[5] == pytest.approx(1 - 1 / 8)


def test_steps_past_the_end_stay_at_the_floor():
    assert lr_factor(50, 10, "cosine", min_ratio=0.1) == pytest.approx(0.1)
    assert set(LR_SCHEDULES) == {"constant", "linear", "cosine"}


def _by_hand(shares: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    mean, target = shares.mean(0), prior.mean(0)
    return (mean * (mean / target).log()).sum()


def test_balance_kl_is_the_kl_of_the_mean_share_to_the_prior():
    shares = torch.tensor([[0.9, 0.1], [0.7, 0.3]], requires_grad=True)
    prior = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    kl, mean = balance_kl(shares, prior)
    # mean (0.8, 0.2): 0.8 ln 1.6 + 0.2 ln 0.4
    assert float(kl.detach()) == pytest.approx(0.8 * math.log(1.6) + 0.2 * math.log(0.4), rel=1e-6)
    assert mean.tolist() == pytest.approx([0.8, 0.2])
    kl.backward()
    ref = shares.detach().clone().requires_grad_(True)
    _by_hand(ref, prior).backward()
    assert torch.allclose(shares.grad, ref.grad)
    # balanced already: nothing to hold, no gradient
    even = torch.tensor([[0.8, 0.2], [0.2, 0.8]], requires_grad=True)
    kl, _ = balance_kl(even, prior)
    kl.backward()
    assert float(kl.detach()) == pytest.approx(0.0, abs=1e-7)
    assert torch.allclose(even.grad, even.grad[0].expand_as(even.grad))  # one constant: no pull


def test_balance_kl_without_rows_is_zero_and_keeps_the_graph():
    kl, mean = balance_kl(torch.zeros((0, 2), requires_grad=True), torch.zeros((0, 2)))
    assert float(kl.detach()) == 0.0 and mean.tolist() == [0.0, 0.0]
    kl.backward()  # callable: a rank without anchor rows still takes part


ROWS = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.95, 0.05], [0.5, 0.5]])
PRIOR = torch.tensor([[0.5, 0.5]] * 5)


def _rank(rank: int, port: int, split, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    a, b = split[rank]
    shares = ROWS[a:b].clone().requires_grad_(True)
    if a == b:  # a rank without anchor rows: no options known there
        shares = torch.zeros((0, 1), requires_grad=True)
    kl, mean = balance_kl(shares, PRIOR[a:b] if a < b else torch.zeros((0, 1)))
    kl.backward()
    # DeepSpeed averages the ranks' parameter gradients: each row's share of it is its
    # gradient on its own rank divided by the world size
    out.put((rank, float(kl), mean.tolist(), (shares.grad / 2).tolist()))
    dist.destroy_process_group()


@pytest.mark.parametrize("split", [[(0, 3), (3, 5)], [(0, 5), (5, 5)]],
                         ids=["rows-on-both", "rank1-without-rows"])
def test_balance_kl_across_two_gloo_ranks_equals_one_process_on_all_rows(split):
    """Each rank sees its rows; the mean share is every rank's, and the ranks' averaged
    gradients (DeepSpeed's reduction) equal the one-process gradient of the global KL. A
    rank without rows takes part in the reduction and does not hang the other."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = 29000 + os.getpid() % 1000 + (7 if split[1][0] == 5 else 0)
    procs = [ctx.Process(target=_rank, args=(r, port, split, out)) for r in range(2)]
    for p in procs:
        p.start()
    got = sorted(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    whole = ROWS.clone().requires_grad_(True)
    ref = _by_hand(whole, PRIOR)
    ref.backward()
    for rank, kl, mean, grad in got:
        assert kl / 2 == pytest.approx(float(ref.detach()), rel=1e-5)  # scaled by the world size
        a, b = split[rank]
        if a == b:  # the global value, no gradient of its own
            assert grad == [] and kl / 2 == pytest.approx(float(ref.detach()), rel=1e-5)
            continue
        assert mean == pytest.approx(ROWS.mean(0).tolist(), rel=1e-6)
        assert torch.allclose(torch.tensor(grad), whole.grad[a:b], atol=1e-6)
