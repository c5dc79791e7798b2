"""The parity alarm: the workers' samples must come from the learner's policy.

``logp_gap`` (logged every step) is the mean per-token |learner log-prob - worker
log-prob| of the batch just trained. It is ~1e-7 in float32, ~1e-3 with a 4-bit learner
base, and grows with policy drift when the workers sample under an older adapter than the
one they should (one step behind is by design with ``rollout.overlap``). A gap above
``rollout.max_logp_gap`` for ``rollout.logp_gap_steps`` steps in a row means something else:
a worker serving a stale adapter, sampling settings the learner does not score (top-k, a
repetition penalty), another base model or dtype. The run stops then, with one message
saying so, instead of training on samples whose importance weights are wrong.

Every rank sees the same gap (the step's metrics are averaged across ranks first), so every
rank stops at the same step and none is left waiting in a collective.
"""

from __future__ import annotations

import math


class ParityError(RuntimeError):
    """The workers' samples do not match the learner's policy (a clean stop)."""


class ParityAlarm:
    def __init__(self, max_gap: float, steps: int):
        self.max_gap, self.steps, self.run = max_gap, steps, 0

    def update(self, step: int, gap: float) -> ParityError | None:
        """Count this step's gap; the error to stop with once it has been above the bound
        ``steps`` steps in a row (the caller logs the step, then raises it), else None.
        ``max_gap`` 0 turns the alarm off."""
        if self.max_gap <= 0:
            return None
        bad = not math.isfinite(gap) or gap > self.max_gap
        self.run = self.run + 1 if bad else 0
        if self.run < self.steps:
            return None
        return ParityError(
            f"logp_gap {gap:.3g} at step {step}, above rollout.max_logp_gap "
            f"({self.max_gap:g}) for {self.run} steps in a row: the workers' samples do "
            "not match the learner's policy. Check that every worker serves the adapter "
            "just published (served_adapters in the workers' logs), samples from the "
            "plain softmax (no top-k / penalties from the model's generation_config), "
            "and loads the same base model and dtype as the learner")
