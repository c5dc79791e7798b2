"""YAML (with ``inherit:``) and ``--set KEY=VALUE`` overrides into a typed
:class:`StageConfig`: every key and type checked, one :class:`ConfigError` naming the file,
the dotted field and what is allowed; then ``validation.validate``.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml

from trainer.config.sections import ConfigError, StageConfig
from trainer.config.validation import validate

_FLOAT_TEXT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list, dict):
        return str(tp).replace("typing.", "")
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_describe(t) for t in typing.get_args(tp))
    names = {bool: "true/false", type(None): "null", int: "an integer", float: "a number",
             str: "a string"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of fields, got {value!r}")
        return _build(tp, value, where)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if isinstance(value, bool) and {"on", "off"} <= set(allowed):
            value = "on" if value else "off"  # YAML 1.1 reads a bare on / off as a boolean
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not allowed; use {_describe(tp)}")
        return value
    if origin in (types.UnionType, typing.Union):
        errors = []
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: {value!r} is not allowed; use {_describe(tp)}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        key_tp, val_tp = typing.get_args(tp)
        return {
            _coerce(k, key_tp, where): _coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()
        }
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected null, got {value!r}")
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads "2e-3" (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, date):  # YAML reads an unquoted 2012-12-31 as a date (data.*_end)
            return value.isoformat()
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {tp}")  # pragma: no cover - programming error


def _build(cls: type, data: dict[str, Any], where: str,
           classes: dict[str, type] | None = None) -> Any:
    """``cls`` from ``data``, every key checked; ``classes``: the dataclass a field is built
    as instead of its annotation (the task's sections of a StageConfig)."""
    hints = {**typing.get_type_hints(cls), **(classes or {})}
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"{prefix}{unknown[0]}: unknown key; allowed keys here: {', '.join(names)}"
        )
    kwargs = {}
    for name in names:
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], f"{where}.{name}" if where else name)
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], dotted: str, raw: str) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {key} is not a section")
    node[keys[-1]] = yaml.safe_load(raw)


def task_classes(data: dict[str, Any]) -> dict[str, type]:
    """The classes of the sections the config's task owns (``task``, default stock):
    section name -> dataclass (trainer/tasks/registry.py)."""
    from trainer.tasks.registry import DEFAULT_TASK, SECTIONS, section_class

    task = data.get("task", DEFAULT_TASK)
    if not isinstance(task, str):
        raise ConfigError(f"task: expected a task name, got {task!r}")
    return {name: section_class(task, name) for name in SECTIONS}


def from_dict(data: dict[str, Any], source: str = "<dict>") -> StageConfig:
    try:
        data = data or {}
        cfg = _build(StageConfig, data, "", task_classes(data))
        validate(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return cfg


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a config file; ``inherit: other.yaml`` (relative to the file) is loaded first and
    this file's sections are merged over it, key by key."""
    if not path.is_file():
        where = f" (inherited by {seen[-1]})" if seen else ""
        raise ConfigError(f"{path}: config file not found{where}")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: inherit: cycle through {', '.join(map(str, seen))}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    parent = data.pop("inherit", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: inherit: expected a path to another YAML file")
    return _merge(_read_yaml(path.parent / parent, seen + (path.resolve(),)), data)


def load_config(path: str | Path, overrides: list[str] | None = None) -> StageConfig:
    """Load (following ``inherit:``), override (``a.b=value`` strings) and validate."""
    path = Path(path)
    data = _read_yaml(path)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item}: expected KEY=VALUE, e.g. train.steps=3")
        key, raw = item.split("=", 1)
        _set_dotted(data, key.strip(), raw)
    return from_dict(data, str(path))


def save_config(cfg: StageConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
