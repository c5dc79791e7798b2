"""Stage II starts from the Stage I model: merging the adapter into the base keeps its logits.

Tolerances: float32 merge, max |logit difference| < 1e-4 (only summation order differs);
bfloat16 merge, max difference < 0.05 x the logits' standard deviation (bf16 keeps ~3
significant digits of the merged weights).
"""

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from launch.run.stage2 import merge_adapter
from tests.conftest import REPO


@pytest.fixture(scope="module")
def adapter(tiny_model, tmp_path_factory):
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    path = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(path)
    return path


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


@pytest.mark.parametrize("dtype, tol", [("float32", 1e-4), ("bfloat16", 0.05)])
def test_merged_model_matches_base_plus_adapter(tiny_model, adapter, tmp_path, dtype, tol):
    ids = torch.tensor([[1, 40, 41, 42, 43, 44, 45, 46]])
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    reference = _logits(PeftModel.from_pretrained(base, adapter).eval(), ids)
    plain = _logits(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32), ids)
    out = merge_adapter(str(tiny_model), adapter, tmp_path / "merged", dtype)
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    merged = _logits(AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval(), ids)
    bound = tol if dtype == "float32" else tol * reference.std().item()
    assert (merged - reference).abs().max().item() < bound
    # and the adapter mattered: without it the logits are far off
    assert (plain - reference).abs().max().item() > 10 * bound


def test_stage2_continues_the_stage1_runs_task(tmp_path):
    """A Stage II config of another task than the Stage I run's is one error line, before
    anything is merged."""
    from launch.run.stage2 import prepare
    from trainer.config import ConfigError, load_config, save_config
    from trainer.run_folder import RunFolder

    s1 = tmp_path / "s1"
    s1.mkdir()
    save_config(load_config(REPO / "configs/demo/prompts.yaml"), RunFolder(s1).config)
    RunFolder(s1).gate.write_text(json.dumps({"passed": True, "indicators": []}))
    stage2 = load_config(REPO / "configs/demo/stage2.yaml")
    with pytest.raises(ConfigError, match=r"trained task 'prompts'; this Stage II config "
                                          r"names task 'stock'"):
        prepare(stage2, s1, tmp_path / "s2", force=False)
    assert not (tmp_path / "s2").exists()


def test_stage2_of_the_prompts_task_merges_its_stage1_adapter(tmp_path, tiny_model, adapter):
    """Stage II is any task's: a prompts run's final adapter (the one its gate judged, not
    best/) is merged into its base and the Stage II config (configs/demo/prompts_stage2.yaml)
    trains on the merged model, the record written; the merged model's logits are the
    base's plus the adapter's (as above)."""
    import shutil

    from launch.run.stage2 import prepare
    from trainer.config import load_config, save_config
    from trainer.run_folder import RunFolder

    s1 = tmp_path / "s1"
    ckpt = s1 / "checkpoints" / "step_000003"
    shutil.copytree(adapter, ckpt / "adapter")
    (s1 / "checkpoints" / "LATEST").write_text("step_000003\n")
    # a best/ from an earlier evaluation: the gate judged the final adapter, which is merged
    shutil.copytree(adapter, s1 / "checkpoints" / "best" / "adapter")
    save_config(load_config(REPO / "configs/demo/prompts.yaml",
                            [f"model.name_or_path={tiny_model}"]), RunFolder(s1).config)
    RunFolder(s1).gate.write_text(json.dumps({"passed": True, "indicators": []}))
    cfg = load_config(REPO / "configs/demo/prompts_stage2.yaml")
    assert (cfg.task, cfg.stage, cfg.lora.r) == ("prompts", 2, 8)
    out = prepare(cfg, s1, tmp_path / "s2", force=False)
    assert out.model.name_or_path == str(RunFolder(tmp_path / "s2").base)
    record = json.loads(RunFolder(tmp_path / "s2").stage2.read_text())
    assert record["passed"] and not record["forced"]
    assert record["stage1_adapter"] == str(ckpt / "adapter")
    merged = AutoModelForCausalLM.from_pretrained(out.model.name_or_path, dtype=torch.float32)
    want = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32), str(adapter))
    ids = torch.tensor([[1, 5, 9, 13]])
    assert torch.allclose(_logits(merged, ids), _logits(want, ids), atol=1e-4)
