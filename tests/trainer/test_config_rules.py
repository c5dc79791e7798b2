"""Each field's rules, declared with it (trainer/config/fields.py ``setting``), are what
validation and the resume check apply: a value past any declared bound is refused naming
the field, a value on the bound is not, and a resumed run may change exactly the fields
declared resumable (checked against a list kept here)."""

import dataclasses
import typing

import pytest

from trainer.config import ConfigError, StageConfig, from_dict
from trainer.config.fields import bound_errors, bounds_of
from trainer.config.resume import RESUME_MAY_CHANGE, config_changes


def _leaves():
    hints = typing.get_type_hints(StageConfig)
    for section in dataclasses.fields(StageConfig):
        cls = hints[section.name]
        if dataclasses.is_dataclass(cls):
            types = typing.get_type_hints(cls)
            for f in dataclasses.fields(cls):
                yield section.name, cls, f, types[f.name]


BOUNDED = [(s, f, t) for s, _, f, t in _leaves() if bounds_of(f) is not None]


def test_bounds_are_declared_on_the_fields_that_need_them():
    assert len(BOUNDED) >= 40  # the ranges validate() used to list by hand, and more


def _step(tp) -> float:
    return 1 if tp is int else 0.001


@pytest.mark.parametrize("section, f, tp", BOUNDED, ids=lambda x: getattr(x, "name", ""))
def test_a_value_past_a_bound_is_refused_and_one_on_it_is_not(section, f, tp):
    b = bounds_of(f)
    edges = [(b.ge, -1), (b.gt, 0), (b.le, +1), (b.lt, 0)]
    for edge, sign in edges:
        if edge is None:
            continue
        bad = edge + sign * _step(tp) if sign else edge
        with pytest.raises(ConfigError, match=rf"^x\.yaml: {section}\.{f.name}: must be "):
            from_dict({section: {f.name: tp(bad) if tp is int else bad}}, "x.yaml")
        if sign:  # ge / le: the bound itself is allowed
            cfg = StageConfig()
            setattr(getattr(cfg, section), f.name, edge)
            assert not [e for e in bound_errors(cfg) if e.startswith(f"{section}.{f.name}:")]


def _changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list):
        return [*value, "x"]
    if isinstance(value, dict):
        return {**value, "x": "y"}
    return 1  # None


# Written out by hand, not read from the declarations, so that a field turning resumable
# (or fixed) by accident fails here instead of moving the expectation along with it.
RESUMABLE_SECTIONS = {"run", "eval", "gate"}
RESUMABLE_FIELDS = {
    "rollout.num_workers", "rollout.host", "rollout.base_port",
    "rollout.gpu_memory_utilization", "rollout.enforce_eager", "rollout.request_timeout_s",
    "rollout.startup_timeout_s", "rollout.max_concurrent_requests",
    "rollout.tensor_parallel_size", "rollout.api_key_env", "rollout.chunked_prefill",
    "rollout.health_check_interval_s", "rollout.health_timeout_s", "rollout.unhealthy_after",
    "rollout.max_worker_restarts", "rollout.request_retries", "rollout.extra_args",
    "rollout.env",
    "train.steps",
    "launch.accelerate_config", "launch.learner_threads", "launch.worker_gpus",
    "launch.learner_gpus", "launch.colocate", "launch.main_process_port",
    "launch.slurm_worker_nodes",
}


def test_the_declared_resumable_set_is_the_expected_one():
    want = ({f"{s}.*" for s in RESUMABLE_SECTIONS}
            | {p for f in RESUMABLE_FIELDS for p in (f, f"{f}.*")})
    assert set(RESUME_MAY_CHANGE) == want
    assert len(RESUME_MAY_CHANGE) == len(want)  # no pattern listed twice


@pytest.mark.parametrize("section, f", [(s, f) for s, _, f, _ in _leaves()],
                         ids=lambda x: getattr(x, "name", ""))
def test_a_resume_may_change_exactly_the_resumable_fields(section, f):
    old = StageConfig().to_dict()
    new = StageConfig().to_dict()
    new[section][f.name] = _changed(old[section][f.name])
    resumable = section in RESUMABLE_SECTIONS or f"{section}.{f.name}" in RESUMABLE_FIELDS
    assert (config_changes(old, new) == []) == resumable


@pytest.mark.parametrize("setting", ["train.learning_rate", "rollout.temperature",
                                     "rollout.top_p", "train.is_cap", "train.kl_coef"])
def test_nan_is_outside_every_bound(setting):
    section, name = setting.split(".")
    with pytest.raises(ConfigError, match=rf"{section}\.{name}: must be "):
        from_dict({section: {name: float("nan")}}, "x.yaml")
