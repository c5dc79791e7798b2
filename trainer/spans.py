"""Character spans of a completion mapped onto its sampled tokens: which tokens a span the
task names (a decision, the part a reward component judges) covers. The text is decoded from
the token ids themselves (not the worker's detokenised text), so offsets and spans always
refer to the same string."""

from __future__ import annotations

from collections.abc import Callable, Sequence

Spans = list[tuple[int, int]]


def token_offsets(tokenizer, token_ids: Sequence[int]) -> tuple[str, Spans]:
    """The decoded completion and each token's character span [start, end) in it.

    Tokens are decoded one by one (one batched call); when their concatenation is not the
    whole decode (a multi-byte character split across tokens), offsets come from decoding
    growing prefixes instead, which is exact and quadratic, so only taken then.
    """
    ids = [int(t) for t in token_ids]
    text = tokenizer.decode(ids)
    pieces = tokenizer.batch_decode([[t] for t in ids])
    if "".join(pieces) != text:
        pieces, done = [], 0
        for k in range(1, len(ids) + 1):
            upto = len(tokenizer.decode(ids[:k]))
            pieces.append(text[done:upto])
            done = max(done, upto)
    out, pos = [], 0
    for piece in pieces:
        out.append((pos, pos + len(piece)))
        pos += len(piece)
    return text, out


def marks(offsets: Spans, spans: Spans) -> list[float]:
    """1.0 for every token span in ``offsets`` that overlaps one of ``spans``, else 0.0."""
    return [1.0 if any(s < e and a < e and s < b for a, b in spans) else 0.0
            for s, e in offsets]


def span_marks(tokenizer, token_ids: Sequence[int],
               spans_of: Callable[[str], Spans]) -> list[float]:
    """1.0 for every token that overlaps a span ``spans_of(text)`` names, else 0.0."""
    text, offsets = token_offsets(tokenizer, token_ids)
    return marks(offsets, spans_of(text))
