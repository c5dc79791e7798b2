"""RolloutBatch: the one rollout-batch type, defined once, with its shapes.

N = P prompts x G completions per prompt (groups contiguous: rows g*G .. g*G+G-1 share a
prompt), T = longest completion in the batch (right padded with ``pad_id``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class RolloutBatch:
    prompt_ids: list[list[int]]  # N lists (each prompt repeated G times)
    completion_ids: torch.Tensor  # [N, T] long, padded with pad_id
    completion_mask: torch.Tensor  # [N, T] float, 1.0 on sampled tokens
    rollout_logp: torch.Tensor  # [N, T] float, the worker's log-probs of the sampled tokens
    rewards: torch.Tensor  # [N] float, total reward
    advantages: torch.Tensor  # [N] float
    adapter_version: torch.Tensor  # [N] long, version of the adapter that sampled each row
    group_size: int
    # per-row tensors a task's contribution attaches (first dimension N), sliced with the
    # batch; the decision machinery's (trainer/tasks/decisions.py, trainer/tasks/decision_marks.py):
    # "decision_mask" [N, T] float, 1.0 on the tokens that state the decision;
    # "choice_ids" [N, T, K] long, at the token where a choice is made (an anchor's free
    # choice, a rollout's decision) the token ids of its options, -1 padded, -1 elsewhere;
    # "choice_prior" [N, T, K] float (teacher-forced anchors), at a balanced choice's token
    # each option's target share across the batch, aligned with choice_ids, 0 elsewhere
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.completion_ids.shape[0]

    def slice(self, start: int, stop: int) -> RolloutBatch:
        return RolloutBatch(
            prompt_ids=self.prompt_ids[start:stop],
            completion_ids=self.completion_ids[start:stop],
            completion_mask=self.completion_mask[start:stop],
            rollout_logp=self.rollout_logp[start:stop],
            rewards=self.rewards[start:stop],
            advantages=self.advantages[start:stop],
            adapter_version=self.adapter_version[start:stop],
            group_size=self.group_size,
            extras={k: v[start:stop] for k, v in self.extras.items()},
        )

    @staticmethod
    def teacher_forced(prompt_ids: list[list[int]], targets: list[list[int]], pad_id: int,
                       extras: dict[str, torch.Tensor] | None = None) -> RolloutBatch:
        """Reference answers ``targets`` after their prompts (one row each), for a supervised
        term: no rollout, so log-probs, rewards, advantages and versions are zero.
        ``extras``: per-row tensors of a task's contribution, shaped as the padded rows."""
        ids, mask = right_pad(targets, pad_id)
        zeros = torch.zeros(len(targets))
        return RolloutBatch(list(prompt_ids), ids, mask, torch.zeros_like(mask), zeros, zeros,
                            zeros.long(), group_size=1, extras=dict(extras or {}))

    @staticmethod
    def from_groups(prompt_ids: list[list[int]], groups: list[list], rewards: list[float],
                    advantages: torch.Tensor, pad_id: int,
                    extras: dict[str, torch.Tensor] | None = None) -> RolloutBatch:
        """prompt_ids: P prompts; groups: P lists of G Completions; rewards: N floats;
        ``extras``: per-row tensors of a task's contribution (shaped to the padded rows)."""
        g = len(groups[0])
        flat = [c for group in groups for c in group]
        ids, mask = right_pad([c.token_ids for c in flat], pad_id)
        lps = right_pad_floats([c.logprobs for c in flat])
        return RolloutBatch(
            prompt_ids=[p for p in prompt_ids for _ in range(g)],
            completion_ids=ids,
            completion_mask=mask,
            rollout_logp=lps,
            rewards=torch.tensor(rewards, dtype=torch.float32),
            advantages=advantages.float(),
            adapter_version=torch.tensor([c.adapter_version for c in flat], dtype=torch.long),
            group_size=g,
            extras=dict(extras or {}),
        )


def right_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows -> ids [n, T] (right padded with ``pad_id``), mask [n, T] float, T >= 1."""
    t = max(1, max(len(r) for r in rows))
    ids = torch.full((len(rows), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), t))
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1.0
    return ids, mask


def right_pad_floats(rows: list[list[float]]) -> torch.Tensor:
    """Per-token float rows -> [n, T] right padded with 0.0, T >= 1."""
    out = torch.zeros((len(rows), max(1, max(len(r) for r in rows))))
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r, dtype=torch.float32)
    return out
