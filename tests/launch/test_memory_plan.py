"""The memory plan (launch/planning/memory.py, memory_terms.py, model_shape.py): every GPU config fits
the card its header names, the terms against figures worked out by hand and against the
tensors autograd really keeps, preflight's refusal, and `stonk plan`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from launch.planning.memory import plan_memory
from launch.planning.memory_terms import GIB, activation_bytes, learner_memory, worker_memory
from launch.planning.model_shape import PromptLength, architecture, byte_bound, chatml
from tests.conftest import REPO
from trainer.config import ConfigError, from_dict, load_config

CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))
GPU_CONFIGS = [p for p in CONFIGS if load_config(p).launch.device == "cuda"]
QWEN = "Qwen/Qwen2.5-1.5B-Instruct"


def _header(path: Path) -> str:
    lines = path.read_text().splitlines()
    return " ".join(x for x in lines[:next(i for i, x in enumerate(lines) if not
                                           x.startswith("#"))])


def test_there_are_gpu_configs_and_an_11gb_one():
    names = {p.relative_to(REPO).as_posix() for p in GPU_CONFIGS}
    assert {"configs/stage1.yaml", "configs/stage1_11gb.yaml", "configs/node/stage1.yaml",
            "configs/multinode/stage1.yaml"} <= names


@pytest.mark.parametrize("path", GPU_CONFIGS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_gpu_config_fits_the_card_its_header_names(path):
    cfg = load_config(path)
    gb = cfg.launch.gpu_memory_gb
    assert gb > 0, "a GPU config names its card: launch.gpu_memory_gb"
    assert re.search(rf"\b{gb:g} GB\b", _header(path)), f"the header names the {gb:g} GB card"
    assert cfg.train.gradient_checkpointing
    plan = plan_memory(cfg, gb)  # the card named, whatever this machine has
    assert plan.problems == []
    for group in plan.groups:
        assert group.used <= group.capacity == gb * GIB


def test_stage1_is_colocated_on_one_24gb_card_and_11gb_is_float16():
    plan = plan_memory(load_config(REPO / "configs/stage1.yaml"), 24)
    assert [[p.role for p in g.processes] for g in plan.groups] == [["worker", "learner rank"]]
    small = load_config(REPO / "configs/stage1_11gb.yaml")
    assert (small.launch.gpu_memory_gb, small.model.dtype, small.rollout.dtype) == (
        11, "float16", "float16")


def test_qwen_architecture_from_the_table_matches_the_hub_figures():
    arch = architecture(QWEN)
    assert (arch.vocab, arch.hidden, arch.intermediate, arch.layers, arch.heads,
            arch.kv_heads, arch.head_dim, arch.tied) == (151936, 1536, 8960, 28, 12, 2, 128, True)
    # the model card's count; by hand: 28 x (2 x 1536^2 + 2 x 1536 x 256 + 3 x 1536 x 8960)
    # = 1,310,195,712 in the projections, + 151936 x 1536 embeddings + norms and biases
    assert arch.linear_params == 1_310_195_712
    assert arch.params == 1_543_714_304


def test_unknown_model_is_one_line_naming_the_field():
    with pytest.raises(ConfigError, match=r"^model\.name_or_path: nobody/no-such-model is "):
        architecture("nobody/no-such-model")
    # a path is no hub id: one line, not huggingface_hub's HFValidationError from its cache
    for path in ("/nonexistent", "./nope", "a/b/c"):
        with pytest.raises(ConfigError, match=rf"^model\.name_or_path: {path} is neither a "
                                              r"local model folder \(no such folder\) nor a hub id"):
            architecture(path)


def test_a_folder_without_config_json_says_so(tmp_path):
    with pytest.raises(ConfigError, match=r"model folder .* has no config\.json"):
        architecture(str(tmp_path))


def _stage1(**sets):
    return load_config(REPO / "configs/stage1.yaml", [f"{k}={v}" for k, v in sets.items()])


def test_worker_terms_by_hand():
    cfg = _stage1()
    w = worker_memory(architecture(QWEN), cfg, 400, 24 * GIB)
    assert w.get("weights") == 1_543_714_304 * 2  # bf16 ("auto": the checkpoint's dtype)
    assert w.kv_token_bytes == 2 * 28 * 2 * 128 * 2  # K and V, layers, KV heads, head_dim, bf16
    # 8 prompts x 1 rank / 1 worker x G 8 = 64 sequences of 400 + 384 = 784 tokens (49 blocks)
    assert w.step_tokens == 64 * 784 and w.kv_needed == 64 * 784 * 28672
    assert w.share == 0.35 * 24 * GIB
    # vLLM's share minus weights, LoRA slots, profiling peak, workspaces, CUDA graphs
    inside = sum(t.bytes for t in w.terms if t.name not in ("CUDA context", "KV cache"))
    assert w.kv_available == pytest.approx(w.share - inside)


def test_learner_terms_by_hand():
    arch, cfg = architecture(QWEN), _stage1()
    lm = learner_memory(arch, cfg, 400)
    nf4 = 0.5 + 1 / 64 + 4 / 16384  # codes, 8-bit absmax per 64, fp32 absmax per 256 blocks
    # DeepSpeed bf16 casts the rest (233,518,592 params) back to 2 bytes
    assert lm.get("base weights") == pytest.approx(1_310_195_712 * nf4 + 233_518_592 * 2)
    # LoRA r16 on q, k, v, o: 28 x 16 x (3072 + 1792 + 1792 + 3072) = 4,358,144 params;
    # bf16 weights and grads + fp32 master, its grad and two moments on 1 rank
    assert lm.get("LoRA + AdamW") == 4_358_144 * (2 + 2 + 4 + 4 + 8)
    assert lm.get("ZeRO-2 gradient bucket") == 50_000_000 * 2  # ds_config.json, bf16
    assert lm.get("logits") == 5 * 1024 * 151936 * 4
    plain = learner_memory(arch, _stage1(**{"model.load_in_4bit": "false"}), 400)
    assert plain.get("base weights") == 1_543_714_304 * 2
    chunk0 = learner_memory(arch, _stage1(**{"train.logits_chunk_tokens": 0}), 400)
    assert chunk0.get("logits") == 5 * (8 * 384) * 151936 * 4  # the whole micro-batch


def test_shared_prefix_tokens_by_hand():
    from launch.planning.memory_terms import micro_batch_tokens

    # configs/stage1.yaml's shape: 8 prompts x 8 completions, micro-batches of 8: one group
    # each, one packed row of P + 8 R instead of 8 rows of P + R
    cfg = _stage1()
    assert (cfg.rollout.group_size, cfg.train.micro_batch_size, cfg.rollout.max_tokens) == \
        (8, 8, 384)
    assert micro_batch_tokens(cfg, 400) == (400 + 8 * 384, 1, 400 + 8 * 384)
    # micro-batches of 6 over groups of 8: the second (rows 6-11) touches two groups
    six = _stage1(**{"train.micro_batch_size": 6, "train.prompts_per_rank": 3})
    assert micro_batch_tokens(six, 400) == (2 * 400 + 6 * 384, 2, 400 + 6 * 384)
    off = _stage1(**{"train.shared_prefix": "off"})
    assert micro_batch_tokens(off, 400) == (8 * (400 + 384), 0, 0)
    on, per_row = (learner_memory(architecture(QWEN), c, 400) for c in (cfg, off))
    # by blocks (Qwen's sdpa): one layer's (gradient checkpointing) queries of the 8
    # completions and the keys and values each reads (prompt + its own), Qwen's 1536 wide, bf16
    assert cfg.train.gradient_checkpointing
    assert on.get("shared-prefix blocks") == 2 * 1536 * 8 * (384 + 2 * (400 + 384))
    assert on.get("activations") < per_row.get("activations")
    # with the anchor, its answer is a ninth completion in each group's packed row (one
    # group a micro-batch here: 8 micro-batches of 8 prompts, one answer each), its logits
    # scored with the group's; per row it is a row of prompt + answer of its own
    anchored = {"train.anchor_coef": 1.0, "train.logits_chunk_tokens": 0}
    on = learner_memory(architecture(QWEN), _stage1(**anchored), 400)
    off = learner_memory(architecture(QWEN), _stage1(**anchored, **{
        "train.shared_prefix": "off"}), 400)
    assert on.get("shared-prefix blocks") == 2 * 1536 * 9 * (384 + 2 * (400 + 384))
    assert "micro-batch of 3856 tokens" in on.notes[0]  # 400 + 9 x 384
    assert "micro-batch of 7056 tokens" in off.notes[0]  # 8 x 784 + 784
    assert on.get("logits") == 5 * 9 * 384 * 151936 * 4
    assert off.get("logits") == 5 * 8 * 384 * 151936 * 4


def test_activation_formula_by_hand_on_a_toy_shape():
    from launch.planning.model_shape import Architecture

    toy = Architecture(vocab=10, hidden=8, intermediate=16, layers=2, heads=2, kv_heads=1,
                       head_dim=4, tied=True, dtype="float32", source="test")
    cfg = _stage1(**{"lora.r": 1, "lora.dropout": 0.0})
    # per layer and token: 4 x (2H + nh + 2) + 4 x (3H + 2kv + 4r) + 4 x 3I = 80 + 144 + 192;
    # after the decoder 4H + 4H = 64; 10 tokens
    assert activation_bytes(toy, cfg, 10, 4, 4, False) == 10 * (2 * 416 + 64)
    # checkpointing: each layer's input (4H) + what follows the decoder + one layer
    assert activation_bytes(toy, cfg, 10, 4, 4, True) == 10 * (2 * 32 + 64) + 10 * 416


@pytest.mark.parametrize("dropout,shared", [(0.0, False), (0.05, False), (0.0, "mask"),
                                            (0.0, "blocks")])
def test_activations_equal_what_autograd_keeps_on_the_embedded_model(warm_model, dropout,
                                                                      shared):
    """float32 on CPU: the bytes of every tensor the policy forward saves for the backward
    (autograd's saved-tensor hooks, parameters left out) against the formula."""
    import torch

    from trainer.config import StageConfig
    from trainer.logprobs import score_tokens
    from trainer.policy import load_policy
    from trainer.types import RolloutBatch

    cfg = StageConfig()
    cfg.model.name_or_path, cfg.model.dtype, cfg.launch.device = str(warm_model), "float32", "cpu"
    cfg.lora.dropout = dropout
    model = load_policy(cfg, torch.device("cpu")).train()
    if shared == "blocks":
        from trainer.prefix_attention import use_blocks

        assert use_blocks(model.get_base_model())
    n, p, t = 4, 24, 40
    ids = torch.randint(3, 400, (n, t))
    batch = RolloutBatch([list(range(3, 3 + p))] * n, ids, torch.ones(n, t), torch.zeros(n, t),
                         torch.zeros(n), torch.zeros(n), torch.zeros(n, dtype=torch.long),
                         group_size=n)
    params = {q.untyped_storage().data_ptr() for q in model.parameters()}
    kept: dict[int, int] = {}

    def pack(x):
        if x.untyped_storage().data_ptr() not in params:
            kept[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        score_tokens(model, batch, 0, 1.0, torch.device("cpu"), entropy=True,
                     chunk_tokens=1024, shared_prefix=bool(shared))
    # the shared-prefix layout: one packed row of p + n t tokens, and its float32 [L, L]
    # mask; by blocks instead each layer's gathered queries and the keys and values each
    # completion reads (heads repeated)
    arch = architecture(str(warm_model))
    tokens = p + n * t if shared else n * (p + t)
    extra = {False: 0, "mask": tokens * tokens * 4,
             "blocks": arch.layers * 4 * arch.hidden * n * (t + 2 * (p + t))}[shared]
    want = activation_bytes(arch, cfg, tokens, 4, 4, False) + extra
    # the first layer's input needs no gradient, so it keeps less: within 10 %
    assert sum(kept.values()) == pytest.approx(want, rel=0.10)


def test_prompt_length_is_the_models_tokens_with_the_chat_template(warm_model):
    from transformers import AutoTokenizer

    from launch.planning.model_shape import _tokenizer
    from trainer.rollouts import encode_prompt
    from trainer.tasks.base import Sample

    encode, render = _tokenizer(str(warm_model))
    tok = AutoTokenizer.from_pretrained(warm_model)
    for system, user in [("You are a market analyst.", "Stock: MSFT\n2012-01-03: 26.77 (+1.2%)"),
                         ("sys", "Will the next trading day's close be UP or DOWN?")]:
        sample = Sample("x", [{"role": "system", "content": system},
                              {"role": "user", "content": user}])
        ids = encode_prompt(tok, sample)
        chat = (("system", system), ("user", user))
        assert encode(render(chat)) == len(ids)
        assert byte_bound(render(chat)) >= len(ids)  # the estimate is a bound
        assert byte_bound(chatml(chat)) >= len(ids)  # so is the one without the tokenizer
    demo = load_config(REPO / "configs/demo/stage1.yaml")
    assert plan_memory(demo).prompt.how.startswith("measured")
    # any task's prompts: the prompts task's are measured the same way, system prompt or not
    prompts = load_config(REPO / "configs/demo/prompts.yaml")
    measured = plan_memory(prompts).prompt
    assert measured.how.startswith("measured")
    assert 20 < measured.tokens < plan_memory(demo).prompt.tokens


def test_preflight_refuses_naming_the_setting_with_the_numbers(monkeypatch):
    from launch.planning.preflight import PreflightError, check, memory_problems

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("launch.planning.memory._gpus_visible", lambda: False)  # the card named
    cfg = _stage1(**{"train.gradient_checkpointing": "false", "train.shared_prefix": "off"})
    with pytest.raises(PreflightError) as err:
        check(cfg, "stage1.yaml")
    line = next(x for x in str(err.value).splitlines() if "learner rank" in x)
    assert re.search(r"train\.micro_batch_size: the learner rank on GPU 0 needs [\d.]+ GiB .* "
                     r"but [\d.]+ GiB is there; .*gradient_checkpointing: true", line)
    [worker] = memory_problems(load_config(REPO / "configs/stage1_11gb.yaml",
                                           ["rollout.gpu_memory_utilization=0.4"]))
    assert re.search(r"^rollout\.gpu_memory_utilization: the worker on GPU 0 gets 0\.4 x 11\.0 "
                     r"= 4\.40 GiB; .* raise it to 0\.\d\d", worker)
    assert memory_problems(load_config(REPO / "configs/stage1_11gb.yaml")) == []


def test_gpu_memory_field_is_validated_and_needed_without_a_gpu():
    with pytest.raises(ConfigError, match=r"launch\.gpu_memory_gb: must be >= 0"):
        from_dict({"launch": {"gpu_memory_gb": -1}}, "x.yaml")
    from launch.planning.memory import _gpus_visible

    if not _gpus_visible():
        with pytest.raises(ConfigError, match=r"launch\.gpu_memory_gb: 0 asks the GPU"):
            plan_memory(_stage1(**{"launch.gpu_memory_gb": 0}))


def _stonk(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launch.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_stonk_plan_on_the_demo_config_and_the_exit_codes():
    out = _stonk("plan", "--config", "configs/demo/stage1.yaml")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "RAM (" in text and "worker + 2 x learner rank" in text
    assert re.search(r"prompt: \d+ tokens \(measured", text)
    for term in ("KV cache", "base weights", "activations", "logits", "problems: none"):
        assert term in text
    bad = _stonk("plan", "--config", "configs/stage1_11gb.yaml", "--set",
                 "train.gradient_checkpointing=false")
    assert bad.returncode == 1 and "problems:\n  - train.micro_batch_size" in bad.stdout
    big = _stonk("plan", "--config", "configs/stage1_11gb.yaml", "--gpu-memory", "80")
    assert big.returncode == 0 and "80 GiB per GPU (--gpu-memory)" in big.stdout


def test_plan_and_help_import_no_torch():
    code = ("import sys, launch.cli, launch.planning.memory, launch.planning.preflight; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.stdout.strip() == "False"


def test_dry_run_prints_the_plan():
    out = _stonk("stage1", "--config", "configs/stage1.yaml", "--dry-run")
    assert out.returncode == 0 and "memory plan:\n" in out.stdout
    assert re.search(r"\nGPU 0 \([\d.]+ GiB\): worker \+ learner rank\n", out.stdout)


def test_tiny_model_with_a_full_vocabulary(tmp_path):
    from launch.embedded.tiny_model import build

    out = build(str(tmp_path / "v"), model_vocab=2048, layers=1)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["vocab_size"] == 2048
    assert len(json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]) < 2048
    with pytest.raises(ValueError, match="--model-vocab 10"):
        build(str(tmp_path / "w"), model_vocab=10)


def test_plan_with_an_explicit_prompt_length():
    plan = plan_memory(_stage1(), 24, PromptLength(100, "given"))
    assert plan.seq == 484 and plan.prompt.how == "given"
