"""``accelerate launch`` as the launcher starts the learner ranks, with one difference: a
clean stop ends cleanly.

A rank that stops cleanly (time limit, parity alarm, a failed checkpoint write, every worker
gone, out of memory: trainer/train.py) has already said why in one line and exits with
:data:`EXIT_STOPPED`. torchrun treats any non-zero exit as a crash: it raises
``ChildFailedError``, whose traceback and failure table land above that line, and accelerate
exits 1. Here, when ranks exited with :data:`EXIT_STOPPED` and every other failed rank was
only ended by torchrun on the way out (:func:`clean_stop`), the process exits with that code
and prints nothing more; any other failure is reported as accelerate does.
The by-hand path (``accelerate launch -m trainer.train``) is unchanged.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys

EXIT_STOPPED = 3  # trainer/train.py's clean stop (a test checks the two agree)


def clean_stop(exc: BaseException) -> bool:
    """True when ``exc`` is the launch failing only because ranks stopped cleanly: some rank
    exited with :data:`EXIT_STOPPED` and every other failed one did too or was ended by
    torchrun itself (SIGTERM: once one rank exits, the agent terminates the others, and a
    rank still on its way out is then recorded as killed)."""
    failures = getattr(exc, "failures", None)  # torchrun's ChildFailedError
    if failures:
        codes = {f.exitcode for f in failures.values()}
        return EXIT_STOPPED in codes and codes <= {EXIT_STOPPED, -signal.SIGTERM}
    return isinstance(exc, subprocess.CalledProcessError) and exc.returncode == EXIT_STOPPED


class _StoppedRanks(logging.Filter):
    """Drops torchrun's per-rank error lines for a clean stop's exit code."""

    def filter(self, record: logging.LogRecord) -> bool:
        return f"(exitcode: {EXIT_STOPPED})" not in record.getMessage()


def _quiet_stopped_ranks() -> None:
    """The filter on torch's loggers and their handlers (a logger's own filter does not see
    its children's records; a handler's sees every record it writes)."""
    stopped = _StoppedRanks()
    for name in ["", *logging.Logger.manager.loggerDict]:
        logger = logging.getLogger(name)
        if name == "" or name.startswith("torch"):
            logger.addFilter(stopped)
            for handler in logger.handlers:
                handler.addFilter(stopped)


def main(argv: list[str] | None = None) -> int:
    import torch.distributed.run  # noqa: F401 - its loggers exist before the filter goes on
    from accelerate.commands.launch import launch_command, launch_command_parser

    _quiet_stopped_ranks()
    args = launch_command_parser().parse_args(argv)
    try:
        launch_command(args)
    except Exception as exc:  # noqa: BLE001 - only a clean stop is handled; the rest re-raised
        if clean_stop(exc):
            return EXIT_STOPPED
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
