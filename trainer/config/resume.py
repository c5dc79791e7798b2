"""The resume check's side of the config: the hash and the list of changes the checkpoint
check reads (``trainer/checkpoint.py``), over the fields a resumed run must not change (each
field's policy is declared with it in ``sections.py``).
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import json
from typing import Any

from trainer.config.fields import resume_may_change
from trainer.config.sections import StageConfig

# Fields that may differ between a checkpoint's config and the resumed run's (operational
# settings that do not change what is computed), from the sections: ``RESUMABLE`` sections
# and ``setting(..., resumable=True)`` fields. Everything else must match. Per task, since a
# task's own sections declare theirs.
RESUME_MAY_CHANGE = resume_may_change(StageConfig())


@functools.cache
def may_change(task: str) -> tuple[str, ...]:
    return resume_may_change(StageConfig(task=task))


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _fixed_fields(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    patterns = may_change(cfg_dict.get("task", StageConfig.task))
    return {k: v for k, v in _flatten(cfg_dict).items()
            if not any(fnmatch.fnmatchcase(k, pat) for pat in patterns)}


def config_hash(cfg: StageConfig) -> str:
    """sha256 over the fields a resume must not change."""
    blob = json.dumps(_fixed_fields(cfg.to_dict()), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's config.json with every field this version added at its default (the
    sections' fields only: a mapping inside a section, e.g. reward.weights, is one value)."""
    defaults = StageConfig(task=saved.get("task", StageConfig.task)).to_dict()
    return {**defaults, **{k: {**defaults[k], **v} if isinstance(defaults.get(k), dict) else v
                           for k, v in saved.items()}}


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """'field: old -> new' for every fixed field that differs."""
    a, b = _fixed_fields(old), _fixed_fields(new)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)]
