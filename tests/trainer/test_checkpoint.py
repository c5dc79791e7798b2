"""Checkpoints on a real learner (tiny model, plain Accelerate: no DeepSpeed here; the
DeepSpeed path is exercised by tests/integration/test_resume.py): exact restore, a full disk
and a read-only target (real tmpfs / read-only bind mounts when this user may mount, else a
write that raises ENOSPC), retention, rollback of the run folder, resume checks."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from rollout.adapter_store import AdapterStore
from trainer import checkpoint
from trainer.checkpoint import CheckpointError
from trainer.config import StageConfig
from trainer.rollouts import PromptSampler
from trainer.tasks.base import Sample
from trainer.types import RolloutBatch


def _cfg(model: Path) -> StageConfig:
    cfg = StageConfig()
    cfg.model.name_or_path, cfg.model.dtype = str(model), "float32"
    cfg.train.learning_rate, cfg.train.prompts_per_rank = 1e-2, 2
    cfg.rollout.group_size, cfg.train.micro_batch_size = 2, 4
    cfg.lora.dropout = 0.1  # so the torch RNG state matters for the next step
    cfg.launch.device = "cpu"
    return cfg


def _learner(cfg):
    from accelerate import Accelerator

    from trainer.learner import Learner

    return Learner(cfg, Accelerator(cpu=True))


def _batch(seed: int) -> RolloutBatch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 400, (4, 6), generator=g)
    return RolloutBatch([[1, 5, 6, 7]] * 4, ids, torch.ones(4, 6), torch.full((4, 6), -3.0),
                        torch.randn(4, generator=g), torch.randn(4, generator=g),
                        torch.zeros(4, dtype=torch.long), group_size=2)


def _sampler() -> PromptSampler:
    return PromptSampler([Sample(f"s{i}", [{"role": "user", "content": str(i)}])
                          for i in range(5)], seed=3)


@pytest.fixture
def trained(tmp_path, tiny_model):
    """A learner after one step, its sampler after one draw, the adapter published as v1."""
    cfg = _cfg(tiny_model)
    learner, sampler = _learner(cfg), _sampler()
    sampler.next(cfg.train.prompts_per_rank)
    learner.train_step(_batch(0))
    store = AdapterStore(tmp_path / "run" / "adapters")
    store.publish(1, lambda d: learner.save_adapter(d))
    return cfg, learner, sampler, store, tmp_path / "run"


def _save(cfg, run_dir, step, learner, sampler, store):
    return checkpoint.save(cfg, run_dir, step, learner=learner, sampler=sampler,
                           adapter_dir=store.path(1), rank=0, world=1)


def test_restore_continues_exactly(trained, tiny_model):
    cfg, learner, sampler, store, run_dir = trained
    rng_at_save = torch.get_rng_state()
    ckpt = _save(cfg, run_dir, 1, learner, sampler, store)
    assert checkpoint.latest(run_dir) == ckpt
    expected_next = sampler.next(2)
    torch.manual_seed(1234)  # a different RNG state: the checkpoint's must come back
    fresh, fresh_sampler = _learner(cfg), _sampler()  # a fresh LoRA init and optimizer
    checkpoint.load(ckpt, cfg, learner=fresh, sampler=fresh_sampler, rank=0)
    assert torch.equal(torch.get_rng_state(), rng_at_save)
    assert fresh_sampler.next(2) == expected_next  # the data position
    # the next step (dropout draws from the same RNG state) is identical on both learners
    a = learner.train_step(_batch(1))
    torch.set_rng_state(rng_at_save)
    b = fresh.train_step(_batch(1))
    assert a["loss"] == b["loss"]
    for k, v in learner.adapter_tensors().items():
        assert torch.equal(v, fresh.adapter_tensors()[k]), k


def test_restore_continues_exactly_with_several_updates_per_batch(tmp_path, tiny_model):
    """train.updates_per_batch=2: the ratio's reference (the log-probs at a batch's start) is
    made anew from each batch, so a checkpoint between batches holds all a resume needs: the
    next batch's two updates are identical on the saved learner and on a fresh one loaded
    from the checkpoint."""
    cfg = _cfg(tiny_model)
    cfg.train.updates_per_batch = 2
    learner, sampler = _learner(cfg), _sampler()
    learner.train_step(_batch(0))
    store = AdapterStore(tmp_path / "run" / "adapters")
    store.publish(1, lambda d: learner.save_adapter(d))
    rng_at_save = torch.get_rng_state()
    ckpt = _save(cfg, tmp_path / "run", 1, learner, sampler, store)
    torch.manual_seed(99)
    fresh = _learner(cfg)
    checkpoint.load(ckpt, cfg, learner=fresh, sampler=_sampler(), rank=0)
    a = learner.train_step(_batch(1))
    torch.set_rng_state(rng_at_save)
    b = fresh.train_step(_batch(1))
    assert a == b and a["clip_frac"] > 0  # the second update's ratio left 1: it was used
    for k, v in learner.adapter_tensors().items():
        assert torch.equal(v, fresh.adapter_tensors()[k]), k


def test_damaged_checkpoint_is_refused(trained):
    cfg, learner, sampler, store, run_dir = trained
    ckpt = _save(cfg, run_dir, 1, learner, sampler, store)
    (ckpt / "deepspeed" / "optimizer.pt").write_bytes(b"truncated")
    with pytest.raises(CheckpointError, match="damaged checkpoint: deepspeed/optimizer.pt"):
        checkpoint.load(ckpt, cfg, learner=learner, sampler=_sampler(), rank=0)


def test_a_pickle_with_code_is_refused(tmp_path):
    from trainer.safe_state import safe_torch_load

    path = tmp_path / "evil.pt"
    torch.save({"x": torch.zeros(1), "f": shutil.rmtree}, path)
    with pytest.raises(RuntimeError, match="refusing to unpickle"):
        safe_torch_load(path)


@contextmanager
def _mounted(*args: str):
    target = args[-1]
    proc = subprocess.run(["mount", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount here ({proc.stderr.strip()[:80]}); the ENOSPC test "
                    f"with a raising write covers the logic")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", target], check=False)


def _intact(run_dir: Path, cfg, step: int) -> None:
    ckpt = checkpoint.latest(run_dir)
    assert ckpt is not None and checkpoint.read_state(ckpt)["step"] == step
    checkpoint._verify_files(ckpt, checkpoint.read_state(ckpt))
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))


@pytest.mark.parametrize("precheck", [True, False], ids=["caught-before", "during-write"])
def test_full_disk_leaves_the_previous_checkpoint_valid(trained, monkeypatch, precheck):
    """A tiny tmpfs. caught-before: the free-space check refuses before any rank writes;
    during-write: without it, the disk fills up in the middle of the optimizer state."""
    cfg, learner, sampler, store, run_dir = trained
    ckpts = run_dir / "checkpoints"
    ckpts.mkdir(parents=True)
    with _mounted("-t", "tmpfs", "-o", "size=4m", "tmpfs", str(ckpts)):
        _save(cfg, run_dir, 1, learner, sampler, store)
        one = checkpoint._tree_bytes(ckpts / "step_000001")
        free = shutil.disk_usage(ckpts).free
        (ckpts / "filler").write_bytes(b"\0" * (free - one // 2))
        if not precheck:
            monkeypatch.setattr(checkpoint, "_needed_bytes", lambda *a: 0)
        with pytest.raises(CheckpointError) as info:
            _save(cfg, run_dir, 2, learner, sampler, store)
        message = str(info.value)
        assert "No space left on device" in message
        assert str(ckpts) in message
        assert "step_000001 (step 1) is intact" in message and "RESUME=" in message
        _intact(run_dir, cfg, 1)
        (ckpts / "filler").unlink()
        checkpoint.load(ckpts / "step_000001", cfg, learner=_learner(cfg),
                        sampler=_sampler(), rank=0)


def test_read_only_target_leaves_the_previous_checkpoint_valid(trained):
    cfg, learner, sampler, store, run_dir = trained
    _save(cfg, run_dir, 1, learner, sampler, store)
    ckpts = str(run_dir / "checkpoints")
    with _mounted("--bind", ckpts, ckpts):
        subprocess.run(["mount", "-o", "remount,bind,ro", ckpts], check=True)
        with pytest.raises(CheckpointError, match="Read-only file system") as info:
            _save(cfg, run_dir, 2, learner, sampler, store)
        assert "make it writable" in str(info.value)
        _intact(run_dir, cfg, 1)


def test_a_write_failing_midway_leaves_the_previous_checkpoint_valid(trained, monkeypatch):
    """Where mounts are not allowed: the adapter copy (after the optimizer state is
    written) raises ENOSPC."""
    cfg, learner, sampler, store, run_dir = trained
    _save(cfg, run_dir, 1, learner, sampler, store)

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.shutil, "copytree", no_space)
    with pytest.raises(CheckpointError, match="No space left on device.*step_000001 "
                                              r"\(step 1\) is intact"):
        _save(cfg, run_dir, 2, learner, sampler, store)
    _intact(run_dir, cfg, 1)


def test_keeps_the_newest_checkpoints(trained):
    cfg, learner, sampler, store, run_dir = trained
    cfg.run.keep_checkpoints = 2
    for step in (1, 2, 3, 4):
        _save(cfg, run_dir, step, learner, sampler, store)
    assert [s for s, _ in checkpoint.step_dirs(run_dir)] == [3, 4]
    assert (run_dir / "checkpoints" / "LATEST").read_text().strip() == "step_000004"


def test_resume_point_checks_world_config_and_steps(trained):
    cfg, learner, sampler, store, run_dir = trained
    cfg.train.steps = 5
    _save(cfg, run_dir, 1, learner, sampler, store)
    assert checkpoint.resume_point(run_dir, cfg, 1)[1]["step"] == 1
    with pytest.raises(CheckpointError, match="written by 1 learner rank"):
        checkpoint.resume_point(run_dir, cfg, 2)
    cfg.train.steps, cfg.rollout.base_port, cfg.eval.every_steps = 9, 9000, 3  # may change
    checkpoint.resume_point(run_dir, cfg, 1)
    cfg.lora.r, cfg.rollout.temperature = 8, 0.5
    with pytest.raises(CheckpointError, match=r"lora\.r: 16 -> 8\n.*rollout\.temperature"):
        checkpoint.resume_point(run_dir, cfg, 1)
    cfg.lora.r, cfg.rollout.temperature, cfg.train.steps = 16, 1.0, 1
    with pytest.raises(CheckpointError, match="already reached step 1"):
        checkpoint.resume_point(run_dir, cfg, 1)


def test_a_checkpoint_from_before_a_field_was_added_resumes(trained):
    """A checkpoint written by a version without train.policy_loss (its config.json and hash
    lack it) resumes while the field stays at its default, and is refused once it differs."""
    import json

    cfg, learner, sampler, store, run_dir = trained
    cfg.train.steps = 5
    ckpt = _save(cfg, run_dir, 1, learner, sampler, store)
    saved = json.loads((ckpt / "config.json").read_text())
    del saved["train"]["policy_loss"]
    (ckpt / "config.json").write_text(json.dumps(saved))
    state = json.loads((ckpt / "state.json").read_text())
    state["config_hash"] = "0" * 16  # what the older version's hash would be: different
    (ckpt / "state.json").write_text(json.dumps(state))
    assert checkpoint.resume_point(run_dir, cfg, 1)[1]["step"] == 1
    cfg.train.policy_loss = "cispo"
    with pytest.raises(CheckpointError, match=r"train\.policy_loss: 'grpo' -> 'cispo'"):
        checkpoint.resume_point(run_dir, cfg, 1)


def test_rollback_forgets_what_came_after_the_checkpoint(trained):
    cfg, learner, sampler, store, run_dir = trained
    ckpt = _save(cfg, run_dir, 1, learner, sampler, store)
    for v in (2, 3):
        store.publish(v, lambda d: learner.save_adapter(d))
    (run_dir / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3)) + '{"step": 4, "tor')
    (run_dir / "rollouts.rank0.jsonl").write_text(
        "".join(json.dumps({"step": s}) + "\n" for s in (1, 1, 2)))
    (run_dir / "checkpoints" / "best.json").write_text(json.dumps({"step": 3, "value": 1}))
    (run_dir / "checkpoints" / "best").mkdir()
    checkpoint.rollback(run_dir, ckpt, 1, 0, store)
    assert (run_dir / "metrics.jsonl").read_text() == '{"step": 1}\n'
    assert (run_dir / "rollouts.rank0.jsonl").read_text().count("\n") == 2
    assert store.versions() == [1] and store.latest() == 1
    assert not (run_dir / "checkpoints" / "best").exists()
    assert ((store.path(1) / "adapter_model.safetensors").read_bytes()
            == (ckpt / "adapter" / "adapter_model.safetensors").read_bytes())


def test_the_run_folder_names_best_latest_and_nothing(tmp_path):
    from trainer.run_folder import RunFolder

    run = RunFolder(tmp_path)
    assert run.adapter("best") is None and run.adapter("latest") is None
    run.checkpoint(4).joinpath("adapter").mkdir(parents=True)
    run.latest_marker.write_text("step_000004\n")
    assert run.checkpoint(4).name == "step_000004"
    step4 = tmp_path / "checkpoints" / "step_000004" / "adapter"
    assert run.adapter("best") == run.adapter("latest") == step4
    (run.best / "adapter").mkdir(parents=True)
    assert run.adapter("best") == tmp_path / "checkpoints/best/adapter"
    assert run.adapter("latest") == step4
