"""launch/run/learner_launch.py: only a launch that failed because every failed rank stopped
cleanly (trainer/train.py's EXIT_STOPPED) ends quietly with that code; any other failure is
accelerate's own. The end to end check (a parity stop, a Slurm time-limit stop: their exit
code and no traceback) is in tests/integration/test_parity_alarm.py and test_slurm_requeue.py.
"""

from __future__ import annotations

import logging
import signal
import subprocess

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

from launch.run import learner_launch as al
from trainer import train


def _failed(*codes: int) -> ChildFailedError:
    return ChildFailedError("trainer.train", {rank: ProcessFailure(rank, 1000 + rank, code, "")
                                              for rank, code in enumerate(codes)})


def test_the_launcher_and_the_ranks_agree_on_the_clean_stop_code():
    assert al.EXIT_STOPPED == train.EXIT_STOPPED


def test_only_ranks_that_all_stopped_cleanly_count_as_a_clean_stop():
    stopped = al.EXIT_STOPPED
    assert al.clean_stop(_failed(stopped)) and al.clean_stop(_failed(stopped, stopped))
    assert not al.clean_stop(_failed(stopped, 1))  # one rank crashed: a crash
    assert not al.clean_stop(_failed(-9))  # killed
    # torchrun ended a rank still on its way out (the suite saw rank 1 exit 3 first and
    # rank 0, which had already said why, recorded as SIGTERM): still the clean stop
    assert al.clean_stop(_failed(-signal.SIGTERM, stopped))
    assert not al.clean_stop(_failed(-signal.SIGTERM))  # ended by a signal alone
    assert not al.clean_stop(_failed(-signal.SIGTERM, 1))
    assert al.clean_stop(subprocess.CalledProcessError(stopped, ["python"]))  # one process
    assert not al.clean_stop(subprocess.CalledProcessError(1, ["python"]))
    assert not al.clean_stop(RuntimeError("no failures"))


def test_torchruns_line_for_a_cleanly_stopped_rank_is_dropped_and_others_kept():
    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("torch.distributed.elastic.multiprocessing.api",
                                 logging.ERROR, __file__, 1, msg, None, None)

    quiet = al._StoppedRanks()
    assert not quiet.filter(record(f"failed (exitcode: {al.EXIT_STOPPED}) local_rank: 0"))
    assert quiet.filter(record("failed (exitcode: 1) local_rank: 0 (pid: 7)"))
