"""Side batches scored in the policy's pass: one forward for a micro-batch and its terms'
teacher-forced rows.

A term's side batch (the stock task's anchor: a reference answer after each prompt of the
step) continues the same prompts as the micro-batch's groups. Under the shared-prefix layout
(trainer/shared_prefix.py) each side row is placed right after the rows of its group, so it
becomes one more completion in that group's packed row: the prompt is forwarded once for the
G sampled completions and the reference answer together, instead of once more in a separate
pass of its own (at the demo's shapes that pass was about a fifth of the learner's tokens).
Every row keeps its own temperature (the policy's rows the sampling temperature, a side row
1.0, as its term scores it alone) and its own alternative tokens, so each part's scores equal
those of its separate pass within float rounding; :meth:`Joint.split` hands each back in its
own shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trainer.logprobs import TokenScores
from trainer.shared_prefix import prompt_runs
from trainer.types import RolloutBatch

MAIN = ""  # the micro-batch's own part in Joint.parts


@dataclass
class Part:
    rows: list[int]  # its rows' places in the joint batch, in the part's own order
    width: int  # its own T
    alternatives: int | None  # its own A (None: it named no alternatives)


@dataclass
class Joint:
    batch: RolloutBatch  # every part's rows, each side row after its group's
    temperature: torch.Tensor  # [n] each row's sampling temperature
    alternatives: torch.Tensor | None  # [n, T, A] -1 padded (None: no part named any)
    parts: dict[str, Part]

    def split(self, scored: TokenScores) -> tuple[TokenScores, dict[str, TokenScores]]:
        """The joint pass's scores, cut back into the micro-batch's and each side batch's."""
        out = {}
        for name, part in self.parts.items():
            idx = torch.tensor(part.rows, device=scored.logp.device)
            cut = TokenScores(scored.logp[idx, :part.width])
            if scored.entropy is not None:
                cut.entropy = scored.entropy[idx, :part.width]
            if part.alternatives is not None and scored.alternatives is not None:
                cut.alternatives = scored.alternatives[idx, :part.width, :part.alternatives]
            out[name] = cut
        return out.pop(MAIN), out


def join(main: RolloutBatch, main_alternatives: torch.Tensor | None, temperature: float,
         sides: dict[str, tuple[RolloutBatch, torch.Tensor | None]], pad_id: int) -> Joint:
    """One batch of ``main``'s rows (sampled at ``temperature``) and each side batch's
    (``sides``: name -> (rows, their alternative token ids or None), scored at temperature
    1): a side row goes after the run of ``main`` rows with its prompt (the first such run
    that has not taken a row of that side batch yet), or at the end when none has it."""
    runs = prompt_runs(main.prompt_ids)
    after: dict[int, list[tuple[str, int]]] = {i: [] for i in range(len(runs))}
    tail: list[tuple[str, int]] = []
    for name, (side, _) in sides.items():
        free = {}
        for i, (a, _) in enumerate(runs):
            free.setdefault(tuple(main.prompt_ids[a]), []).append(i)
        for r, prompt in enumerate(side.prompt_ids):
            slot = free.get(tuple(prompt))
            (after[slot.pop(0)] if slot else tail).append((name, r))
    order: list[tuple[str, int]] = []
    for i, (a, b) in enumerate(runs):
        order += [(MAIN, r) for r in range(a, b)] + after[i]
    order += tail

    batches = {MAIN: (main, main_alternatives), **sides}
    width = max(b.completion_ids.shape[1] for b, _ in batches.values())
    alt_widths = [alt.shape[-1] for _, alt in batches.values() if alt is not None]
    n = len(order)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width))
    alts = torch.full((n, width, max(alt_widths)), -1, dtype=torch.long) if alt_widths else None
    temps = torch.ones(n)
    prompts = []
    parts = {name: Part([0] * len(b), b.completion_ids.shape[1],
                        None if alt is None else alt.shape[-1])
             for name, (b, alt) in batches.items()}
    for row, (name, r) in enumerate(order):
        b, alt = batches[name]
        t = b.completion_ids.shape[1]
        ids[row, :t] = b.completion_ids[r]
        mask[row, :t] = b.completion_mask[r]
        if alt is not None:
            alts[row, :t, :alt.shape[-1]] = alt[r]
        if name == MAIN:
            temps[row] = temperature
        prompts.append(b.prompt_ids[r])
        parts[name].rows[r] = row
    zeros = torch.zeros(n)
    batch = RolloutBatch(prompts, ids, mask, torch.zeros_like(mask), zeros, zeros,
                         zeros.long(), group_size=main.group_size)
    return Joint(batch, temps, alts, parts)
