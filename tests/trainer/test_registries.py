"""Every config field that names a registered thing lists exactly the registry's names: a
name registered without its Literal would be refused on load, a Literal without its
registry entry would pass validation and fail mid-run."""

from __future__ import annotations

import typing

import pytest

from trainer.config import RunConfig, TrainConfig
from trainer.grpo import ADVANTAGE_ESTIMATORS, LOSS_AGGREGATIONS, POLICY_LOSSES, TOKEN_SELECTIONS
from trainer.schedules import LR_SCHEDULES
from trainer.tasks import decisions  # noqa: F401 - the stock task's "decision" selection
from trainer.tasks.stock.config import DataConfig
from trainer.tasks.stock.sources import SOURCES
from trainer.tasks.stock.synthetic import RULES
from trainer.trackers import TRACKER_PACKAGES


def _names(section: type, name: str) -> set:
    tp = typing.get_type_hints(section)[name]
    if typing.get_origin(tp) is list:  # list[Literal[...]]
        (tp,) = typing.get_args(tp)
    return set(typing.get_args(tp))


@pytest.mark.parametrize("section,name,registry,extra", [
    (TrainConfig, "policy_loss", POLICY_LOSSES, set()),
    (TrainConfig, "advantage", ADVANTAGE_ESTIMATORS, set()),
    (TrainConfig, "loss_agg", LOSS_AGGREGATIONS, {"auto"}),  # auto: the variant's own
    (TrainConfig, "pg_tokens", TOKEN_SELECTIONS, set()),
    (TrainConfig, "lr_schedule", LR_SCHEDULES, set()),
    (DataConfig, "source", SOURCES, set()),
    (DataConfig, "synthetic_rule", RULES, set()),
    (RunConfig, "report_to", TRACKER_PACKAGES, set()),
], ids=lambda v: v if isinstance(v, str) else "")
def test_a_literal_of_names_is_its_registry(section, name, registry, extra):
    assert _names(section, name) == set(registry) | extra
