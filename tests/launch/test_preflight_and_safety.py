"""Config errors and resource checks before anything heavy starts; resource errors in the
user's terms; safe loading (no pickle of untrusted files, no remote code unless allowed,
adapters only from the run's store)."""

from __future__ import annotations

import importlib.util
import json
import re
import time
from pathlib import Path

import pytest
import torch

from launch.planning import preflight
from rollout.client import NoWorkersError, RolloutClient
from rollout.server import WorkerError, WorkerSpec
from trainer.config import ConfigError, StageConfig, from_dict, load_config, mixed_precision

REPO = Path(__file__).resolve().parents[2]
GIB = 2**30


def _gpu_cfg(**launch) -> StageConfig:
    cfg = StageConfig()
    cfg.launch.device = "cuda"
    for k, v in launch.items():
        setattr(cfg.launch, k, v)
    return cfg


@pytest.mark.parametrize("data, message", [
    ({"rollout": {"chunked_prefill": True}, "launch": {"device": "cpu"}},
     r"rollout\.chunked_prefill: true with rollout\.seed_requests: true kills vLLM-CPU"),
    ({"rollout": {"chunked_prefill": "maybe"}},
     r"rollout\.chunked_prefill: 'maybe' is not allowed; use true/false or null"),
    ({"rollout": {"max_worker_restarts": -1}}, r"rollout\.max_worker_restarts: must be >= 0"),
    ({"run": {"keep_checkpoints": 0}}, r"run\.keep_checkpoints: must be at least 1"),
    ({"rollout": {"request_retries": 1.5}}, r"rollout\.request_retries: expected an integer"),
    ({"model": {"load_in_4bit": True}, "launch": {"zero_stage": 3}},
     r"launch\.zero_stage: ZeRO-3 cannot partition a 4-bit base"),
])
def test_incompatible_options_name_the_field_and_what_is_allowed(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(data, "x.yaml")


def test_seeded_requests_are_the_default_and_cpu_workers_then_skip_chunked_prefill():
    from launch.run.runner import chunked_prefill

    cfg = load_config(REPO / "configs/demo/stage1.yaml")
    assert cfg.rollout.seed_requests and chunked_prefill(cfg) is False
    assert "--no-enable-chunked-prefill" in WorkerSpec("m", 1, chunked_prefill=False).command()
    assert chunked_prefill(load_config(REPO / "configs/stage1.yaml")) is None  # GPU: vLLM's


@pytest.mark.parametrize("count, launch, message", [
    (0, {}, r"no CUDA GPU is visible"),
    (4, {"worker_gpus": [0, 1, 2, 3], "learner_gpus": [4, 5, 6, 7], "num_processes": 4},
     r"GPU\(s\) \[4, 5, 6, 7\] do not exist, 4 are visible \(0-3\)"),
    (8, {"worker_gpus": [0, 1, 2, 3], "learner_gpus": [4, 5, 6, 7], "num_processes": 4}, None),
])
def test_more_gpus_than_present(count, launch, message):
    cfg = _gpu_cfg(**launch)
    cfg.rollout.num_workers = len(cfg.launch.worker_gpus) or 1
    problem = preflight.gpu_problem(cfg, count)
    assert (problem is None) if message is None else re.search(message, problem)


def test_cpu_kv_cache_must_fit_in_free_ram():
    cfg = load_config(REPO / "configs/demo/stage1.yaml")
    assert preflight.cpu_memory_problem(cfg, total=24 * GIB, available=12 * GIB) is None
    cfg.rollout.gpu_memory_utilization = 0.92
    problem = preflight.cpu_memory_problem(cfg, total=24 * GIB, available=12 * GIB)
    assert "rollout.gpu_memory_utilization: 0.92" in problem and "22.1 GiB" in problem


def test_4bit_without_bitsandbytes(monkeypatch):
    cfg = StageConfig()
    cfg.model.load_in_4bit = True
    assert preflight.quantization_problem(cfg) is None  # installed here
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    assert "pip install bitsandbytes" in preflight.quantization_problem(cfg)


def test_model_code_runs_only_when_the_config_allows_it(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"auto_map": {"AutoModel": "x.Model"}}))
    cfg = StageConfig()
    cfg.model.name_or_path = str(tmp_path)
    assert not cfg.model.trust_remote_code  # off by default
    assert "model.trust_remote_code: true" in preflight.remote_code_problem(cfg)
    cfg.model.trust_remote_code = True
    assert preflight.remote_code_problem(cfg) is None
    assert "--trust-remote-code" not in WorkerSpec("m", 1).command()


def test_missing_data_is_named(tmp_path):
    cfg = StageConfig()
    cfg.data.source, cfg.data.path = "local", str(tmp_path / "nope.csv")
    assert "data.path:" in preflight.data_problem(cfg)
    cfg.data.source, cfg.data.hf_name = "hf", "./no/such/dataset"
    assert "data.hf_name: ./no/such/dataset does not exist" in preflight.data_problem(cfg)


@pytest.mark.parametrize("log, wants", [  # the messages vLLM 0.32 prints
    ("Available memory on node 0 (8.1/23.5 GiB) on startup is less than desired CPU memory "
     "utilization (0.9, 21.2 GiB).", "lower rollout.gpu_memory_utilization"),
    ("ValueError: Available memory on node 0 (6.19/23.54 GiB) on kv cache allocation is less "
     "than requested memory for kv (-0.63/0.0 GiB).", "must cover the model"),
    ("ValueError: No available memory for the cache blocks. Try increasing "
     "`gpu_memory_utilization` when initializing the engine.",
     "raise rollout.gpu_memory_utilization or lower model.max_model_len"),
    ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
     "rollout.tensor_parallel_size=1"),
    # the CUDA build's (vLLM 0.33: v1/worker/utils.py, v1/core/kv_cache_utils.py)
    ("ValueError: Free memory on device cuda:0 (3.21/10.75 GiB) on startup is less than "
     "desired GPU memory utilization (0.35, 3.76 GiB). Decrease GPU memory utilization or "
     "reduce GPU memory used by other processes.", "lower rollout.gpu_memory_utilization"),
    ("ValueError: To serve at least one request with the model's max seq len (2048), (0.06 "
     "GiB KV cache is needed, which is larger than the available KV cache memory (0.01 GiB). "
     "Try increasing `gpu_memory_utilization`", "raise rollout.gpu_memory_utilization"),
    ("ModuleNotFoundError: no module named foo", None),
])
def test_worker_memory_failures_name_the_settings(log, wants):
    hint = preflight.worker_failure_hint(log, StageConfig())
    assert (hint is None) if wants is None else (wants in hint and "0.85" in hint)


def test_learner_out_of_memory_names_the_settings(tiny_model, monkeypatch):
    from accelerate import Accelerator

    from tests.trainer.test_checkpoint import _batch, _cfg
    from trainer import learner as learner_mod

    learner = learner_mod.Learner(_cfg(tiny_model), Accelerator(cpu=True))

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.00 GiB")

    monkeypatch.setattr(learner_mod, "score_tokens", oom)  # the policy pass, the first
    with pytest.raises(learner_mod.OutOfMemory) as info:
        learner.train_step(_batch(0))
    text = str(info.value)
    assert "train.micro_batch_size=4" in text and "rollout.max_tokens (128)" in text
    assert "Tried to allocate 3.00 GiB" in text


def test_adapters_load_only_from_the_run_store(tmp_path):
    client = RolloutClient(["http://127.0.0.1:9"], adapter_root=tmp_path / "adapters")
    with pytest.raises(WorkerError, match="not in the run's adapter store"):
        client.sync(0, tmp_path / "elsewhere" / "v000000")
    with pytest.raises(WorkerError, match="not in the run's adapter store"):
        client.publish(0, tmp_path / "adapters" / ".." / "x")


def test_no_live_worker_gives_up_after_the_wait(tmp_path):
    client = RolloutClient(["http://127.0.0.1:9"], timeout=2, wait_for_workers_s=3,
                           health_timeout=1)
    t0 = time.monotonic()
    with pytest.raises(NoWorkersError, match="no worker answered for 3s"):
        client.sync(0, tmp_path)
    assert time.monotonic() - t0 < 15


def test_no_pickle_loading_in_project_code():
    """torch.load only with weights_only=True; no pickle module; safetensors for weights."""
    offenders = []
    for path in [*REPO.glob("trainer/**/*.py"), *REPO.glob("rollout/*.py"),
                 *REPO.glob("launch/**/*.py")]:
        text = path.read_text()
        for m in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in m.group(1):
                offenders.append(f"{path.name}: {m.group(0)}")
        if re.search(r"^\s*import pickle|^\s*from pickle|pickle\.loads?\(", text, re.M):
            offenders.append(f"{path.name}: pickle")
        if "from_pretrained(" in text and "use_safetensors=False" in text:
            offenders.append(f"{path.name}: use_safetensors=False")
    assert not offenders, offenders


def test_workers_bind_loopback_by_default_and_remote_ones_need_a_key(monkeypatch):
    from launch.run.plan import local_plan
    from launch.run.runner import api_key

    cfg = StageConfig()
    assert WorkerSpec("m", 1).host == cfg.rollout.host == "127.0.0.1"
    cfg.rollout.host = "0.0.0.0"
    monkeypatch.delenv(cfg.rollout.api_key_env, raising=False)
    with pytest.raises(ConfigError, match="need an API key"):
        api_key(cfg, local_plan(cfg))


TURING = {0: ("NVIDIA GeForce RTX 2080 Ti", (7, 5))}
AMPERE = {0: ("NVIDIA A10G", (8, 6))}


@pytest.mark.parametrize("model_dtype, rollout_dtype, gpus, field", [
    ("bfloat16", "bfloat16", TURING, "model.dtype: bfloat16 and rollout.dtype: bfloat16"),
    ("float16", "bfloat16", TURING, "rollout.dtype: bfloat16"),
    ("bfloat16", "auto", TURING, "model.dtype: bfloat16"),
    ("float16", "float16", TURING, None),  # what configs/stage1_11gb.yaml sets
    ("float16", "auto", TURING, None),  # vLLM's auto falls back to float16 by itself
    ("bfloat16", "bfloat16", AMPERE, None),
])
def test_bfloat16_below_compute_capability_8_is_refused_naming_float16(model_dtype,
                                                                       rollout_dtype, gpus,
                                                                       field):
    cfg = _gpu_cfg(worker_gpus=[0], learner_gpus=[0], colocate=True)
    cfg.model.dtype, cfg.rollout.dtype = model_dtype, rollout_dtype
    problem = preflight.precision_problem(cfg, gpus)
    if field is None:
        assert problem is None
    else:
        assert problem.startswith(field + ":") and "float16" in problem.split(";")[1]
        assert "GPU 0 (NVIDIA GeForce RTX 2080 Ti) has 7.5" in problem


def test_only_the_gpus_the_run_uses_are_judged():
    cfg = _gpu_cfg(worker_gpus=[1], learner_gpus=[2])
    gpus = {0: TURING[0], 1: AMPERE[0], 2: AMPERE[0]}
    assert preflight.precision_problem(cfg, gpus) is None
    cfg.launch.learner_gpus = [0]
    assert "GPU 0" in preflight.precision_problem(cfg, gpus)


@pytest.mark.parametrize("device, dtype, flag", [
    ("cuda", "bfloat16", "bf16"), ("cuda", "float16", "fp16"), ("cuda", "float32", "no"),
    ("cpu", "bfloat16", "no"), ("cpu", "float32", "no")])
def test_the_learner_launch_takes_its_mixed_precision_from_model_dtype(device, dtype, flag):
    from launch.run.plan import local_plan
    from launch.run.runner import learner_command

    cfg = StageConfig()
    cfg.launch.device, cfg.model.dtype = device, dtype
    cmd = learner_command(cfg, Path("runs/x"), "trainer.train", local_plan(cfg).learner,
                          probe_port=False)
    assert cmd[cmd.index("--mixed_precision") + 1] == flag
    assert mixed_precision(cfg) == flag  # what the learner builds its Accelerator with
    for ds in ("ds_config.json", "launch/accelerate/ds_zero3.json"):  # DeepSpeed follows it
        import json

        conf = json.loads((REPO / ds).read_text())
        assert conf["bf16"]["enabled"] == conf["fp16"]["enabled"] == "auto"


def test_a_fresh_run_refuses_a_folder_that_holds_a_run(tmp_path):
    from launch.run.runner import fresh_run_problem

    run = tmp_path / "r"
    assert fresh_run_problem(run, "stage1") is None  # not there yet
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    assert fresh_run_problem(run, "stage1") is None  # a folder of the user's own
    (run / "adapters").mkdir()
    (run / "metrics.jsonl").write_text("{}\n")
    problem = fresh_run_problem(run, "stage1")
    assert problem == (f"{run} already holds a run (metrics.jsonl, adapters): continue it "
                       f"with RESUME={run} (stonk stage1 --resume {run}), or start a new one "
                       "with --set run.name=<a new name>")


GPU_ACCELERATE = sorted(p.name for p in (REPO / "launch/accelerate").glob("*.yaml")
                        if "use_cpu: true" not in p.read_text())


@pytest.mark.parametrize("name", GPU_ACCELERATE)
def test_a_by_hand_accelerate_launch_of_every_gpu_config_passes_accelerates_checks(
        name, monkeypatch):
    """The by-hand command of README and docs/launching.md (`accelerate launch --config_file
    launch/accelerate/X.yaml -m trainer.train ...`, no --mixed_precision) through accelerate's own launch validation
    and the environment its DeepSpeed launcher hands the ranks, up to the DeepSpeedPlugin
    every rank's Accelerator builds. A config file's mixed_precision beside a
    deepspeed_config_file is refused there (ValueError); a CPU launch skips that check, so
    only this shows it without a GPU."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import DeepSpeedPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    monkeypatch.chdir(REPO)
    args = launch_command_parser().parse_args([
        "--config_file", f"launch/accelerate/{name}", "--num_processes", "2",
        "-m", "trainer.train", "--config", "configs/node/stage1.yaml"])
    args, defaults, mp_from_file = _validate_launch_command(args)
    assert args.use_deepspeed and not args.cpu
    # what accelerate's launch_command does before its DeepSpeed launcher
    args.deepspeed_fields_from_accelerate_config = ",".join(
        [*defaults.deepspeed_config, *(["mixed_precision"] if mp_from_file else [])])
    _, env = prepare_deepspeed_cmd_env(args)
    for key, value in env.items():
        if key.startswith("ACCELERATE_"):
            monkeypatch.setenv(key, value)
    plugin = DeepSpeedPlugin()  # raises where the launch would fail on every rank
    assert plugin.zero_stage == (3 if "zero3" in name else 2)
