"""Cross-rank collectives: each one hands the process group a tensor on the learner's device
(NCCL takes CUDA tensors only; gloo, the CPU backend, takes anything, so a CPU run hides the
mistake), no other module calls a collective, and the helpers' values over 2 real gloo
ranks."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from trainer import dist as tdist
from trainer.objective import balance_kl

REPO = Path(__file__).resolve().parents[2]
COLLECTIVES = {"all_reduce", "all_gather", "all_gather_into_tensor", "broadcast", "reduce",
               "reduce_scatter", "reduce_scatter_tensor", "gather", "scatter", "all_to_all"}
# a device other than the CPU that a CPU machine has: where the learner's tensors would be on
# a GPU. Nothing can be read back from it, so the recorder stops the helper once it has seen
# the tensor.
ELSEWHERE = torch.device("meta")


class Recorded(Exception):
    pass


@pytest.fixture
def recording_group(monkeypatch):
    """A 2-rank process group that records the device of each tensor a collective gets."""
    seen: list[torch.device] = []

    def all_reduce(t, op=None, group=None, async_op=False):
        seen.append(t.device)
        raise Recorded

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 0)
    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    return seen


def test_metric_means_reduce_on_the_given_device(recording_group):
    with pytest.raises(Recorded):
        tdist.mean_across_ranks({"loss": 0.5, "reward/mean": 0.25}, ELSEWHERE)
    assert recording_group == [ELSEWHERE]


def test_checkpoint_agreement_reduces_on_the_given_device(recording_group):
    with pytest.raises(Recorded):
        tdist.all_ranks_ok(True, ELSEWHERE)
    assert recording_group == [ELSEWHERE]


def test_balance_term_reduces_on_the_shares_device(recording_group):
    shares = torch.full((3, 2), 0.5, device=ELSEWHERE)
    with pytest.raises(Recorded):
        balance_kl(shares, torch.full((3, 2), 0.5, device=ELSEWHERE))
    assert recording_group == [ELSEWHERE]


def test_checkpoint_save_hands_the_learners_device_to_the_agreement(monkeypatch, tmp_path):
    """checkpoint.save asks every rank for agreement on ``learner.device``."""
    from trainer import checkpoint
    from trainer.config import StageConfig

    devices = []

    def agree(ok, device):
        devices.append(device)
        return False  # stop at the first agreement: nothing is written

    monkeypatch.setattr(checkpoint, "all_ranks_ok", agree)

    class Learner:
        device = ELSEWHERE

        def trainable_bytes(self):
            return 0

    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.save(StageConfig(), tmp_path, 1, learner=Learner(), sampler=None,
                        adapter_dir=tmp_path / "a", rank=1, world=2)
    assert devices == [ELSEWHERE]


def test_only_trainer_dist_calls_collectives():
    """Every collective goes through trainer/dist.py, where the device rule is kept."""
    offenders = []
    for root in ("trainer", "rollout", "launch"):
        for path in (REPO / root).rglob("*.py"):
            if path == REPO / "trainer" / "dist.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr in COLLECTIVES
                        and isinstance(node.func.value, ast.Name)
                        and node.func.value.id in ("dist", "torch.distributed")):
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert offenders == []


def _rank(rank: int, port: int, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    cpu = torch.device("cpu")
    means = tdist.mean_across_ranks({"a": float(rank), "b": 10.0 * (rank + 1)}, cpu)
    out.put((rank, means, tdist.all_ranks_ok(True, cpu), tdist.all_ranks_ok(rank == 0, cpu)))
    dist.destroy_process_group()


def test_helpers_over_two_gloo_ranks():
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = 29000 + os.getpid() % 1000 + 13
    procs = [ctx.Process(target=_rank, args=(r, port, out)) for r in range(2)]
    for p in procs:
        p.start()
    got = sorted(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for _, means, all_true, one_false in got:
        assert means == {"a": 0.5, "b": 15.0}
        assert all_true is True and one_false is False
