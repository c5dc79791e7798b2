"""Our vLLM workers outside a training run, for the rollout and push benchmarks: the specs the
launcher would start for a config (``launch.run.runner.worker_specs``), an adapter store with a
fresh LoRA adapter v0 from the learner's own model builder, and a client serving it."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path


def policy(cfg):
    """The learner's model (base + fresh LoRA from ``cfg.lora``), seeded as the learner does."""
    import torch

    from trainer.policy import load_policy

    torch.manual_seed(cfg.train.seed)
    return load_policy(cfg, torch.device("cpu"))


@contextmanager
def serving(cfg, root: Path, model=None, bind: bool | None = None):
    """Start ``cfg.rollout.num_workers`` workers for ``cfg`` and publish adapter v0 (from
    ``model``, default a fresh policy); yields (client, store, model), stops them on exit.
    ``bind``: each worker's threads on its own cores (``VLLM_CPU_OMP_THREADS_BIND``) or not,
    overriding ``rollout.cpu_bind`` for these workers (None: as the config says, which is
    what the launcher does)."""
    from launch.run.plan import local_plan
    from launch.run.runner import worker_specs
    from rollout.adapter_store import AdapterStore
    from rollout.client import RolloutClient
    from rollout.server import WorkerPool

    model = model if model is not None else policy(cfg)
    store = AdapterStore(root / "adapters")
    store.publish(0, lambda d: model.save_pretrained(d))
    if bind is not None:
        cfg = replace(cfg, rollout=replace(cfg.rollout, cpu_bind=bind))
    specs = worker_specs(cfg, local_plan(cfg).local_workers, None, probe_ports=True)
    with WorkerPool(specs, root / "logs", startup_timeout=cfg.rollout.startup_timeout_s) as pool:
        client = RolloutClient(pool.urls, timeout=cfg.rollout.request_timeout_s,
                               max_concurrency=cfg.rollout.max_concurrent_requests,
                               adapter_root=store.root)
        client.sync(0, store.path(0))
        yield client, store, model
