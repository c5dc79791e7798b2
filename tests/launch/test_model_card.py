"""The exported model card's base (launch/offline/export.py): a hub id as it is, a local base folder
by its name and said to be local, never this machine's absolute path; for a Stage II adapter,
the Stage I base it was merged onto."""

from __future__ import annotations

import json
from pathlib import Path

from launch.offline.export import model_card
from trainer.config import load_config

REPO = Path(__file__).resolve().parents[2]


def _front_matter_base(card: str) -> str:
    return next(ln for ln in card.splitlines() if ln.startswith("base_model:")).split(": ", 1)[1]


def test_a_local_base_is_named_by_its_folder_and_a_hub_base_by_its_id(tmp_path):
    cfg = load_config(REPO / "configs/demo/stage1.yaml")
    local = tmp_path / "deep" / "my-base"
    local.mkdir(parents=True)
    card = model_card(cfg, None, tmp_path / "adapter", str(local))
    assert _front_matter_base(card) == "my-base"
    assert "`my-base` (a local model folder, not a hub model)" in card
    assert str(tmp_path) not in card.replace(str(tmp_path / "adapter"), "")  # no local path
    hub = model_card(cfg, None, tmp_path / "adapter", "Qwen/Qwen2.5-1.5B-Instruct")
    assert _front_matter_base(hub) == "Qwen/Qwen2.5-1.5B-Instruct"
    assert "trained with GRPO by Stonk-Trainer on `Qwen/Qwen2.5-1.5B-Instruct`" in hub


def test_a_stage2_card_names_the_stage1_base_it_was_merged_onto(tmp_path):
    cfg = load_config(REPO / "configs/demo/stage2.yaml")
    run = tmp_path / "run"
    run.mkdir()
    s1_base = tmp_path / "tiny-qwen2-fmt"
    s1_base.mkdir()
    (run / "stage2.json").write_text(json.dumps(
        {"stage1_run": "s1", "stage1_base": str(s1_base), "passed": True, "forced": False}))
    card = model_card(cfg, run, run / "adapter", str(run / "base"))
    assert _front_matter_base(card) == "tiny-qwen2-fmt"
    assert "the merged Stage I model (from `tiny-qwen2-fmt` (a local model folder" in card
