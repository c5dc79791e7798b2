"""Shared fixtures: repo paths and the embedded models (shipped in models/, checked by
`make embedded`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "models" / "tiny-qwen2"
WARM = REPO / "models" / "tiny-qwen2-fmt"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def need_model(path: Path) -> Path:
    if not (path / "config.json").is_file():
        pytest.fail(f"{path} is missing: `git checkout models/` restores the shipped model")
    return path


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    return need_model(TINY)


@pytest.fixture(scope="session")
def warm_model() -> Path:
    return need_model(WARM)


def pytest_collection_modifyitems(config, items):
    """`gpu`-marked tests need CUDA: skipped, with the reason, where torch sees no GPU."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is false)")
    for item in gpu_items:
        item.add_marker(skip)


@pytest.fixture
def fake_run(tmp_path):
    """A run folder as training leaves it (config, LATEST and the adapter's config, whose
    base is the folder ``tmp_path/base-model``)."""
    run = tmp_path / "run"
    (tmp_path / "base-model").mkdir()
    (tmp_path / "base-model" / "config.json").write_text("{}")
    adapter = run / "checkpoints" / "step_000002" / "adapter"
    adapter.mkdir(parents=True)
    (run / "config.yaml").write_text((REPO / "configs/demo/stage1.yaml").read_text())
    (run / "metrics.jsonl").write_text("")
    (run / "checkpoints" / "LATEST").write_text("step_000002\n")
    (adapter / "adapter_config.json").write_text(json.dumps(
        {"base_model_name_or_path": str(tmp_path / "base-model")}))
    return run
