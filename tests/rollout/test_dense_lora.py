"""The dense single-adapter LoRA ops against vLLM-CPU's own, and the plugin's gating."""

import os
import subprocess
import sys

import pytest
import torch

from rollout import dense_lora

ops = pytest.importorskip("vllm.lora.ops.torch_ops.lora_ops")
MAX_LORAS, RANK, HIDDEN, OUT = 3, 8, 48, 40


class Module:  # stands in for punica_cpu's namespace: the names it imported from vLLM
    def __init__(self):
        for name in dense_lora.OPS:
            setattr(self, name, getattr(ops, name))


@pytest.fixture(scope="module")
def patched():
    m = Module()
    assert sorted(dense_lora.install(m)) == sorted(dense_lora.OPS)
    assert dense_lora.install(m) == []  # idempotent
    return m


def _data(tokens: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, HIDDEN, generator=g)
    a = torch.randn(MAX_LORAS, 1, RANK, HIDDEN, generator=g)  # vLLM's stacked 4-D layout
    b = torch.randn(MAX_LORAS, 1, OUT, RANK, generator=g)
    return x, a, b


@pytest.mark.parametrize("indices", [[1] * 7, [0, 2, 2, 1, 0, 1, 2]])  # one slot, mixed
def test_shrink_and_expand_match_vllms_ops(patched, indices):
    x, a, b = _data(len(indices))
    idx = torch.tensor(indices)
    for impl in (ops, patched):
        mid = torch.zeros(len(indices), RANK)
        impl.bgmv_shrink(x, a, mid, idx, 0.5)
        out = torch.full((len(indices), OUT + 4), 1.0)  # padding wider than the adapter's
        impl.bgmv_expand(mid, b, out, idx, True)
        sliced = torch.zeros(len(indices), 2 * OUT)
        impl.bgmv_expand_slice(mid, b, sliced, idx, OUT, OUT, False)
        if impl is ops:
            want = (mid, out, sliced)
    for got, ref in zip((mid, out, sliced), want, strict=True):
        # float32 rounding grows with |value| (up to ~35 here); atol covers sums that cancel to ~0
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert sliced[:, :OUT].abs().sum() == 0  # outside the slice untouched


def test_prefill_forms_expand_per_sequence_indices(patched):
    seq = torch.tensor([3, 1, 4])
    x, a, b = _data(int(seq.sum()), seed=1)
    start = torch.tensor([0, 3, 4])
    for lora in ([2, 2, 2], [2, 0, 2]):
        idx = torch.tensor(lora)
        res = []
        for impl in (ops, patched):
            mid = torch.zeros(len(x), RANK)
            impl.sgmv_shrink(x, a, mid, start, seq, idx, 3, 4, len(x), 2.0)
            out = torch.zeros(len(x), OUT)
            impl.sgmv_expand(mid, b, out, start, seq, idx, 3, 4, len(x), False)
            res.append(out)
        torch.testing.assert_close(res[1], res[0], rtol=0, atol=1e-4)


def test_same_slot():
    assert dense_lora.same_slot(torch.tensor([2, 2, 2])) == 2
    assert dense_lora.same_slot(torch.tensor([2, 1])) is None
    assert dense_lora.same_slot(torch.tensor([], dtype=torch.long)) is None
    assert dense_lora.same_slot(torch.tensor([-1, -1])) == -1  # read as vLLM reads it


def _registered(env_value: str | None) -> str:
    code = ("from rollout import dense_lora; dense_lora.register();"
            "from vllm.lora.punica_wrapper import punica_cpu;"
            "print(getattr(punica_cpu, '_stonk_dense_lora', False))")
    env = {k: v for k, v in os.environ.items() if k != dense_lora.ENV}
    if env_value is not None:
        env[dense_lora.ENV] = env_value
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, check=True).stdout.strip().splitlines()[-1]


def test_the_plugin_acts_only_when_the_launcher_asks():
    assert _registered(None) == "False" and _registered("0") == "False"
    assert _registered("1") == "True"


def test_vllm_finds_the_plugin_by_its_entry_point():
    from importlib.metadata import entry_points

    found = {e.name: e.value for e in entry_points(group="vllm.general_plugins")}
    assert found.get("stonk_dense_lora") == "rollout.dense_lora:register"
    assert found.get("stonk_cpu_engine_fork") == "rollout.cpu_engine_fork:register"
