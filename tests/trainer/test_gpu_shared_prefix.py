"""The shared-prefix layout on CUDA (marked ``gpu``; `make gpu-check` runs it): the additive
4-D mask, and the attention by blocks (trainer/prefix_attention.py: a boolean mask on
repeated heads), through SDPA's CUDA kernels give one row per completion's log-probs and LoRA
gradients, float32 within 1e-4 (TF32 off, PyTorch's default for matmuls), bfloat16 within the
first-micro-batch check's own tolerance. CPU counterpart: tests/trainer/test_shared_prefix.py."""

from __future__ import annotations

import pytest
import torch

from tests.trainer.test_shared_prefix import _both_ways, _groups, _policy, _qwen_shaped
from trainer.shared_prefix import mismatch

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


@pytest.mark.parametrize("blocks", [False, True], ids=["mask", "blocks"])
@pytest.mark.parametrize("tied", [True, False])
def test_float32_on_cuda_scores_the_same_both_ways(tmp_path, tied, blocks):
    model = _policy(_qwen_shaped(tmp_path, tied), device=CUDA, blocks=blocks)
    batch = _groups(320)
    (lp, _, grads), (lp2, _, grads2) = _both_ways(model, batch, CUDA)
    m = batch.completion_mask.bool()
    assert (lp - lp2)[m].abs().max() <= 1e-4
    for name, g in grads.items():
        assert (g - grads2[name]).norm() <= 1e-4 * g.norm() + 1e-9, name


@pytest.mark.parametrize("blocks", [False, True], ids=["mask", "blocks"])
def test_bfloat16_on_cuda_passes_the_layout_check(tmp_path, blocks):
    model = _policy(_qwen_shaped(tmp_path, False), device=CUDA, dtype="bfloat16",
                    blocks=blocks)
    batch = _groups(320, prompts=(300, 200), group=8)
    (lp, _, _), (lp2, _, _) = _both_ways(model, batch, CUDA)
    assert mismatch(lp, lp2, batch.completion_mask, torch.bfloat16) is None
    assert torch.isfinite(lp2[batch.completion_mask.bool()]).all()
