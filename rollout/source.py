"""What the recipe needs from whatever produces its completions, and a recorded stand-in.

:class:`RolloutSource` is the small protocol the recipe (``trainer/recipe.py``) and the
evaluation call: generate G completions per token-id prompt under the adapter the source
serves, make it serve adapter version k, and report faults. :class:`rollout.client.
RolloutClient` (the vLLM workers over HTTP) is the real one. :class:`RecordedRollouts` replays
a run's ``rollouts.rank{r}.jsonl`` (what every step writes with ``run.log_rollouts_every: 1``),
so the recipe's learning side can run without starting vLLM: the unit test of two recipe
steps (tests/trainer/test_recipe.py) and anyone debugging a loss on a run's own samples.
"""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path
from typing import Protocol, runtime_checkable

from rollout.client import Completion
from rollout.server import WorkerError


@runtime_checkable
class RolloutSource(Protocol):
    urls: list[str]

    def wait_ready(self, timeout: float) -> bool:
        """Wait until the source can sample (workers loaded); True when it can."""

    def generate(self, prompts: list[list[int]], n: int, max_tokens: int,
                 temperature: float = 1.0, top_p: float = 1.0,
                 seed: int | None = None) -> list[list[Completion]]:
        """P token-id prompts -> P groups of n completions under the served adapter."""

    def sync(self, version: int, path: str | Path) -> list[str]:
        """Serve adapter ``version`` (the folder ``path``) from now on; the sources that do."""

    def take_faults(self) -> dict[str, int]:
        """Fault counts since the last call (retried requests, sources lost and back)."""

    def live(self) -> list[str]:
        """The sources in use now."""

    def served_adapter_path(self, url: str, version: int | None = None) -> str | None:
        """The folder ``url`` serves the current (or ``version``'s) adapter from."""


class RecordedRollouts:
    """Completions replayed from a ``rollouts.rank{r}.jsonl`` record, one group per call
    and prompt in the order they were recorded. The recording run needs
    ``run.log_rollouts_every: 1`` (every step recorded) and ``rollout.dynamic_sampling: false``
    (it records only the groups it kept). A prompt the record has no (more) groups for, a
    group of another size, or a group sampled under another adapter version than the one
    the replay serves is a :class:`~rollout.server.WorkerError` naming the record: the replay
    has drifted from the recording (other seed, data or config)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.urls = [f"recorded:{self.path.name}"]
        self.version: int | None = None
        self.served: str | None = None
        self._groups: dict[tuple[int, ...], deque] = {}
        self.replayed = 0
        try:
            lines = self.path.read_text().splitlines()
        except OSError as exc:
            raise WorkerError(f"{self.path}: cannot read the recorded rollouts: "
                              f"{exc.strerror or exc}") from None
        current: tuple | None = None
        for number, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
                # a group is the rows of one (step, group index); records written before
                # the index was kept fall back to the sample id
                key = (row["step"], row.get("group", row["sample"]))
                prompt = tuple(row["prompt_ids"])
                completion = Completion(row["token_ids"], row["worker_logprobs"],
                                        row["text"], row["finish_reason"],
                                        row["adapter_version"], self.urls[0])
            except (ValueError, KeyError, TypeError) as exc:
                raise WorkerError(f"{self.path}, line {number}: not a rollout record "
                                  f"({type(exc).__name__}: {exc})") from None
            if key != current:  # a new group starts
                self._groups.setdefault(prompt, deque()).append((row["step"], []))
                current = key
            self._groups[prompt][-1][1].append(completion)

    def wait_ready(self, timeout: float) -> bool:
        return True

    def generate(self, prompts: list[list[int]], n: int, max_tokens: int,
                 temperature: float = 1.0, top_p: float = 1.0,
                 seed: int | None = None) -> list[list[Completion]]:
        if self.version is None:
            raise WorkerError("generate() before any adapter was published to the replay")
        out = []
        for i, prompt in enumerate(prompts):
            queue = self._groups.get(tuple(prompt))
            if not queue:
                raise WorkerError(f"{self.path}: no recorded group (left) for prompt {i} of "
                                  f"this call ({len(prompt)} tokens) after {self.replayed} "
                                  f"group(s) replayed: the replay draws other prompts than the "
                                  f"recording did")
            step, group = queue[0]
            if len(group) != n:
                raise WorkerError(f"{self.path}, step {step}: {len(group)} completions "
                                  f"recorded, the replay asks for n={n}")
            versions = sorted({c.adapter_version for c in group})
            if versions != [self.version]:
                raise WorkerError(f"{self.path}, step {step}: recorded under adapter "
                                  f"{', '.join(f'v{v}' for v in versions)}, the replay serves "
                                  f"v{self.version}")
            out.append(queue.popleft()[1])
            self.replayed += 1
        return out

    def sync(self, version: int, path: str | Path) -> list[str]:
        self.version, self.served = version, str(path)
        return list(self.urls)

    def take_faults(self) -> dict[str, int]:
        return {}

    def live(self) -> list[str]:
        return list(self.urls)

    def served_adapter_path(self, url: str, version: int | None = None) -> str | None:
        return self.served

    def remaining(self) -> int:
        """Recorded groups not replayed yet."""
        return sum(len(q) for q in self._groups.values())
