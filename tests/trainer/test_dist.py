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
from trainer.tasks.decisions import balance_kl

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


def _dotted(node: ast.expr, names: dict[str, str]) -> str | None:
    """``a.b.c`` as the absolute name it refers to, through the file's imports and aliases."""
    attrs = []
    while isinstance(node, ast.Attribute):
        attrs.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([names.get(node.id, node.id), *reversed(attrs)])


def _collective_calls(source: str) -> list[int]:
    """Lines that call a torch.distributed collective, however it is spelled: through
    ``torch.distributed``, a module alias (``import torch.distributed as d``, ``from torch
    import distributed``, ``d = torch.distributed``) or a name imported from it."""
    tree = ast.parse(source)
    names: dict[str, str] = {}  # a local name -> the absolute name it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    names[a.asname] = a.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for a in node.names:
                names[a.asname or a.name] = f"{node.module}.{a.name}"
        elif (isinstance(node, ast.Assign) and len(node.targets) == 1
              and isinstance(node.targets[0], ast.Name)):
            target = _dotted(node.value, names)
            if target is not None and target.startswith("torch.distributed"):
                names[node.targets[0].id] = target
    return [node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.Call)
            and (name := _dotted(node.func, names)) is not None
            and name.startswith("torch.distributed.")
            and name.rsplit(".", 1)[1] in COLLECTIVES]


@pytest.mark.parametrize("source", [
    "import torch.distributed as dist\ndist.all_reduce(t)",
    "import torch.distributed as td\ntd.broadcast(t, 0)",
    "import torch\ntorch.distributed.all_reduce(t)",
    "import torch.distributed\ntorch.distributed.all_gather(out, t)",
    "from torch import distributed\ndistributed.reduce(t, 0)",
    "from torch.distributed import all_reduce\nall_reduce(t)",
    "from torch.distributed import all_reduce as ar\nar(t)",
    "import torch\nd = torch.distributed\nd.all_reduce(t)",
    "import torch.distributed.nn.functional as F\nF.all_reduce(t)",
    "def f(t):\n    from torch.distributed import scatter\n    return scatter(t)",
])
def test_the_collective_detector_sees_each_spelling(source):
    assert len(_collective_calls(source)) == 1


@pytest.mark.parametrize("source", [
    "from functools import reduce\nreduce(f, xs)",
    "from trainer.dist import all_reduce_\nall_reduce_(t)",
    "import torch.distributed as dist\ndist.get_rank()",
])
def test_the_collective_detector_ignores_other_calls(source):
    assert _collective_calls(source) == []


def test_only_trainer_dist_calls_collectives():
    """Every collective goes through trainer/dist.py, where the device rule is kept."""
    offenders = []
    for root in ("trainer", "rollout", "launch"):
        for path in (REPO / root).rglob("*.py"):
            if path == REPO / "trainer" / "dist.py":
                continue
            offenders += [f"{path.relative_to(REPO)}:{line}"
                          for line in _collective_calls(path.read_text())]
    assert offenders == []
    assert _collective_calls((REPO / "trainer" / "dist.py").read_text())  # the rule can see


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
