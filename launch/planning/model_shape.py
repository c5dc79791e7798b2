"""What the memory plan (launch/planning/memory.py) needs to know about a config's model and prompts,
without torch: the architecture and the longest prompt in tokens.

- Architecture: from the model's ``config.json`` (a local folder, or the Hugging Face cache
  when the hub model is there); else from a small built-in table of known models (the
  Qwen2.5 Instruct family, whose hub files are not on this machine); else a one-line error
  naming ``model.name_or_path``.
- Prompt length: every prompt of the config's data (train, val and test: the workers serve
  evaluations too) is rendered as the chat the learner sends. With the model's tokenizer
  here (``tokenizer.json`` and its chat template), the longest prompts are tokenized with it
  (the ``tokenizers`` library and the template through jinja2, as transformers renders it,
  without importing transformers); without it, the estimate is one token per UTF-8 byte of
  the rendered text (each special token once), an upper bound for any byte-level BPE
  tokenizer such as Qwen's. If the data cannot be loaded, the bound is model.max_model_len
  - rollout.max_tokens, the longest prompt the worker accepts. The result says which.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from trainer.config import ConfigError, StageConfig

# hub config.json fields of the models the plan knows without their files
_QWEN25 = {"vocab_size": 151936, "num_key_value_heads": 2, "tie_word_embeddings": True,
           "torch_dtype": "bfloat16"}
KNOWN_MODELS = {
    "Qwen/Qwen2.5-0.5B-Instruct": {**_QWEN25, "hidden_size": 896, "intermediate_size": 4864,
                                   "num_hidden_layers": 24, "num_attention_heads": 14},
    "Qwen/Qwen2.5-1.5B-Instruct": {**_QWEN25, "hidden_size": 1536, "intermediate_size": 8960,
                                   "num_hidden_layers": 28, "num_attention_heads": 12},
    "Qwen/Qwen2.5-3B-Instruct": {**_QWEN25, "hidden_size": 2048, "intermediate_size": 11008,
                                 "num_hidden_layers": 36, "num_attention_heads": 16},
    "Qwen/Qwen2.5-7B-Instruct": {**_QWEN25, "vocab_size": 152064, "hidden_size": 3584,
                                 "intermediate_size": 18944, "num_hidden_layers": 28,
                                 "num_attention_heads": 28, "num_key_value_heads": 4,
                                 "tie_word_embeddings": False},
}
HUB_ID = re.compile(r"(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*")  # owner/name, or name
SPECIAL = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
# Qwen2.5's chat template with a system message and no tools (the embedded model's too)
def chatml(messages: tuple[tuple[str, str], ...]) -> str:
    """Qwen's ChatML rendering of (role, content) messages, ready for the assistant."""
    return "".join(f"<|im_start|>{r}\n{t}<|im_end|>\n" for r, t in messages) + \
        "<|im_start|>assistant\n"


@dataclass(frozen=True)
class Architecture:
    """A decoder-only transformer of the Qwen2/Llama family, as config.json describes it."""

    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool
    dtype: str  # the checkpoint's dtype: what rollout.dtype "auto" serves
    source: str  # where these figures came from

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each projection of one decoder layer."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_dim, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def linear_params(self) -> int:
        """Parameters of the decoder's projections (what 4-bit quantizes)."""
        return self.layers * sum(a * b for a, b in self.linear_shapes().values())

    @property
    def other_params(self) -> int:
        """Everything else: embeddings, an untied output head, norms, q/k/v biases."""
        per_layer = 2 * self.hidden + self.heads * self.head_dim + 2 * self.kv_dim
        head = 0 if self.tied else self.vocab * self.hidden
        return self.vocab * self.hidden + head + self.layers * per_layer + self.hidden

    @property
    def params(self) -> int:
        return self.linear_params + self.other_params


def _from_config(c: dict, source: str) -> Architecture:
    heads = c["num_attention_heads"]
    return Architecture(
        vocab=c["vocab_size"], hidden=c["hidden_size"], intermediate=c["intermediate_size"],
        layers=c["num_hidden_layers"], heads=heads,
        kv_heads=c.get("num_key_value_heads") or heads,
        head_dim=c.get("head_dim") or c["hidden_size"] // heads,
        tied=bool(c.get("tie_word_embeddings", False)),
        dtype=str(c.get("dtype") or c.get("torch_dtype") or "float32"), source=source)


def _cached_file(name: str, filename: str) -> Path | None:
    """``filename`` of model ``name``: in its folder, or in the Hugging Face cache."""
    if Path(name).is_dir():
        path = Path(name) / filename
        return path if path.is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub ships with transformers
        return None
    try:
        cached = try_to_load_from_cache(name, filename)
    except ValueError:  # HFValidationError: a path or a malformed name, not a hub id
        return None
    return Path(cached) if isinstance(cached, str) else None


@lru_cache(maxsize=32)
def architecture(name: str) -> Architecture:
    """The architecture of model ``name`` (model.name_or_path); ConfigError if unknown."""
    config = _cached_file(name, "config.json")
    if config is not None:
        try:
            return _from_config(json.loads(config.read_text()), str(config))
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"model.name_or_path: {config} does not describe a decoder "
                              f"the memory plan knows ({type(exc).__name__}: {exc})") from None
    if name in KNOWN_MODELS:
        return _from_config(KNOWN_MODELS[name], f"built-in table ({name} is not here)")
    if Path(name).is_dir():
        raise ConfigError(f"model.name_or_path: model folder {name} has no config.json "
                          "(not a save_pretrained checkpoint)")
    if not HUB_ID.fullmatch(name):
        raise ConfigError(f"model.name_or_path: {name} is neither a local model folder (no "
                          "such folder) nor a hub id in the Hugging Face cache")
    raise ConfigError(f"model.name_or_path: {name} is neither a model folder, in the Hugging "
                      f"Face cache, nor one of the models the memory plan knows "
                      f"({', '.join(KNOWN_MODELS)}); point it at a folder with config.json")


@dataclass(frozen=True)
class PromptLength:
    tokens: int  # the longest prompt, chat template included
    how: str  # measured or estimated, and from what


Chat = tuple[tuple[str, str], ...]  # (role, content) messages of one prompt
_CHATS: dict[str, list[Chat]] = {}  # per task and data config: building a task takes ~1 s


def _chat_texts(cfg: StageConfig) -> list[Chat]:
    """The messages of every prompt of the config's task and data, all splits."""
    from trainer.tasks import build_task

    key = f"{cfg.task}:{cfg.data!r}"
    if key not in _CHATS:
        task = build_task(cfg)
        _CHATS[key] = [tuple((m["role"], m["content"]) for m in s.messages)
                       for split in ("train", "val", "test") for s in task.split(split)]
    return _CHATS[key]


def _tokenizer(name: str):
    """(encode: text -> token count, render: (system, user) -> text), or None when the
    model's tokenizer or chat template is not here."""
    tok_file = _cached_file(name, "tokenizer.json")
    template = _cached_file(name, "chat_template.jinja")
    text = template.read_text() if template else None
    if text is None and (tc := _cached_file(name, "tokenizer_config.json")):
        text = json.loads(tc.read_text()).get("chat_template")
    if tok_file is None or not isinstance(text, str):
        return None
    import jinja2.sandbox
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tok_file))
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = lambda message: (_ for _ in ()).throw(ValueError(message))
    env.filters["tojson"] = json.dumps
    chat = env.from_string(text)

    def render(messages: Chat) -> str:
        return chat.render(messages=[{"role": r, "content": t} for r, t in messages],
                           add_generation_prompt=True)

    return (lambda s: len(tokenizer.encode(s, add_special_tokens=False).ids)), render


def byte_bound(text: str) -> int:
    """Tokens a byte-level BPE tokenizer can make of ``text`` at most: one per byte, each of
    Qwen's special tokens one."""
    count = 0
    for special in SPECIAL:
        count += text.count(special)
        text = text.replace(special, "")
    return count + len(text.encode())


def prompt_length(cfg: StageConfig) -> PromptLength:
    """The longest prompt of the config's data in the model's tokens (see module doc)."""
    try:
        chats = _chat_texts(cfg)
    except Exception as exc:  # noqa: BLE001 - any data problem: fall back to the bound
        return PromptLength(cfg.model.max_model_len - cfg.rollout.max_tokens,
                            f"bound: model.max_model_len - rollout.max_tokens (the data could "
                            f"not be loaded: {type(exc).__name__})")
    # the longest texts in characters hold the longest in tokens (digits are one token each)
    longest = sorted(set(chats), key=lambda c: -sum(len(t) for _, t in c))[:64]
    tok = _tokenizer(cfg.model.name_or_path)
    if tok is not None:
        encode, render = tok
        n = max(encode(render(c)) for c in longest)
        return PromptLength(n, f"measured: the {len(longest)} longest of {len(chats)} "
                               f"prompts through the model's tokenizer")
    n = max(byte_bound(chatml(c)) for c in longest)
    return PromptLength(n, f"estimate: one token per byte of the longest of {len(chats)} "
                           f"rendered prompts, an upper bound (the model's tokenizer is not "
                           f"here)")
