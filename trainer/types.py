"""RolloutBatch: the one rollout-batch type, defined once, with its shapes.

N = P prompts x G completions per prompt (groups contiguous: rows g*G .. g*G+G-1 share a
prompt), T = longest completion in the batch (right padded with ``pad_id``).
"""

from __future__ import annotations

from dataclasses import dataclass

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
    decision_mask: torch.Tensor | None = None  # [N, T] float, 1.0 on decision tokens (if marked)
    # [N, T, K] long: at the token where a choice is made (an anchor's free choice, a
    # rollout's decision), the token ids of its options, -1 padded; -1 everywhere else
    choice_ids: torch.Tensor | None = None
    # [N, T, K] float (teacher-forced anchors only): at a balanced choice's token, each
    # option's target share across the batch, aligned with choice_ids; 0 everywhere else
    choice_prior: torch.Tensor | None = None

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
            decision_mask=(None if self.decision_mask is None
                           else self.decision_mask[start:stop]),
            choice_ids=None if self.choice_ids is None else self.choice_ids[start:stop],
            choice_prior=None if self.choice_prior is None else self.choice_prior[start:stop],
        )

    @staticmethod
    def teacher_forced(prompt_ids: list[list[int]], targets: list[list[int]], pad_id: int,
                       decision_masks: list[list[float]] | None = None,
                       choices: list[dict[int, list[int]]] | None = None,
                       priors: list[dict[int, list[float]]] | None = None) -> RolloutBatch:
        """Reference answers ``targets`` after their prompts (one row each), for a supervised
        term: no rollout, so log-probs, rewards, advantages and versions are zero.
        ``decision_masks``: per-token lists as long as each target (1.0 on the tokens of
        its free choices, which the supervised NLL does not hold as written) or None;
        ``choices``: per row, {token index: the token ids of that choice's options};
        ``priors``: per row, {token index: each of those options' target share across the
        batch} for the choices that are balanced (``Choice.prior``)."""
        ids, mask = _right_pad(targets, pad_id)
        marked = None if decision_masks is None else _right_pad_floats(decision_masks)
        options = None if choices is None else _choice_ids(choices, ids.shape)
        shares = None
        if options is not None and priors is not None and any(priors):
            shares = torch.zeros(options.shape)
            for i, row in enumerate(priors):
                for j, v in row.items():
                    shares[i, j, :len(v)] = torch.tensor(v, dtype=torch.float32)
        zeros = torch.zeros(len(targets))
        return RolloutBatch(list(prompt_ids), ids, mask, torch.zeros_like(mask), zeros, zeros,
                            zeros.long(), group_size=1, decision_mask=marked,
                            choice_ids=options, choice_prior=shares)

    @staticmethod
    def from_groups(prompt_ids: list[list[int]], groups: list[list], rewards: list[float],
                    advantages: torch.Tensor, pad_id: int,
                    decision_masks: list[list[float]] | None = None,
                    choices: list[dict[int, list[int]]] | None = None) -> RolloutBatch:
        """prompt_ids: P prompts; groups: P lists of G Completions; rewards: N floats;
        decision_masks: N per-token lists (as long as each completion) or None; choices:
        per row, {token index: the token ids of the options that decision chose among}."""
        g = len(groups[0])
        flat = [c for group in groups for c in group]
        ids, mask = _right_pad([c.token_ids for c in flat], pad_id)
        lps = _right_pad_floats([c.logprobs for c in flat])
        marked = None if decision_masks is None else _right_pad_floats(decision_masks)
        return RolloutBatch(
            prompt_ids=[p for p in prompt_ids for _ in range(g)],
            completion_ids=ids,
            completion_mask=mask,
            rollout_logp=lps,
            rewards=torch.tensor(rewards, dtype=torch.float32),
            advantages=advantages.float(),
            adapter_version=torch.tensor([c.adapter_version for c in flat], dtype=torch.long),
            group_size=g,
            decision_mask=marked,
            choice_ids=None if not choices or not any(choices) else _choice_ids(choices,
                                                                                ids.shape),
        )


def _choice_ids(choices: list[dict[int, list[int]]], shape: torch.Size) -> torch.Tensor:
    """Per row {token index: option ids} -> [N, T, K] long, -1 padded and -1 elsewhere."""
    k = max([1] + [len(v) for row in choices for v in row.values()])
    out = torch.full((*shape, k), -1, dtype=torch.long)
    for i, row in enumerate(choices):
        for j, v in row.items():
            out[i, j, :len(v)] = torch.tensor(v, dtype=torch.long)
    return out


def _right_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows -> ids [n, T] (right padded with ``pad_id``), mask [n, T] float, T >= 1."""
    t = max(1, max(len(r) for r in rows))
    ids = torch.full((len(rows), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), t))
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1.0
    return ids, mask


def _right_pad_floats(rows: list[list[float]]) -> torch.Tensor:
    """Per-token float rows -> [n, T] right padded with 0.0, T >= 1."""
    out = torch.zeros((len(rows), max(1, max(len(r) for r in rows))))
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r, dtype=torch.float32)
    return out
