"""Every path of a run folder (``runs/<name>/``), in one place.

What each file holds: docs/architecture.md, "A run folder". Writers and readers (the recipe,
checkpoints, evaluation, Stage II's merge, eval / predict / serve / export) ask this object
for a path instead of spelling the layout themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CHECKPOINT_PREFIX = "step_"


@dataclass(frozen=True)
class RunFolder:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # ---- what the run is and what it logged
    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    def rollouts(self, rank: int) -> Path:
        return self.root / f"rollouts.rank{rank}.jsonl"

    @property
    def trackers(self) -> Path:
        return self.root / "trackers"

    @property
    def data_facts(self) -> Path:
        """The task's facts about the run's data (split sizes, label ratios, the prior a
        stated confidence is read against), written when training starts."""
        return self.root / "data.json"

    # ---- workers
    @property
    def workers(self) -> Path:
        return self.root / "workers.json"

    @property
    def served_adapters(self) -> Path:
        return self.root / "served_adapters.json"

    @property
    def worker_status(self) -> Path:
        """Each worker's state, written by the launcher's supervisor (rollout/supervisor.py)."""
        return self.root / "workers_status.json"

    @property
    def faults(self) -> Path:
        """Worker faults the launcher saw (died, hung, restarted, gave up), a JSON line each."""
        return self.root / "faults.jsonl"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    # ---- adapters and checkpoints
    @property
    def adapters(self) -> Path:
        """The adapter store (``run.adapter_dir`` may put it elsewhere)."""
        return self.root / "adapters"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def latest_marker(self) -> Path:
        """Text: the folder name of the newest complete checkpoint."""
        return self.checkpoints / "LATEST"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"{CHECKPOINT_PREFIX}{step:06d}"

    @property
    def best(self) -> Path:
        """The best evaluated adapter's checkpoint-like folder (``best/adapter``)."""
        return self.checkpoints / "best"

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint LATEST names, or None when there is none yet."""
        if not self.latest_marker.is_file():
            return None
        return self.checkpoints / self.latest_marker.read_text().strip()

    def adapter(self, which: str) -> Path | None:
        """``best`` (else the latest checkpoint's) or ``latest``: the adapter folder, or None
        when the run has no checkpoint yet."""
        if which == "best" and (self.best / "adapter").is_dir():
            return self.best / "adapter"
        latest = self.latest_checkpoint()
        return None if latest is None else latest / "adapter"

    # ---- evaluation, the gate and Stage II
    @property
    def gate(self) -> Path:
        return self.root / "gate.json"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    def eval_file(self, split: str) -> Path:
        return self.root / "eval" / f"{split}.json"

    def source_dir(self, source: str) -> Path:
        """Evaluation of the final adapter on another data source (``eval.also_on``)."""
        return self.root / f"{source}-data"

    @property
    def stage2(self) -> Path:
        """Stage II's record of the Stage I run, adapter, base and gate verdict it used."""
        return self.root / "stage2.json"

    @property
    def base(self) -> Path:
        """Stage II: the merged Stage I model its workers serve and its learner loads."""
        return self.root / "base"
