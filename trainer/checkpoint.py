"""Checkpoints: everything a run needs to continue exactly, written atomically; resume.

Layout of ``<run>/checkpoints/``::

    step_000040/
        adapter/                 the published adapter v40 (peft, safetensors): what workers load
        deepspeed/state/         the learner's training state (trainer/learner.py save_state):
                                 LoRA weights, each rank's ZeRO optimizer partition (AdamW
                                 moments, fp32 master weights), scheduler, step counters
        rank{r}.json             per learner rank: data position, Python / NumPy RNG states
        rank{r}.rng.safetensors  per learner rank: torch CPU (and CUDA) RNG states
        config.yaml              the resolved config of the run
        state.json               step, adapter version, world size, config hash, and the size
                                 of every file above (written last)
    LATEST                       the name of the newest complete checkpoint
    best/  best.json             the best adapter by eval.best_metric (trainer/evaluate.py)

Writing is collective and atomic. Rank 0 makes ``.tmp-step_N/`` and checks that the target is
writable and has room (all ranks agree on the verdict before any collective write), every
rank writes its part, rank 0 adds the rest, fsyncs every file, renames the folder into place
and only then replaces LATEST; the newest ``run.keep_checkpoints`` are kept. Any failure
(no space, read-only target) removes the temporary folder and raises CheckpointError naming
the target, the reason, the intact previous checkpoint and the command that continues: LATEST
only ever points at a complete checkpoint.

Resuming (``--resume``, trainer/recipe.py) loads LATEST on every rank: it refuses a different
world size or a config that changed in a field that matters (``trainer/config/resume.py``
lists the ones that may change, e.g. train.steps), verifies every file's size, restores the learner
state and checks the restored adapter equals ``adapter/`` bit for bit, puts the prompt
sampler at the saved data position (``PromptSampler.load_state_dict``: the same shard, or a
refusal), then restores RNG states. ``rollback``
removes what the interrupted run did after the checkpoint (metrics and rollout rows, newer
adapter versions, a newer best), so the resumed run continues one consistent history.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.files import atomic_write_text, fsync_dir
from rollout.adapter_store import AdapterStore
from trainer.config import StageConfig, save_config
from trainer.config.resume import config_changes, config_hash, with_defaults
from trainer.dist import all_ranks_ok
from trainer.run_folder import CHECKPOINT_PREFIX, RunFolder

STATE = "state.json"
PREFIX = CHECKPOINT_PREFIX

class CheckpointError(RuntimeError):
    """A checkpoint could not be written or resumed; the message says why and what to do."""


# ---------------------------------------------------------------------------- finding


def step_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    root = RunFolder(run_dir).checkpoints
    if not root.is_dir():
        return []
    found = [(int(p.name[len(PREFIX):]), p) for p in root.iterdir()
             if p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    return sorted(found)


def latest(run_dir: Path) -> Path | None:
    """The checkpoint LATEST names, if it is complete (it always is, unless edited by hand)."""
    path = RunFolder(run_dir).latest_checkpoint()
    return path if path is not None and (path / STATE).is_file() else None


def read_state(ckpt: Path) -> dict[str, Any]:
    return json.loads((ckpt / STATE).read_text())


def resume_point(run_dir: Path, cfg: StageConfig, world: int) -> tuple[Path, dict[str, Any]]:
    """The checkpoint to resume from, after every check that needs no model: exists,
    complete, same world size, compatible config, steps left to train."""
    ckpt = latest(run_dir)
    if ckpt is None:
        raise CheckpointError(f"{RunFolder(run_dir).checkpoints}: no complete checkpoint to "
                              f"resume from "
                              f"(LATEST missing); start a fresh run instead")
    state = read_state(ckpt)
    if state["world_size"] != world:
        raise CheckpointError(
            f"{ckpt}: written by {state['world_size']} learner rank(s), this run has {world}; "
            f"resume with launch.num_processes={state['world_size']} (each rank's data shard "
            f"and optimizer partition depend on it)")
    if state["config_hash"] != config_hash(cfg):
        # a field added since the checkpoint was written reads as its default there: a run
        # started before an upgrade resumes after it, unless a field it had really changed
        saved = with_defaults(json.loads((ckpt / "config.json").read_text()))
        if changes := config_changes(saved, cfg.to_dict()):
            listed = "\n".join(f"  - {c}" for c in changes)
            raise CheckpointError(f"{ckpt}: the config changed in fields a resume must keep:"
                                  f"\n{listed}\nput them back, or start a fresh run")
    if state["step"] >= cfg.train.steps:
        raise CheckpointError(f"{ckpt}: the run already reached step {state['step']} "
                              f"(train.steps={cfg.train.steps}); to train further, resume with "
                              f"--set train.steps=N (N > {state['step']})")
    return ckpt, state


# ---------------------------------------------------------------------------- writing


def _fsync_tree(root: Path) -> dict[str, int]:
    """fsync every file and folder under ``root``; returns {relative path: size}."""
    sizes = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
            sizes[str(path.relative_to(root))] = path.stat().st_size
        fsync_dir(Path(dirpath))
    return sizes


def _tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def failure_message(cfg: StageConfig, run_dir: Path, step: int, target: Path,
                    reason: str) -> str:
    prev = latest(run_dir)
    kept = (f"The previous checkpoint {prev} (step {read_state(prev)['step']}) is intact."
            if prev else "There is no earlier checkpoint.")
    hint = {errno.ENOSPC: "free space on that filesystem (or lower run.keep_checkpoints, or "
                          "point run.output_dir elsewhere)",
            errno.EROFS: "make it writable (or point run.output_dir elsewhere)",
            errno.EACCES: "make it writable (or point run.output_dir elsewhere)"}
    code = next((c for c in hint if os.strerror(c) in reason), errno.ENOSPC)
    return (f"checkpoint step {step} could not be written to {target}: {reason}. {kept} "
            f"To continue: {hint[code]}, then `make stage{cfg.stage} RESUME={run_dir}`.")


def _prepare(root: Path, tmp: Path, need: int) -> str | None:
    """Rank 0, before any collective write: a fresh temporary folder with room. None: ok."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        probe = tmp / ".probe"
        with open(probe, "wb") as fh:
            fh.write(b"\0" * 4096)
            fh.flush()
            os.fsync(fh.fileno())
        probe.unlink()
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        return f"[Errno {exc.errno}] {os.strerror(exc.errno or 0)}"
    free = shutil.disk_usage(root).free
    if free < need:
        shutil.rmtree(tmp, ignore_errors=True)
        return (f"[Errno {errno.ENOSPC}] {os.strerror(errno.ENOSPC)} ({free / 1e6:.1f} MB free, "
                f"a checkpoint needs about {need / 1e6:.1f} MB)")
    return None


def _reason(exc: Exception, root: Path, need: int) -> str:
    """The error, and the diagnosis when the disk is full (torch.save reports a full disk as
    e.g. "unexpected pos 236544 vs 236436"). Call it before removing the partial write."""
    text = str(exc)
    try:
        free = shutil.disk_usage(root).free
    except OSError:
        return text
    if free < max(need, 1 << 20) and os.strerror(errno.ENOSPC) not in text:
        return (f"{os.strerror(errno.ENOSPC)} ({free / 1e6:.1f} MB free, a checkpoint needs "
                f"about {need / 1e6:.1f} MB; the write failed with: {text})")
    return text


def _needed_bytes(run_dir: Path, learner) -> int:
    """About the size of the next checkpoint: the last one, else 5x the trainable weights."""
    done = step_dirs(run_dir)
    if done:
        return int(_tree_bytes(done[-1][1]) * 1.1)
    return learner.trainable_bytes() * 5 + (1 << 20)


def _write_rank_state(tmp: Path, rank: int, sampler) -> None:
    from safetensors.torch import save_file

    py = random.getstate()
    npst = np.random.get_state()
    meta = {"rank": rank,
            "sampler": sampler.state_dict(),
            "python_random": [py[0], list(py[1]), py[2]],
            "numpy_random": [npst[0], int(npst[2]), int(npst[3]), float(npst[4])]}
    tensors = {"torch": torch.get_rng_state(),
               "numpy_keys": torch.from_numpy(np.asarray(npst[1], dtype=np.int64))}
    if torch.cuda.is_available():
        for i, st in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = st
    save_file(tensors, str(tmp / f"rank{rank}.rng.safetensors"))
    (tmp / f"rank{rank}.json").write_text(json.dumps(meta))


def _finalize(cfg: StageConfig, run_dir: Path, step: int, tmp: Path, final: Path,
              adapter_dir: Path, world: int) -> None:
    """Rank 0: complete the folder, make it durable, rename it into place, move LATEST."""
    shutil.copytree(adapter_dir, tmp / "adapter")
    save_config(cfg, tmp / "config.yaml")
    (tmp / "config.json").write_text(json.dumps(cfg.to_dict(), sort_keys=True, default=str))
    files = _fsync_tree(tmp)
    state = {"step": step, "adapter_version": step, "world_size": world,
             "config_hash": config_hash(cfg), "stage": cfg.stage, "time": time.time(),
             "files": files}
    with open(tmp / STATE, "w") as fh:
        fh.write(json.dumps(state, indent=1))
        fh.flush()
        os.fsync(fh.fileno())
    old = final.with_name(f".old-{final.name}")
    if final.exists():  # never expected after rollback; keep the swap atomic regardless
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
    os.rename(tmp, final)
    fsync_dir(final.parent)
    atomic_write_text(RunFolder(final.parent.parent).latest_marker, final.name + "\n")
    fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def save(cfg: StageConfig, run_dir: Path, step: int, *, learner, sampler, adapter_dir: Path,
         rank: int, world: int) -> Path:
    """Collective (every rank calls it). Returns the checkpoint folder; raises
    CheckpointError (on every rank that is still running) when it could not be written."""
    final = RunFolder(run_dir).checkpoint(step)
    root, tmp = final.parent, final.with_name(f".tmp-{final.name}")
    need = _needed_bytes(run_dir, learner)
    problem = _prepare(root, tmp, need) if rank == 0 else None
    if not all_ranks_ok(problem is None, learner.device):
        raise CheckpointError(failure_message(cfg, run_dir, step, root, problem)
                              if rank == 0 else "see rank 0")
    try:
        learner.save_state(tmp / "deepspeed")  # collective under DeepSpeed
        _write_rank_state(tmp, rank, sampler)
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as RuntimeError
        reason = _reason(exc, root, need)
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(failure_message(cfg, run_dir, step, tmp, reason)) from None
    problem = None
    if all_ranks_ok(True, learner.device) and rank == 0:
        try:
            _finalize(cfg, run_dir, step, tmp, final, adapter_dir, world)
        except (OSError, RuntimeError) as exc:
            problem = _reason(exc, root, need)
            shutil.rmtree(tmp, ignore_errors=True)
    if not all_ranks_ok(problem is None, learner.device):
        raise CheckpointError(failure_message(cfg, run_dir, step, root, problem)
                              if rank == 0 else "see rank 0")
    if rank == 0:
        prune(run_dir, cfg.run.keep_checkpoints)
    return final


def prune(run_dir: Path, keep: int) -> list[Path]:
    """Remove all but the newest ``keep`` checkpoints (never the one LATEST names)."""
    current = latest(run_dir)
    old = [p for _, p in step_dirs(run_dir)[:-keep] if p != current]
    for p in old:
        try:
            shutil.rmtree(p)
        except OSError as exc:
            print(f"[checkpoint] warning: could not remove {p}: {exc}", flush=True)
    return old


# ---------------------------------------------------------------------------- loading


def _verify_files(ckpt: Path, state: dict[str, Any]) -> None:
    bad = [f"{name} ({'missing' if not (ckpt / name).is_file() else 'size differs'})"
           for name, size in state["files"].items()
           if not (ckpt / name).is_file() or (ckpt / name).stat().st_size != size]
    if bad:
        raise CheckpointError(f"{ckpt}: damaged checkpoint: {', '.join(bad[:5])}")


def _verify_adapter(learner, adapter_dir: Path) -> None:
    from safetensors.torch import load_file

    saved = load_file(str(adapter_dir / "adapter_model.safetensors"))
    restored = learner.adapter_tensors()
    if set(saved) != set(restored):
        raise CheckpointError(f"{adapter_dir}: adapter keys differ from the restored learner's")
    worst = max(float((saved[k].float() - restored[k].float()).abs().max()) for k in saved)
    if worst != 0.0:
        raise CheckpointError(f"{adapter_dir}: the restored learner's adapter differs from the "
                              f"checkpoint's (max |diff| {worst:.3g})")


def _restore_rank_state(ckpt: Path, rank: int, sampler) -> None:
    from safetensors.torch import load_file

    meta = json.loads((ckpt / f"rank{rank}.json").read_text())
    try:  # the saved position, not a replay of prompts_per_rank draws a step: dynamic
        sampler.load_state_dict(meta["sampler"])  # sampling draws a varying number
    except ValueError as exc:
        raise CheckpointError(f"{ckpt}: rank {rank}'s data shard differs from the checkpoint's "
                              f"({exc}): did the data change?") from None
    tensors = load_file(str(ckpt / f"rank{rank}.rng.safetensors"))
    py = meta["python_random"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, pos, has_gauss, cached = meta["numpy_random"]
    np.random.set_state((kind, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss,
                         cached))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def load(ckpt: Path, cfg: StageConfig, *, learner, sampler, rank: int) -> dict[str, Any]:
    """Every rank: restore the learner, this rank's data position and RNG states."""
    state = read_state(ckpt)
    _verify_files(ckpt, state)
    try:
        learner.load_state(ckpt / "deepspeed")
    except (OSError, RuntimeError) as exc:
        raise CheckpointError(f"{ckpt}: could not restore the learner state: {exc}") from None
    _verify_adapter(learner, ckpt / "adapter")
    _restore_rank_state(ckpt, rank, sampler)
    return state


# ---------------------------------------------------------------------------- run folder


def _truncate_jsonl(path: Path, step: int) -> None:
    """Keep the rows of steps <= ``step`` (and drop a torn last line), atomically."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    atomic_write_text(path, "".join(f"{x}\n" for x in keep))


def rollback(run_dir: Path, ckpt: Path, step: int, rank: int, store: AdapterStore) -> None:
    """Undo what the interrupted run did after ``step``; republish the checkpoint's adapter
    as version ``step`` in the store (rank 0). Every rank trims its own rollouts file."""
    folder = RunFolder(run_dir)
    _truncate_jsonl(folder.rollouts(rank), step)
    if rank != 0:
        return
    _truncate_jsonl(folder.metrics, step)
    root = folder.checkpoints
    for p in root.glob(".tmp-*"):
        shutil.rmtree(p, ignore_errors=True)
    for s, p in step_dirs(run_dir):
        if s > step:
            shutil.rmtree(p, ignore_errors=True)
    best = root / "best.json"
    if best.is_file() and json.loads(best.read_text())["step"] > step:
        shutil.rmtree(folder.best, ignore_errors=True)
        best.unlink()
    for p in store.root.glob(".tmp-*"):
        shutil.rmtree(p, ignore_errors=True)
    for v in store.versions():
        if v >= step:
            shutil.rmtree(store.path(v))
    store.publish(step, lambda d: shutil.copytree(ckpt / "adapter", d, dirs_exist_ok=True))
