"""The parity alarm: a gap above the bound for N steps in a row stops the run."""

import math

import pytest

from trainer.config import ConfigError, load_config
from trainer.parity import ParityAlarm, ParityError


def test_only_n_steps_in_a_row_above_the_bound_stop():
    alarm = ParityAlarm(0.1, 3)
    for step, gap in enumerate([0.2, 0.3, 0.01, 0.2, 0.5], start=1):  # the run is broken
        assert alarm.update(step, gap) is None
    err = alarm.update(6, 0.4)  # the third in a row
    assert isinstance(err, ParityError)
    msg = str(err)
    assert "logp_gap 0.4 at step 6" in msg and "for 3 steps in a row" in msg
    assert "do not match the learner's policy" in msg and "rollout.max_logp_gap" in msg


def test_a_non_finite_gap_counts_and_zero_turns_it_off():
    alarm = ParityAlarm(0.1, 2)
    assert alarm.update(1, math.nan) is None
    assert isinstance(alarm.update(2, math.inf), ParityError)
    off = ParityAlarm(0.0, 1)
    assert all(off.update(step, 10.0) is None for step in range(1, 5))


def test_settings_are_validated():
    with pytest.raises(ConfigError, match="rollout.logp_gap_steps"):
        load_config("configs/demo/stage1.yaml", ["rollout.logp_gap_steps=0"])
    with pytest.raises(ConfigError, match="rollout.max_logp_gap"):
        load_config("configs/demo/stage1.yaml", ["rollout.max_logp_gap=-1"])
