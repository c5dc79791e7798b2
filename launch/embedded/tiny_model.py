"""Build the embedded model: a small Qwen2-architecture causal LM with its own tokenizer.

``make tiny-model`` runs this. The result is a folder written by ``save_pretrained`` (config,
safetensors weights, tokenizer.json, chat template, generation config) that everything loads
with ``from_pretrained``, exactly like ``Qwen/Qwen2.5-1.5B-Instruct``; no code path knows it
is tiny. Its generation config carries Qwen2.5-Instruct's sampling defaults (top-k 20, a
repetition penalty, ...), so a sampler that lets a model's defaults in fails here too.

- Tokenizer: byte-level BPE (as Qwen2's) trained on text the stock task renders, with digits
  split one per token (as Qwen2 does), and a ChatML chat template with Qwen's special tokens.
- Weights: random init from a fixed seed. head_dim is 64 because vLLM's CPU attention
  rejects smaller heads.
- ``--model-vocab N`` gives the model N embedding rows (e.g. Qwen2.5's 151,936) while the
  tokenizer keeps its few hundred tokens: the rows past the tokenizer are never produced by
  it, as Qwen pads its own 151,665 tokens to 151,936. It gives a small model Qwen's output
  head, so the learner's full-vocabulary costs (the logits) show on CPU.
The build is deterministic: the same arguments give byte-identical files.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen2.5-1.5B-Instruct's generation_config.json sampling defaults. vLLM and transformers
# fill any sampling field a caller leaves out from these; carrying them makes every CPU test
# that compares sampled log-probs with the learner's fail if they ever reach sampling.
QWEN_SAMPLING_DEFAULTS = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20,
                          "repetition_penalty": 1.1}


def _corpus(seed: int) -> list[str]:
    """Text the tokenizer should cover: prompts from both sources and answer shapes."""
    from trainer.tasks.stock import data as market
    from trainer.tasks.stock.answer import SYSTEM_PROMPT
    from trainer.tasks.stock.task import window_to_sample
    from trainer.tasks.stock.warm_answers import templated_answer

    rng = random.Random(seed)
    series = market.load_bundled() + [market.synthetic_series(600, seed)]
    texts = [SYSTEM_PROMPT]
    for s in series:
        ws = market.windows(s, 5)
        for w in rng.sample(ws, min(150, len(ws))):
            texts.append(window_to_sample(w).messages[1]["content"])
            texts.append(templated_answer(w.closes, rng))
    texts += ["user", "assistant", "system", "It will go up.", "It will go down."]
    return texts


def build_tokenizer(vocab_size: int, seed: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        model_max_length=4096,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build(out: str, vocab_size: int = 1024, hidden: int = 256, layers: int = 2,
          heads: int = 4, kv_heads: int = 2, intermediate: int = 768, seed: int = 0,
          model_vocab: int = 0) -> Path:
    """``model_vocab``: embedding rows (0: the tokenizer's size); at least the tokenizer's."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    out_dir = Path(out)
    tokenizer = build_tokenizer(vocab_size, seed)
    if hidden // heads < 64:
        raise ValueError(f"hidden/heads = {hidden // heads}: vLLM CPU attention needs >= 64")
    if model_vocab and model_vocab < len(tokenizer):
        raise ValueError(f"--model-vocab {model_vocab}: the tokenizer has {len(tokenizer)} "
                         f"tokens; the model needs at least as many rows")
    config = Qwen2Config(
        vocab_size=model_vocab or len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=2048,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=[config.eos_token_id, config.bos_token_id],
        pad_token_id=config.pad_token_id,
        **QWEN_SAMPLING_DEFAULTS,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"built {out_dir}: Qwen2 {layers} layers, hidden {hidden}, vocab {config.vocab_size} "
          f"(tokenizer {len(tokenizer)}), "
          f"{n_params / 1e6:.2f}M parameters")
    return out_dir


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="models/tiny-qwen2")
    p.add_argument("--vocab-size", type=int, default=1024)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--intermediate", type=int, default=768)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-vocab", type=int, default=0,
                   help="embedding rows of the model (0: the tokenizer's size), e.g. 151936")
    a = p.parse_args(argv)
    build(a.out, a.vocab_size, a.hidden, a.layers, a.heads, a.kv_heads, a.intermediate, a.seed,
          a.model_vocab)


if __name__ == "__main__":
    main()
