"""The data and reward sections of the config: validated on load, naming the field."""

import pytest

from trainer.config import ConfigError, from_dict
from trainer.tasks.stock.config import DATA_COLUMN_FIELDS
from trainer.tasks.stock.hf import PROMPT_FIELDS
from trainer.tasks.stock.sources import SOURCES
from trainer.tasks.stock.tables import TABLE_FIELDS


def test_config_lists_match_the_task():
    assert set(DATA_COLUMN_FIELDS) == set(TABLE_FIELDS) | set(PROMPT_FIELDS)
    assert set(SOURCES) == {"bundled", "synthetic", "local", "hf"}


@pytest.mark.parametrize("data, message", [
    ({"data": {"columns": {"price": "Close"}}}, r"data\.columns\.price: unknown field; map any "
                                                r"of ticker, date, close"),
    ({"data": {"train_end": "31/12/2012"}}, r"data\.train_end: '31/12/2012' is not a date"),
    ({"data": {"val_end": "2010-01-01"}}, r"data\.val_end: 2010-01-01 must come after "
                                          r"data\.train_end \(2012-12-31\)"),
    ({"data": {"test_end": "2015-01-01"}}, r"data\.test_end: 2015-01-01 must come after "
                                           r"data\.val_end"),
    ({"data": {"start": "2013-01-01"}}, r"data\.train_end: 2012-12-31 must come after "
                                        r"data\.start"),
    ({"data": {"source": "local"}}, r"data\.path: source 'local' needs"),
    ({"data": {"source": "hf"}}, r"data\.hf_name: source 'hf' needs"),
    ({"data": {"source": "yahoo"}}, r"data\.source: 'yahoo' is not allowed"),
    ({"data": {"source": "synthetic", "window": 2}}, r"data\.window: the synthetic market"),
    ({"reward": {"weights": {"accuracy": -1.0}}}, r"reward\.weights\.accuracy: must be >= 0"),
])
def test_bad_data_and_reward_fields_are_named(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(data, "x.yaml")


def test_stage2_components_are_selectable_by_weights():
    cfg = from_dict({"reward": {"weights": {"accuracy_skew": 1.0, "calibration": 1.5,
                                            "magnitude": 0.5}}})
    assert cfg.reward.weights["calibration"] == 1.5
