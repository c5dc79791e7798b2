"""The prompts task's reward functions: found by import path, called the way TRL calls one.

A function is named ``"package.module:function"`` (imported) or ``"path/to/file.py:function"``
(loaded from the file; a relative path is read from the current folder, else the
repository). It is called once per batch with keyword arguments:

- ``prompts``: each completion's prompt as the dataset holds it (a string, or TRL's
  conversational list of ``{"role", "content"}`` messages);
- ``completions``: the completions, strings; for conversational prompts each is
  ``[{"role": "assistant", "content": text}]`` as in TRL;
- every other column of the dataset, by its name, one value per completion;

and returns one number per completion (``None``: not applicable, counted as 0). Its value
times ``reward.weights[name]`` (default 1) is the reward component ``name``; the total is
their sum. So a reward function written for TRL's GRPOTrainer works unchanged.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from trainer.config.sections import ConfigError
from trainer.tasks.prompts.config import local_path

RewardFn = Callable[..., Sequence[float | None]]
_LOADED: dict[str, RewardFn] = {}


class RewardFunctionError(RuntimeError):
    """A reward function failed or returned something other than one number per completion."""


def _from_file(path: str, where: str):
    file = Path(local_path(path))
    if not file.is_file():
        raise ConfigError(f"{where}: no file {path} (read from the current folder, else the "
                          f"repository)")
    name = f"stonk_reward_{abs(hash(str(file.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise ConfigError(f"{where}: {file} fails to import: {type(exc).__name__}: {exc}") \
            from exc
    return module


def load_function(spec: str, where: str = "reward.functions") -> RewardFn:
    """The callable ``spec`` names; ConfigError naming ``where`` when it does not resolve."""
    if spec in _LOADED:
        return _LOADED[spec]
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ConfigError(f"{where}: {spec!r} is not \"package.module:function\" or "
                          f"\"path/to/file.py:function\"")
    if target.endswith(".py") or "/" in target:
        module = _from_file(target, where)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise ConfigError(f"{where}: cannot import {target} ({exc})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"{where}: {target} has no function {attr!r}")
    _LOADED[spec] = fn
    return fn


def load_functions(specs: Sequence[str]) -> list[tuple[str, RewardFn]]:
    """(component name, function) per spec: the function's name, which must be unique."""
    out: list[tuple[str, RewardFn]] = []
    for i, spec in enumerate(specs):
        fn = load_function(spec, f"reward.functions[{i}]")
        name = spec.rpartition(":")[2]
        if name in [n for n, _ in out]:
            raise ConfigError(f"reward.functions[{i}]: a second function named {name!r}; "
                              f"each needs its own name (it names the reward component)")
        out.append((name, fn))
    return out


def call_functions(functions: list[tuple[str, RewardFn]], prompts: list[Any],
                   completions: list[Any], columns: dict[str, list[Any]],
                   weights: dict[str, float]) -> list[dict[str, float]]:
    """Each completion's weighted components, one dict per completion."""
    out: list[dict[str, float]] = [{} for _ in completions]
    for name, fn in functions:
        try:
            values = fn(prompts=prompts, completions=completions, **columns)
        except Exception as exc:
            raise RewardFunctionError(f"reward function {name} raised {type(exc).__name__}: "
                                      f"{exc}") from exc
        values = list(values) if values is not None else []
        if len(values) != len(completions):
            raise RewardFunctionError(f"reward function {name} returned {len(values)} values "
                                      f"for {len(completions)} completions")
        w = weights.get(name, 1.0)
        for row, v in zip(out, values, strict=True):
            if v is not None and not isinstance(v, (int, float)):
                raise RewardFunctionError(f"reward function {name} returned {v!r}; return a "
                                          f"number or None per completion")
            value = 0.0 if v is None else float(v)
            if not math.isfinite(value):
                raise RewardFunctionError(f"reward function {name} returned {value}; a reward "
                                          f"must be finite")
            row[name] = w * value
    return out
