"""WorkerPool.stop: every worker is asked to stop before any has to finish stopping (a vLLM
server takes seconds to shut down; one after another they add up on an eight-worker node),
and none is left running. Stand-in servers (a process that takes a while over its SIGTERM)
take vLLM's place: the pool's part is signals and process groups, the same for any server."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from common.processes import group_alive
from rollout.server import WorkerPool, WorkerSpec

SERVER = """
import signal, sys, time
log = sys.argv[1]
def term(*_):
    open(log, "a").write("term\\n")
    time.sleep(0.5)  # a shutdown that takes a while
    open(log, "a").write("exit\\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
open(log, "a").write("up\\n")
while True:
    time.sleep(0.05)
"""


@dataclass
class StandIn(WorkerSpec):
    events: str = ""

    def command(self) -> list[str]:
        return [sys.executable, "-c", SERVER, self.events]


def test_the_pool_stops_its_workers_together(tmp_path):
    events = tmp_path / "events.log"
    specs = [StandIn(model="none", port=9000 + i, events=str(events)) for i in range(3)]
    pool = WorkerPool(specs, tmp_path / "logs", startup_timeout=30)
    for w in pool.workers:
        w.start()
    deadline = time.monotonic() + 30
    while not events.exists() or events.read_text().count("up") < 3:
        assert time.monotonic() < deadline, "the stand-in servers did not start"
        time.sleep(0.05)
    pids = [w.pid for w in pool.workers]
    pool.stop()
    lines = [x for x in events.read_text().splitlines() if x != "up"]
    # every SIGTERM arrived before the first shutdown ended: not one worker after another
    assert lines == ["term"] * 3 + ["exit"] * 3, lines
    assert not [p for p in pids if group_alive(p)]
