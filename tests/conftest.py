"""Shared fixtures: repo paths and the embedded models (built by `make warmstart`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "models" / "tiny-qwen2"
WARM = REPO / "models" / "tiny-qwen2-fmt"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def need_model(path: Path) -> Path:
    if not (path / "config.json").is_file():
        pytest.fail(f"{path} is missing: run `make warmstart` (make test does it first)")
    return path


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    return need_model(TINY)


@pytest.fixture(scope="session")
def warm_model() -> Path:
    return need_model(WARM)
