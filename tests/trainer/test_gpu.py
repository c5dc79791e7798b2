"""What only a GPU can show (marked ``gpu``: skipped without CUDA; `make gpu-check` runs
them): the learner's collectives under NCCL, a 4-bit CUDA learner's forward and backward,
and a CUDA vLLM worker that loads an adapter in place and samples what the learner scores.
Their CPU counterparts: tests/trainer/test_dist.py, tests/trainer/test_logprobs.py,
tests/integration/test_rollout_worker.py."""

from __future__ import annotations

import socket

import pytest
import torch

from rollout.adapter_store import AdapterStore
from trainer.config import StageConfig
from trainer.logprobs import build_inputs, token_logprobs
from trainer.policy import load_policy
from trainer.tasks.decisions import balance_kl
from trainer.types import RolloutBatch

pytestmark = pytest.mark.gpu
PROMPTS = [[1, 40, 41, 42, 43, 44], [1, 50, 51]]
COMPLETIONS = [[60, 61, 62, 63], [70, 71]]
# bf16 worker against a float32 recomputation: rounding, not a different policy, below this
BF16_GAP = 0.05


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from launch.embedded.tiny_model import build

    return build(str(tmp_path_factory.mktemp("model") / "tiny"))


def _batch() -> RolloutBatch:
    t = max(map(len, COMPLETIONS))
    ids = torch.zeros((len(COMPLETIONS), t), dtype=torch.long)
    mask = torch.zeros((len(COMPLETIONS), t))
    for i, c in enumerate(COMPLETIONS):
        ids[i, :len(c)], mask[i, :len(c)] = torch.tensor(c), 1
    zeros = torch.zeros(len(COMPLETIONS))
    return RolloutBatch(PROMPTS, ids, mask, torch.zeros_like(mask), zeros, zeros, zeros.long(),
                        group_size=1)


def test_collectives_under_nccl_with_one_rank():
    import torch.distributed as dist

    from trainer import dist as tdist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cuda = torch.device("cuda", 0)
    torch.cuda.set_device(cuda)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0,
                            world_size=1)
    try:
        assert tdist.mean_across_ranks({"a": 1.5, "b": -2.0}, cuda) == {"a": 1.5, "b": -2.0}
        assert tdist.all_ranks_ok(True, cuda) and not tdist.all_ranks_ok(False, cuda)
        shares = torch.tensor([[0.7, 0.3], [0.5, 0.5]], device=cuda, requires_grad=True)
        kl, mean = balance_kl(shares, torch.full((2, 2), 0.5, device=cuda))
        kl.backward()
        assert mean.tolist() == pytest.approx([0.6, 0.4]) and shares.grad is not None
        with pytest.raises((RuntimeError, ValueError)):  # what the helpers keep us from
            dist.all_reduce(torch.zeros(1))
    finally:
        dist.destroy_process_group()


def test_4bit_learner_forward_and_backward_on_cuda(model_dir):
    import bitsandbytes as bnb

    cuda = torch.device("cuda", 0)
    cfg = StageConfig()
    cfg.model.name_or_path, cfg.model.dtype = str(model_dir), "bfloat16"
    cfg.model.load_in_4bit, cfg.train.gradient_checkpointing = True, True
    model = load_policy(cfg, cuda).train()
    four_bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert four_bit and all(m.weight.device.type == "cuda" for m in four_bit)
    batch = _batch()
    logp = token_logprobs(model, batch, 0, 1.0, cuda, chunk_tokens=3)
    ids, attn, pos, _ = build_inputs(batch.prompt_ids, batch.completion_ids,
                                     batch.completion_mask, 0)
    t = batch.completion_ids.shape[1]
    logits = model(input_ids=ids.to(cuda), attention_mask=attn.to(cuda),
                   position_ids=pos.to(cuda), logits_to_keep=t + 1).logits[:, :t].float()
    ref = torch.log_softmax(logits, -1).gather(-1, batch.completion_ids.to(cuda)[..., None])
    assert torch.allclose(logp, ref[..., 0], atol=1e-2)
    (logp * batch.completion_mask.to(cuda)).sum().backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora" in n]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_cuda_worker_loads_an_adapter_in_place_and_samples_what_the_learner_scores(
        model_dir, tmp_path):
    pytest.importorskip("vllm", reason="the rollout engine is not installed here")
    from rollout.client import RolloutClient
    from rollout.server import WorkerPool, WorkerSpec
    from tests.integration.helpers import hf_logprobs

    cfg = StageConfig()
    cfg.model.name_or_path, cfg.model.dtype = str(model_dir), "float32"
    torch.manual_seed(0)
    model = load_policy(cfg, torch.device("cpu")).eval()
    store, states = AdapterStore(tmp_path / "store"), []
    for version in (0, 1):
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.2)
        states.append({k: v.clone() for k, v in model.state_dict().items() if "lora" in k})
        store.publish(version, lambda d: model.save_pretrained(d))
    spec = WorkerSpec(model=str(model_dir), port=8390, max_lora_rank=16, max_model_len=1024,
                      dtype="bfloat16", gpu_memory_utilization=0.3, enforce_eager=True)
    with WorkerPool([spec], tmp_path / "logs", startup_timeout=600) as pool:
        client = RolloutClient(pool.urls, timeout=300)
        client.publish(0, store.path(0))
        client.publish(1, store.path(1))  # in place, under the same name
        assert client.served_adapter_path(pool.urls[0]) == str(store.path(1).resolve())
        prompt = [1, 40, 41, 42, 43]
        (group,) = client.generate([prompt], n=4, max_tokens=16, seed=5)
    gaps = {}
    for version in (0, 1):
        model.load_state_dict(states[version], strict=False)
        diffs = [(hf_logprobs(model, prompt, c.token_ids) - torch.tensor(c.logprobs)).abs()
                 for c in group]
        gaps[version] = torch.cat(diffs).mean().item()
    assert gaps[1] < BF16_GAP, gaps
    assert gaps[0] > 3 * gaps[1], gaps
