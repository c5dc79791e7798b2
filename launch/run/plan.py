"""Where every process goes: a pure plan of workers and learner ranks, local or under Slurm.

A :class:`Plan` says, for the node it is computed on, which vLLM workers start here (host,
port, GPUs), whether learner ranks start here (machine rank, process count, GPUs, main
address), and the URLs of every worker in the job. ``--dry-run`` prints it; the runner
executes it. Nothing here starts a process or imports torch, so it is unit-tested with a
faked Slurm environment.

Roles:
- one node (local, or a 1-node Slurm job): workers on ``launch.worker_gpus``, learner ranks
  on ``launch.learner_gpus``; they may share GPUs only with ``launch.colocate: true``.
  Workers bind to ``rollout.host`` (127.0.0.1 by default).
- several Slurm nodes: the first ``launch.slurm_worker_nodes`` nodes run workers on
  ``worker_gpus``; the rest run learner ranks on ``learner_gpus``. Workers bind to their
  node's address and require the API key from ``$<rollout.api_key_env>``.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from trainer.config import ConfigError, StageConfig

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class WorkerSlot:
    node: str
    host: str  # the address in the worker's URL (and the one it binds to, unless ``bind``)
    port: int
    devices: str | None  # CUDA_VISIBLE_DEVICES, None on CPU
    bind: str | None = None  # the address the server binds to, when not ``host``

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass
class LearnerSlot:
    node: str
    machine_rank: int
    num_machines: int
    num_processes: int  # total learner ranks in the job (accelerate's --num_processes)
    main_process_ip: str
    main_process_port: int
    devices: str | None


@dataclass
class Plan:
    nodes: list[str]
    this_node: str
    workers: list[WorkerSlot]  # every worker in the job
    learner: LearnerSlot | None  # learner ranks on this node, if any
    api_key_required: bool
    local_workers: list[WorkerSlot] = field(default_factory=list)

    def describe(self) -> str:
        lines = [f"nodes: {', '.join(self.nodes)} (this node: {self.this_node})"]
        for w in self.workers:
            here = " [this node]" if w in self.local_workers else ""
            here += f" bound to {w.bind}" if w.bind and w.bind != w.host else ""
            lines.append(f"worker {w.url} on {w.node} devices={w.devices or 'cpu'}{here}")
        if self.learner:
            ls = self.learner
            lines.append(
                f"learner on {ls.node}: machine_rank={ls.machine_rank}/{ls.num_machines} "
                f"processes={ls.num_processes} main={ls.main_process_ip}:"
                f"{ls.main_process_port} devices={ls.devices or 'cpu'}")
        lines.append(f"api key required: {self.api_key_required}")
        return "\n".join(lines)


def expand_hostlist(text: str) -> list[str]:
    """The nodes of ``SLURM_JOB_NODELIST`` (``launch/slurm/hostlist.py``), or a ConfigError."""
    from launch.slurm.hostlist import HostListError, hostnames

    try:
        hosts = hostnames(text)
    except HostListError as exc:
        raise ConfigError(f"SLURM_JOB_NODELIST: {exc}") from None
    if not hosts:
        raise ConfigError(f"SLURM_JOB_NODELIST: no host in {text!r}")
    return hosts


def _device_groups(gpus: list[int], count: int, size: int) -> list[str | None]:
    if not gpus:
        return [None] * count
    return [",".join(map(str, gpus[i * size:(i + 1) * size])) for i in range(count)]


def _check_overlap(cfg: StageConfig) -> None:
    shared = sorted(set(cfg.launch.worker_gpus) & set(cfg.launch.learner_gpus))
    if shared and not cfg.launch.colocate:
        raise ConfigError(
            f"launch.learner_gpus: GPU(s) {shared} are also in launch.worker_gpus; give workers "
            f"and learners separate GPUs, or set launch.colocate: true to share them")


def _workers_on(cfg: StageConfig, node: str, host: str) -> list[WorkerSlot]:
    rc = cfg.rollout
    groups = _device_groups(cfg.launch.worker_gpus, rc.num_workers, rc.tensor_parallel_size)
    return [WorkerSlot(node, host, rc.base_port + i, groups[i]) for i in range(rc.num_workers)]


def routed_address(peer: str) -> str:
    """This machine's address on the interface that routes to ``peer`` (no packet is sent);
    every interface (0.0.0.0) when ``peer`` cannot be resolved or reached. A node's own
    hostname can resolve to a loopback alias (127.0.1.1) that other nodes cannot reach, so a
    worker node never binds to it."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((peer, 9))
            return s.getsockname()[0]
    except OSError:
        return "0.0.0.0"


def _worker_nodes(cfg: StageConfig, nodes: list[str], this: str) -> list[WorkerSlot]:
    """Workers on the first ``launch.slurm_worker_nodes`` nodes, addressed by
    ``launch.worker_host`` (``{node}`` replaced) or the node name; this node's own workers
    bind to that name, or to the address that routes to the first learner node."""
    k, template = cfg.launch.slurm_worker_nodes, cfg.launch.worker_host
    workers = []
    for n in nodes[:k]:
        host = template.format(node=n) if template else n
        for w in _workers_on(cfg, n, host):
            if n == this:
                w.bind = host if template else routed_address(nodes[k])
            workers.append(w)
    return workers


def _learner_devices(cfg: StageConfig) -> str | None:
    return ",".join(map(str, cfg.launch.learner_gpus)) or None


def local_plan(cfg: StageConfig, node: str = "localhost") -> Plan:
    """Everything on this node."""
    _check_overlap(cfg)
    workers = _workers_on(cfg, node, cfg.rollout.host)
    learner = LearnerSlot(node, 0, 1, cfg.launch.num_processes, "127.0.0.1",
                          cfg.launch.main_process_port, _learner_devices(cfg))
    return Plan([node], node, workers, learner,
                api_key_required=cfg.rollout.host not in LOOPBACK, local_workers=workers)


def slurm_plan(cfg: StageConfig, env: dict[str, str]) -> Plan:
    """This node's share of a Slurm job, from SLURM_JOB_NODELIST / SLURM_NNODES / SLURM_NODEID."""
    missing = [k for k in ("SLURM_JOB_NODELIST", "SLURM_NODEID") if k not in env]
    if missing:
        raise ConfigError(f"not inside a Slurm job step: {', '.join(missing)} unset "
                          f"(run the batch files in launch/slurm/ with sbatch)")
    nodes = expand_hostlist(env["SLURM_JOB_NODELIST"])
    if "SLURM_NNODES" in env and int(env["SLURM_NNODES"]) != len(nodes):
        raise ConfigError(f"SLURM_NNODES={env['SLURM_NNODES']} but SLURM_JOB_NODELIST names "
                          f"{len(nodes)} node(s)")
    node_id = int(env["SLURM_NODEID"])
    this = nodes[node_id]
    if len(nodes) == 1:
        return local_plan(cfg, this)
    k = cfg.launch.slurm_worker_nodes
    if k >= len(nodes):
        raise ConfigError(f"launch.slurm_worker_nodes: {k} worker node(s) leave no learner "
                          f"node in a {len(nodes)}-node job")
    workers = _worker_nodes(cfg, nodes, this)
    local = [w for w in workers if w.node == this]
    learner = None
    if node_id >= k:
        per_node = cfg.launch.num_processes
        learner = LearnerSlot(this, node_id - k, len(nodes) - k, per_node * (len(nodes) - k),
                              nodes[k], cfg.launch.main_process_port, _learner_devices(cfg))
    return Plan(nodes, this, workers, learner, api_key_required=True, local_workers=local)
