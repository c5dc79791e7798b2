"""The embedded model: deterministic build, hub-style files, vLLM-compatible shape."""

import hashlib
import json

from launch.embedded.tiny_model import build


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_build_is_deterministic_and_hub_shaped(tmp_path):
    a = build(str(tmp_path / "a"))
    b = build(str(tmp_path / "b"))
    assert _digests(a) == _digests(b)
    names = set(_digests(a))
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= names
    cfg = json.loads((a / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen2ForCausalLM"]
    assert cfg["hidden_size"] // cfg["num_attention_heads"] == 64  # vLLM CPU attention


def test_tokenizer_round_trips_prompts_and_has_chat_template(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Stock: MSFT 27.53 (+1.25%) UP or DOWN?"}],
        add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>assistant\n")
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert tok.eos_token == "<|im_end|>"


def test_generation_config_carries_qwen_instruct_sampling_defaults(tiny_model, warm_model):
    """The embedded models look like Qwen2.5-Instruct to a sampler: if the model's defaults
    ever reach sampling (top-k 20, a repetition penalty), the log-prob comparisons fail."""
    for folder in (tiny_model, warm_model):
        gen = json.loads((folder / "generation_config.json").read_text())
        assert gen["top_k"] == 20 and gen["top_p"] == 0.8 and gen["temperature"] == 0.7
        assert gen["repetition_penalty"] == 1.1 and gen["do_sample"] is True
