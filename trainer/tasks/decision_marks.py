"""Which completion tokens state the decision: character spans named by the task, mapped
onto the sampled token ids (``train.pg_tokens: decision``), and the options each decision
chose among (their first tokens, so the policy gradient can move probability among them).
Part of the decision machinery (trainer/tasks/decisions.py registers it as the rollout
batch's marker); the batch extras it writes are ``decision_mask``, ``choice_ids`` and
``choice_prior`` (``decision_extras``).
Spans map onto tokens through trainer/spans.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from trainer.spans import Spans, marks, token_offsets
from trainer.types import right_pad_floats


def decision_choices(tokenizer, token_ids: Sequence[int], spans_of: Callable[[str], Spans],
                     options_of: Callable[[str], Sequence[str]]
                     ) -> tuple[list[float], dict[int, list[int]]]:
    """``decision_mask``'s marks, and where a marked decision chose among options
    (``options_of(the written word)``): {token index: the first token of each option}. A
    decision whose options the tokenizer would not write in that same token, or whose
    written token is not among them, gets none (its policy gradient then uses the full
    distribution)."""
    ids = [int(t) for t in token_ids]
    text, offsets = token_offsets(tokenizer, ids)
    spans = spans_of(text)
    choices: dict[int, list[int]] = {}
    for start, end in spans:
        options = tuple(options_of(text[start:end]))
        if len(options) < 2:
            continue
        try:
            at, alts = option_ids(tokenizer, text, ids, offsets, start, options)
        except ValueError:
            continue
        if ids[at] in alts and len(alts) == len(options):
            choices[at] = alts
    return marks(offsets, spans), choices


def option_ids(tokenizer, text: str, ids: Sequence[int], offsets: Spans, start: int,
               options: Sequence[str]) -> tuple[int, list[int]]:
    """Where a free choice starting at character ``start`` of ``text`` (tokenised as
    ``ids`` with ``offsets``) is made, and what could be chosen there: the index of its first
    token and the first token of each option written in its place (in the options' order,
    a token shared by two options once). Raises ValueError
    naming the option when its first character would not be in that same token (the
    tokenizer splits or joins it differently from the reference's choice)."""
    at = next((i for i, (s, e) in enumerate(offsets) if s < e and e > start), None)
    if at is None:
        raise ValueError(f"choice at character {start} is past the end of the reference text")
    out = []
    for option in options:
        enc = tokenizer(text[:start] + option, add_special_tokens=False,
                        return_offsets_mapping=True)
        got = enc["input_ids"]
        if (not option or len(got) <= at or list(got[:at]) != list(ids[:at])
                or enc["offset_mapping"][at][1] <= start):
            raise ValueError(f"choice option {option!r} does not begin in the reference's "
                             f"token {at} (after {text[max(0, start - 20):start]!r}): the "
                             f"tokenizer splits or joins it differently")
        out.append(int(enc["input_ids"][at]))
    return at, list(dict.fromkeys(out))


def choice_ids_tensor(choices: list[dict[int, list[int]]], shape: torch.Size) -> torch.Tensor:
    """Per row {token index: option ids} -> [N, T, K] long, -1 padded and -1 elsewhere."""
    k = max([1] + [len(v) for row in choices for v in row.values()])
    out = torch.full((*shape, k), -1, dtype=torch.long)
    for i, row in enumerate(choices):
        for j, v in row.items():
            out[i, j, :len(v)] = torch.tensor(v, dtype=torch.long)
    return out


def decision_extras(decision_masks: list[list[float]], choices: list[dict[int, list[int]]],
                    priors: list[dict[int, list[float]]] | None = None, *,
                    empty_choices: bool = True) -> dict[str, torch.Tensor]:
    """A batch's decision extras (``RolloutBatch.extras``) from per-row lists as long as
    each row's tokens: ``decision_mask``; ``choice_ids`` (where the rows name choices; with
    ``empty_choices`` also when none does); ``choice_prior`` for the balanced choices that
    ``priors`` gives shares for."""
    marked = right_pad_floats(decision_masks)
    out = {"decision_mask": marked}
    if not choices or not (empty_choices or any(choices)):
        return out
    out["choice_ids"] = options = choice_ids_tensor(choices, marked.shape)
    if priors is not None and any(priors):
        shares = torch.zeros(options.shape)
        for i, row in enumerate(priors):
            for j, v in row.items():
                shares[i, j, :len(v)] = torch.tensor(v, dtype=torch.float32)
        out["choice_prior"] = shares
    return out


def mark_completions(task, tokenizer, completions: list) -> dict[str, torch.Tensor]:
    """A rollout batch's decision extras: the tokens of each completion that state its
    decision (``DecisionTask.decision_spans``) and the options it chose among
    (``decision_options``), rows in the batch's order."""
    marked = [decision_choices(tokenizer, c.token_ids, task.decision_spans,
                               task.decision_options) for c in completions]
    return decision_extras([m for m, _ in marked], [c for _, c in marked], empty_choices=False)
