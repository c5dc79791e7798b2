"""`make gpu-check`'s parts that run without a GPU: the model it builds (Qwen2.5-1.5B-Instruct's
exact architecture), reading nvidia-smi, the summary it prints, and its refusal without
CUDA. The GPU run itself: benchmarks/gpu_check.py on a GPU machine (BENCHMARKS.md)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from benchmarks import gpu_check


def test_the_built_architecture_is_qwen2_5_1_5b_instruct():
    """1,543,714,304 parameters: the figure published for Qwen2.5-1.5B-Instruct (tied
    embeddings), built on the meta device (no memory)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    arch = gpu_check.qwen_architecture()
    with torch.device("meta"):
        model = Qwen2ForCausalLM(Qwen2Config(**arch))
    assert sum(p.numel() for p in model.parameters()) == 1_543_714_304
    assert arch["num_key_value_heads"] == 2 and arch["hidden_size"] // 12 == 128


def test_random_model_loads_like_a_hub_checkpoint_with_qwens_sampling_defaults(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    arch = {**gpu_check.qwen_architecture(), "hidden_size": 128, "intermediate_size": 256,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
            "vocab_size": 4096}
    out = gpu_check.build_random_model(tmp_path / "m", arch)
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.dtype == torch.bfloat16
    assert model.get_input_embeddings().weight.shape[0] == 4096 > len(tok)
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["top_k"] == 20 and gen["repetition_penalty"] == 1.1
    text = tok.apply_chat_template([{"role": "user", "content": "AAPL 1.0 UP or DOWN?"}],
                                   add_generation_prompt=True, tokenize=False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert model(input_ids=torch.tensor([ids])).logits.shape[-1] == 4096


def test_nvidia_smi_compute_apps_are_read_per_process():
    text = "12345, 8123\n12399, 6120\n[Not Supported], [N/A]\n"
    assert gpu_check.parse_compute_apps(text) == {12345: 8123, 12399: 6120}
    assert gpu_check.parse_compute_apps("") == {}


def test_summary_puts_measured_peaks_beside_the_plan():
    class Sampler:
        peak_by_role = {"worker": 9216, "learner rank": 7168}
        peak_used, total = 16896, 24576

    result = {"exit_code": 0, "command": "stonk stage1 ...", "wall": [95.0, 21.0, 19.0],
              "rows": [{"step": 1, "logp_gap": 0.02, "memory/peak_reserved_gib": 5.5},
                       {"step": 2, "logp_gap": 0.03, "memory/peak_reserved_gib": 6.0},
                       {"step": 3, "logp_gap": 0.03, "memory/peak_reserved_gib": 6.0}]}
    s = gpu_check.summary(result, Sampler(), {"worker": 8.9, "learner rank": 6.43})
    assert s["step1_logp_gap"] == 0.02 and s["step_seconds_median_after_step1"] == 20.0
    assert s["learner_torch_peak_reserved_gib"] == 6.0
    assert {p["role"]: (p["peak_gib"], p["plan_gib"]) for p in s["processes"]} == {
        "worker": (9.0, 8.9), "learner rank": (7.0, 6.43)}
    text = gpu_check.render(s, "3 passed", {"gpu": "NVIDIA H100", "driver": "580",
                                             "versions": {"vllm": "0.33.0"}})
    assert "| worker | 9.000 | 8.900 |" in text and "logp_gap" in text


def test_without_cuda_it_says_so_in_one_line(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    assert gpu_check.main(["--skip-tests", "--out", "/tmp/unused-gpu-check"]) == 2
    assert capsys.readouterr().err.startswith("error: gpu-check needs a CUDA GPU")


@pytest.mark.integration
def test_the_learner_alone_runs_under_accelerate_on_the_cpu(tiny_model, tmp_path):
    """benchmarks/gpu_learner.py (`make gpu-check`'s part 4) through accelerate launch with the
    CPU DeepSpeed config: the real learner at configs/stage1.yaml's settings (4-bit base,
    ZeRO-2) at a small shape trains a step with the shared-prefix layout and one without
    (--compare-layouts), restores its adapter from its DeepSpeed state and writes
    learner.json. On a GPU the same script runs under gpu_single.yaml."""
    import subprocess
    import sys

    from tests.conftest import REPO

    out = tmp_path / "learner"
    sets = ["rollout.max_tokens=16", "train.prompts_per_rank=1", "rollout.group_size=4",
            "train.micro_batch_size=2", "model.max_model_len=1024", "model.dtype=float32"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           "launch/accelerate/cpu_deepspeed.yaml", "--num_processes", "1",
           "benchmarks/gpu_learner.py", "--model", str(tiny_model), "--out", str(out),
           "--steps", "1", "--compare-layouts", *[x for s in sets for x in ("--set", s)]]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "DS_ACCELERATOR": "cpu",
                               "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads((out / "learner.json").read_text())
    assert result["ok"] and result["resume_restores_adapter"] and result["zero_stage"] == 2
    layers = json.loads((tiny_model / "config.json").read_text())["num_hidden_layers"]
    # every linear of every decoder layer (q, k, v, o, gate, up, down) in 4 bits
    assert result["four_bit_layers"] == 7 * layers and result["mixed_precision"] == "no"
    assert [s["shared_prefix"] for s in result["steps"]] == [True, False]
    assert all(s["grad_norm"] > 0 for s in result["steps"])
    assert (out / "adapter" / "adapter_config.json").is_file()
