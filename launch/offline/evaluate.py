"""Use a trained adapter outside training: ``stonk eval`` (a run's report on a split) and
``stonk predict`` (``launch/offline/predict.py``); which adapter a run's ``--adapter`` names. Both
start one vLLM worker serving the adapter's base model, publish the adapter to it, and stop
it on every exit path.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

from trainer.config import ConfigError, StageConfig, load_config
from trainer.run_folder import RunFolder


def find_run_config(adapter: Path) -> Path | None:
    """The run's config.yaml above an adapter folder (checkpoints/step_N/adapter, adapters/vK)."""
    for folder in map(RunFolder, adapter.resolve().parents):
        if folder.config.is_file() and folder.metrics.exists():
            return folder.config
    return None


def resolve_adapter(run_dir: Path, which: str) -> Path:
    if which in ("best", "latest"):
        adapter = RunFolder(run_dir).adapter(which)
        if adapter is None:
            raise ConfigError(f"{run_dir}: no checkpoint yet (checkpoints/LATEST missing)")
        return adapter
    path = Path(which)
    if not (path / "adapter_config.json").is_file():
        raise ConfigError(f"--adapter {which}: not a peft adapter folder (no adapter_config.json)")
    return path


@contextmanager
def serving(cfg: StageConfig, adapter: Path, log_dir: Path):
    """A RolloutClient whose single worker serves ``adapter`` on ``cfg.model``."""
    from launch.run.runner import api_key
    from rollout.client import RolloutClient
    from rollout.server import WorkerPool

    plan = offline_plan(cfg)
    key = api_key(cfg, plan)
    pool = WorkerPool([offline_spec(cfg, plan, key, probe_ports=True)], log_dir,
                      cfg.rollout.startup_timeout_s)
    with pool:
        client = RolloutClient(pool.urls, timeout=cfg.rollout.request_timeout_s, api_key=key)
        client.publish(0, adapter)
        yield client


def evaluate_run(run_dir: Path, splits: list[str], which: str, overrides: list[str],
                 samples: int | None, out: Path | None) -> Path:
    from transformers import AutoTokenizer

    from trainer.evaluate import evaluate_and_report, headline
    from trainer.gate import read_gate
    from trainer.tasks import build_task
    from trainer.tasks.registry import task_usage

    cfg, adapter, _ = run_adapter(run_dir, which, None, overrides)
    out = out or run_dir
    task = build_task(cfg)
    tok = AutoTokenizer.from_pretrained(cfg.model.name_or_path,
                                        trust_remote_code=cfg.model.trust_remote_code)
    limit = cfg.eval.final_samples if samples is None else samples
    gate = read_gate(run_dir) if RunFolder(run_dir).gate.is_file() and out == run_dir else None
    notes = [f"adapter: {adapter}", f"task: {cfg.task}", *task_usage(cfg).eval_notes()]
    with serving(cfg, adapter, out / "logs") as client:
        evals, report = evaluate_and_report(task, cfg, client, tok, out, splits, limit, notes,
                                            gate=gate)
    for split, result in evals.items():
        print(f"[eval] {split}: {headline(result['metrics'])}", flush=True)
    return report


def run_adapter(run: Path | None, which: str, config: Path | None = None,
                overrides: list[str] | None = None) -> tuple[StageConfig, Path, Path | None]:
    """(the run's config, the adapter folder, the run folder or None) for ``--run RUN
    --adapter best|latest|DIR``, or ``--adapter DIR`` alone (its run found above it, or
    ``config``). The config's model is the adapter's own base (a Stage II adapter's is the
    merged Stage I model)."""
    if run is not None:
        if not RunFolder(run).config.is_file():
            raise ConfigError(f"--run {run}: not a run folder (no config.yaml)")
        adapter = resolve_adapter(run, which)
    elif which in ("best", "latest"):
        raise ConfigError(f"--adapter {which}: needs --run RUN (or give an adapter folder)")
    else:
        adapter = resolve_adapter(Path("."), which)
    if run is None and (found := find_run_config(adapter)) is not None:
        run = found.parent
    config = config or (RunFolder(run).config if run else None)
    if config is None:
        raise ConfigError(f"--adapter {adapter}: not inside a run folder; pass --config")
    cfg = load_config(config, overrides or [])
    if not any(o.startswith("model.name_or_path=") for o in overrides or []):
        cfg.model.name_or_path = adapter_base(run or config.parent, adapter, cfg)
    return cfg, adapter, run


def adapter_base(run: Path, adapter: Path, cfg: StageConfig) -> str:
    """The model the adapter was trained on: a Stage II run's own merged Stage I model
    (``RUN/base``), else the adapter's recorded base. A local path is made absolute and must
    exist: run folders record paths relative to where they were started, and a moved demo
    (``runs/demo-<time>``) would otherwise find the new demo's base under the old name."""
    folder = RunFolder(run)
    if folder.stage2.is_file() and folder.base.is_dir():
        return str(folder.base.resolve())
    try:
        meta = json.loads((adapter / "adapter_config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{adapter / 'adapter_config.json'}: unreadable: {exc}") from None
    base = meta.get("base_model_name_or_path") or cfg.model.name_or_path
    path = Path(base).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        raise ConfigError(f"{adapter / 'adapter_config.json'}: base model {base}: not a model "
                          f"folder (no config.json)")
    if path.exists():
        return str(path.resolve())
    if path.is_absolute() or base.startswith(".") or base.count("/") > 1:
        raise ConfigError(f"{adapter / 'adapter_config.json'}: base model {base}: no such "
                          f"folder from {Path.cwd()}; pass --set model.name_or_path=PATH")
    return base  # a hub id (org/name)


def offline_plan(cfg: StageConfig):
    """This node's plan for an offline command's one worker (``cfg`` set to one worker, on
    the first of the config's worker GPUs)."""
    from launch.run.plan import local_plan

    cfg.rollout.num_workers = 1
    if cfg.launch.worker_gpus:
        cfg.launch.worker_gpus = cfg.launch.worker_gpus[:cfg.rollout.tensor_parallel_size]
    return local_plan(cfg)


def offline_spec(cfg: StageConfig, plan, key: str | None, probe_ports: bool):
    """The one worker an offline command runs (``plan``: :func:`offline_plan`'s), with
    training's settings for the run. A ``CUDA_VISIBLE_DEVICES`` the user set wins over the
    config's worker GPUs (which name a training node's layout, where GPU 0 may be busy)."""
    import os

    from launch.run.runner import worker_specs

    (spec,) = worker_specs(cfg, plan.local_workers[:1], key, probe_ports)
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        spec.devices = None  # inherit
    return spec
