"""Each field's rules, declared with it (trainer/config/fields.py ``setting``), are what
validation and the resume check apply: a value past any declared bound is refused naming
the field, a value on the bound is not, and a resumed run may change exactly the fields
declared resumable."""

import dataclasses
import typing

import pytest

from trainer.config import ConfigError, StageConfig, from_dict
from trainer.config.fields import bound_errors, bounds_of
from trainer.config.resume import config_changes


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


@pytest.mark.parametrize("section, cls, f", [(s, c, f) for s, c, f, _ in _leaves()],
                         ids=lambda x: getattr(x, "name", ""))
def test_a_resume_may_change_exactly_the_fields_declared_resumable(section, cls, f):
    old = StageConfig().to_dict()
    new = StageConfig().to_dict()
    new[section][f.name] = _changed(old[section][f.name])
    resumable = getattr(cls, "RESUMABLE", False) or f.metadata.get("resumable", False)
    assert (config_changes(old, new) == []) == resumable


@pytest.mark.parametrize("setting", ["train.learning_rate", "rollout.temperature",
                                     "rollout.top_p", "train.is_cap", "train.kl_coef"])
def test_nan_is_outside_every_bound(setting):
    section, name = setting.split(".")
    with pytest.raises(ConfigError, match=rf"{section}\.{name}: must be "):
        from_dict({section: {name: float("nan")}}, "x.yaml")
