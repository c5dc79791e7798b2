"""Every YAML in configs/ loads and validates; bad configs fail naming the field."""

from pathlib import Path

import pytest

from trainer.config import ConfigError, from_dict, load_config

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))


def test_there_are_configs():
    assert {p.relative_to(REPO).as_posix() for p in CONFIGS} >= {
        "configs/stage1.yaml", "configs/demo/stage1.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_config_loads_validates_and_places(path):
    from launch.run.plan import local_plan, slurm_plan
    from launch.run.runner import accelerate_files

    cfg = load_config(path)
    assert cfg.train.steps >= 1
    if cfg.launch.slurm_worker_nodes > 1 or "multinode" in path.parts:
        env = {"SLURM_JOB_NODELIST": "n[1-3]", "SLURM_NODEID": "2"}
        plan = slurm_plan(cfg, env)
    else:
        plan = local_plan(cfg)
    assert plan.workers and plan.learner
    assert all((REPO / f).is_file() for f in accelerate_files(cfg, plan.learner))


def test_production_config_is_qwen_4bit_on_gpu():
    cfg = load_config(REPO / "configs/stage1.yaml")
    assert cfg.model.name_or_path == "Qwen/Qwen2.5-1.5B-Instruct"
    assert cfg.model.load_in_4bit and cfg.launch.device == "cuda"
    assert cfg.lora.r == 16 and cfg.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]


@pytest.mark.parametrize("data, message", [
    ({"train": {"stepz": 3}}, r"train\.stepz: unknown key; allowed keys here: steps"),
    ({"train": {"steps": "many"}}, r"train\.steps: expected an integer, got 'many'"),
    ({"lora": {"r": 12}}, r"lora\.r: 12 is not a rank vLLM accepts"),
    ({"launch": {"device": "tpu"}}, r"launch\.device: 'tpu' is not allowed; use one of 'cpu', 'cuda'"),
    ({"model": {"load_in_4bit": "yes"}}, r"model\.load_in_4bit: expected true or false"),
    ({"train": {"micro_batch_size": 5}}, r"train\.micro_batch_size: 5 must divide"),
    ({"reward": {"weights": {"vibes": 1.0}}}, r"reward\.weights\.vibes: unknown reward component"),
    ({"rollout": {"group_size": 1}}, r"rollout\.group_size: must be at least 2"),
    ({"train": {"anchor_coef": -0.5}}, r"train\.anchor_coef: must be >= 0"),
    ({"train": {"anchor_coef": 1.0}, "launch": {"zero_stage": 3}},
     r"train\.anchor_coef: the supervised anchor is not supported with launch\.zero_stage 3"),
    ({"train": {"pg_tokens": "lean"}}, r"train\.pg_tokens: 'lean' is not allowed"),
    ({"eval": {"also_on": ["bundled"]}}, r"eval\.also_on: 'bundled' is the run's own data source"),
    ({"eval": {"also_on": ["yahoo"]}}, r"eval\.also_on\[0\]: 'yahoo' is not a data source"),
])
def test_bad_fields_are_named(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(data, "x.yaml")


def test_overrides_apply_and_are_validated(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: {steps: 5}\n")
    assert load_config(path, ["train.steps=7", "rollout.temperature=0.7"]).train.steps == 7
    # YAML 1.1 reads 2e-3 (no dot) as a string; a float field still takes it
    assert load_config(path, ["train.learning_rate=2e-3"]).train.learning_rate == 0.002
    with pytest.raises(ConfigError, match=r"train\.learning_rate: expected a number, got '2e'"):
        load_config(path, ["train.learning_rate=2e"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(path, ["train.steps"])
    with pytest.raises(ConfigError, match=r"c\.yaml: train\.steps: expected an integer"):
        load_config(path, ["train.steps=lots"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_inherit_merges_sections_and_reports_cycles(tmp_path):
    (tmp_path / "base.yaml").write_text("train: {steps: 5, learning_rate: 0.001}\nlora: {r: 8}\n")
    (tmp_path / "child.yaml").write_text("inherit: base.yaml\ntrain: {steps: 9}\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert (cfg.train.steps, cfg.train.learning_rate, cfg.lora.r) == (9, 0.001, 8)
    (tmp_path / "a.yaml").write_text("inherit: b.yaml\n")
    (tmp_path / "b.yaml").write_text("inherit: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "orphan.yaml").write_text("inherit: gone.yaml\n")
    with pytest.raises(ConfigError, match=r"gone\.yaml: config file not found \(inherited by"):
        load_config(tmp_path / "orphan.yaml")
