"""Child processes that end with their parent, and whether a process group still has members
(the launcher's workers and learner, and the offline commands' servers, each lead their own
process group so one signal reaches vLLM's engine processes too)."""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:  # runs in the child between fork and exec
    """SIGTERM when the launcher dies; SIGUSR1 ignored (exec keeps that): Slurm's time-limit
    warning goes to every process of the job step, and only the learner ranks, which set
    their own handler, act on it (launch/slurm/job.py). libc's calls, not Python's: this may
    run in a thread other than the main one (a worker restarted by the supervisor)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        libc.signal.restype = ctypes.c_void_p
        libc.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
        libc.signal(int(signal.SIGUSR1), 1)  # 1: SIG_IGN
    except OSError:
        pass


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # zombies of our own direct child still count as members until reaped
    try:
        pid, _ = os.waitpid(pgid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
