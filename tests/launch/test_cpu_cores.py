"""CPU workers get disjoint cores (launch/run/cpu_cores.py) in the specs the launcher starts."""

from __future__ import annotations

import pytest

from launch.run.cpu_cores import BIND_VAR, split_cores, worker_bindings
from launch.run.plan import local_plan
from launch.run.runner import worker_specs
from trainer.config import load_config

DEMO = "configs/demo/stage1.yaml"


def test_split_cores_is_disjoint_and_covers():
    assert split_cores(2, [0, 1]) == ["0", "1"]
    assert split_cores(1, [0, 1, 2, 3]) == ["0-3"]
    assert split_cores(3, list(range(16))) == ["0-4", "5-10", "11-15"]
    assert split_cores(2, [0, 1, 2, 5, 6, 7]) == ["0-2", "5-7"]  # a cgroup's CPU set
    assert split_cores(2, [0, 2, 4, 6]) == ["0,2", "4,6"]
    with pytest.raises(ValueError):
        split_cores(3, [0, 1])


def test_bindings_only_when_they_help_and_the_user_set_none():
    assert worker_bindings(1, {}, [0, 1]) == [None]
    assert worker_bindings(2, {BIND_VAR: "0-1|0-1"}, [0, 1]) == [None, None]
    assert worker_bindings(3, {}, [0, 1]) == [None, None, None]
    assert worker_bindings(2, {}, [4, 5, 6, 7]) == ["4-5", "6-7"]


def _specs(*sets):
    cfg = load_config(DEMO, ["rollout.num_workers=2", *sets])
    return worker_specs(cfg, local_plan(cfg).local_workers, None, probe_ports=False)


def test_launcher_binds_two_cpu_workers_to_their_own_cores(monkeypatch):
    monkeypatch.setattr("launch.run.runner.allowed_cpus", lambda: [0, 1, 2, 3])
    specs = _specs()
    assert [s.env.get(BIND_VAR) for s in specs] == ["0-1", "2-3"]
    assert all(s.env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0" for s in specs)  # config env kept
    assert [s.env.get(BIND_VAR) for s in _specs("rollout.cpu_bind=false")] == [None, None]
    assert [s.env.get(BIND_VAR) for s in _specs("launch.device=cuda")] == [None, None]
