"""``trainer.rollouts.Background``: the next step's sampling on its own thread
(``rollout.overlap``), its value, its error and its duration handed to the learner's loop."""

from __future__ import annotations

import threading
import time

import pytest

from trainer.rollouts import Background


def test_runs_concurrently_and_hands_back_the_value_and_its_duration():
    release = threading.Event()
    job = Background(lambda: (release.wait(5), "batch")[1])
    time.sleep(0.05)
    assert job._thread.is_alive()  # the caller went on while the call waits
    release.set()
    assert job.result() == "batch"
    assert job.seconds >= 0.05


def test_an_error_in_the_call_is_raised_by_result():
    def fail():
        raise RuntimeError("no worker answered")

    job = Background(fail)
    with pytest.raises(RuntimeError, match="no worker answered"):
        job.result()
