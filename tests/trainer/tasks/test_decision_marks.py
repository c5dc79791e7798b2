"""Decision tokens: the stock answer's decision spans, their mapping onto the embedded
tokenizer's tokens, the batch that carries them and the selection that uses them."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from trainer.grpo import TOKEN_SELECTIONS
from trainer.spans import span_marks, token_offsets
from trainer.tasks import decisions  # noqa: F401 - registers the "decision" selection
from trainer.tasks.decision_marks import decision_extras
from trainer.tasks.stock.answer import decision_spans
from trainer.types import RolloutBatch

ANSWER = ("Reasoning: The trend is up over 4 days. The last three days went up, down, up: "
          "down 1, up 2, mostly up bullish.\nPrediction: UP\nConfidence: 70%")


@pytest.fixture(scope="module")
def tok(warm_model):
    return AutoTokenizer.from_pretrained(warm_model)


def test_decision_span_is_the_first_statement_of_the_direction():
    spans = decision_spans(ANSWER)
    assert [ANSWER[a:b] for a, b in spans] == ["bullish"]  # the prediction restates it
    # right after the count, without the majority word (the earlier template), too
    short = ANSWER.replace(", mostly up", "")
    assert [short[a:b] for a, b in decision_spans(short)] == ["bullish"]
    bold = "Reasoning: falling.\n**Prediction:** down\nConfidence: 60%. Bearish."
    assert [bold[a:b] for a, b in decision_spans(bold)] == ["down"]
    # "up" in the reasoning and words that merely contain a lean are not decisions
    assert decision_spans("Reasoning: up, up, unbullishly.\nConfidence: 50%") == []
    # a lean that does not follow the stated up count is not the decision: the prediction is
    skipped = "Reasoning: The last three days went up, up, up: down 0, bullish.\nPrediction: UP"
    assert [skipped[a:b] for a, b in decision_spans(skipped)] == ["UP"]


def test_token_offsets_tile_the_decoded_text(tok):
    ids = tok(ANSWER, add_special_tokens=False)["input_ids"]
    text, offsets = token_offsets(tok, ids)
    assert text == ANSWER
    assert offsets[0][0] == 0 and offsets[-1][1] == len(text)
    assert all(a[1] == b[0] for a, b in zip(offsets, offsets[1:], strict=False))
    assert [text[s:e] for s, e in offsets] == [tok.decode([i]) for i in ids]


def test_token_offsets_survive_a_character_split_across_tokens(tok):
    text = "Reasoning: prices \u2191 \u20ac5 \U0001F4C8.\nPrediction: UP"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert "".join(tok.batch_decode([[i] for i in ids])) != text  # the split case is real
    decoded, offsets = token_offsets(tok, ids)
    assert decoded == text and offsets[-1][1] == len(text)
    mask = span_marks(tok, ids, decision_spans)
    assert "".join(decoded[s:e] for (s, e), m in zip(offsets, mask, strict=True) if m) == " UP"


def test_decision_mask_marks_exactly_the_decision_tokens(tok):
    ids = tok(ANSWER, add_special_tokens=False)["input_ids"]
    mask = span_marks(tok, ids, decision_spans)
    marked = [tok.decode([i]) for i, m in zip(ids, mask, strict=True) if m]
    assert marked == [" bullish"]
    assert len(mask) == len(ids)


def test_batch_carries_marks_through_padding_and_slicing():
    class C:
        def __init__(self, n):
            self.token_ids, self.logprobs, self.adapter_version = [5] * n, [-0.1] * n, 0

    groups = [[C(3), C(1)]]
    marks = [[0.0, 1.0, 0.0], [1.0]]
    extras = decision_extras(marks, [{1: [5, 9]}, {}], empty_choices=False)
    batch = RolloutBatch.from_groups([[1, 2]], groups, [1.0, 0.0], torch.zeros(2), 0, extras)
    assert batch.extras["decision_mask"].tolist() == [[0, 1, 0], [1, 0, 0]]
    assert batch.slice(1, 2).extras["decision_mask"].tolist() == [[1, 0, 0]]
    # the options at row 0's token 1, -1 everywhere else, sliced along
    assert batch.extras["choice_ids"][0].tolist() == [[-1, -1], [5, 9], [-1, -1]]
    assert (batch.slice(1, 2).extras["choice_ids"] == -1).all()
    assert "choice_ids" not in decision_extras(marks, [{}, {}], empty_choices=False)
    plain = RolloutBatch.from_groups([[1, 2]], groups, [1.0, 0.0], torch.zeros(2), 0)
    assert plain.extras == {} and plain.slice(0, 1).extras == {}


def test_decision_selection_keeps_marked_valid_tokens_and_needs_marks():
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0],
                         [1.0, 1.0, 1.0, 1.0]])
    # second row: mark on padding; third: one decision of two tokens shares the row's
    # weight; fourth: two decisions (one token, then two), each weighs the whole row
    marked = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0],
                           [1.0, 0.0, 1.0, 1.0]])
    pick = TOKEN_SELECTIONS["decision"]
    w = pick(torch.zeros(4, 4), mask, 0.2, marked)
    assert w.tolist() == [[0, 4, 0, 0], [0, 0, 0, 0], [1.5, 1.5, 0, 0], [4, 0, 2, 2]]
    # under seq-mean-token-mean a row's decision weighs what the whole row does under "all"
    per_token = torch.tensor([[0.0, 2.0, 0.0, 0.0], [5.0, 0, 0, 0], [1.0, 3.0, 0, 0],
                              [1.0, 0, 2.0, 4.0]])
    rows = (per_token * w).sum(1) / mask.sum(1)
    # each decision's mean term; two decisions add up
    assert rows.tolist() == [2.0, 0.0, 2.0, 1.0 + 3.0]
    with pytest.raises(ValueError, match="decision marks"):
        pick(torch.zeros(2, 3), mask, 0.2, None)



def test_option_ids_find_the_choice_token_and_what_could_stand_there(tok):
    from trainer.tasks.decision_marks import option_ids

    enc = tok(ANSWER, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    lean = ANSWER.index("bullish")
    at, alts = option_ids(tok, ANSWER, ids, offsets, lean, ("bullish", "bearish"))
    assert tok.decode([ids[at]]) == " bullish"  # the token that carries the choice
    # in the options' order (the balance term's prior is aligned with it)
    assert alts == [tok(f" {w}", add_special_tokens=False)["input_ids"][0]
                    for w in ("bullish", "bearish")]
    at2, back = option_ids(tok, ANSWER, ids, offsets, lean, ("bearish", "bullish", "bearish"))
    assert at2 == at and back == alts[::-1]  # a repeated option's token once
    figure = ANSWER.index("70%")
    at, alts = option_ids(tok, ANSWER, ids, offsets, figure, ("50", "90"))
    assert tok.decode([ids[at]]) == "7" and [tok.decode([t]) for t in alts] == ["5", "9"]
    # an option that would not begin in the choice's own token is refused, named
    with pytest.raises(ValueError, match="'7' does not begin in the reference's token"):
        option_ids(tok, ANSWER, ids, offsets, lean, ("7",))
    with pytest.raises(ValueError, match="past the end"):
        option_ids(tok, ANSWER, ids, offsets, len(ANSWER) + 5, ("x",))


def test_decision_choices_name_the_options_at_the_decision_token(tok):
    from trainer.tasks.decision_marks import decision_choices
    from trainer.tasks.stock.answer import decision_options

    ids = tok(ANSWER, add_special_tokens=False)["input_ids"]
    mask, choices = decision_choices(tok, ids, decision_spans, decision_options)
    assert mask == span_marks(tok, ids, decision_spans)
    (at, alts), = choices.items()
    assert mask[at] == 1.0 and tok.decode([ids[at]]) == " bullish"
    assert alts == [tok(f" {w}", add_special_tokens=False)["input_ids"][0]
                    for w in ("bullish", "bearish")]
    # the prediction as the decision: UP / DOWN in its own spelling
    pred = "Reasoning: up, up, down, no count here.\nPrediction: DOWN\nConfidence: 60%"
    p_ids = tok(pred, add_special_tokens=False)["input_ids"]
    ((_, got),) = decision_choices(tok, p_ids, decision_spans, decision_options)[1].items()
    assert {tok.decode([t]) for t in got} == {" UP", " DOWN"}
    # no decision, or a word with no options: marks without choices
    assert decision_choices(tok, p_ids, decision_spans, lambda w: ())[1] == {}
    none = tok("Reasoning: flat.\nConfidence: 50%", add_special_tokens=False)["input_ids"]
    assert decision_choices(tok, none, decision_spans, decision_options) == (
        [0.0] * len(none), {})


def test_the_confidence_figure_is_a_decision_among_the_warm_starts_figures(tok):
    """reward.confidence_is_decision: the figure's digits are marked too, and its first digit
    chooses among the warm start's figures (50..90 %), so the policy gradient moves the
    stated probability among them; off, only the direction is marked."""
    from functools import partial

    from trainer.tasks.decision_marks import decision_choices
    from trainer.tasks.stock.answer import CONFIDENCE_OPTIONS, decision_options

    spans = partial(decision_spans, confidence=True)
    assert [ANSWER[a:b] for a, b in spans(ANSWER)] == ["bullish", "70"]
    assert [ANSWER[a:b] for a, b in decision_spans(ANSWER)] == ["bullish"]
    ids = tok(ANSWER, add_special_tokens=False)["input_ids"]
    mask, choices = decision_choices(tok, ids, spans, decision_options)
    (lean_at, _), (figure_at, alts) = sorted(choices.items())
    assert tok.decode([ids[figure_at]]).strip() == "7" and figure_at > lean_at
    assert [tok.decode([t]).strip() for t in alts] == [f[0] for f in CONFIDENCE_OPTIONS]
    marked = "".join(tok.decode([t]) for t, m in zip(ids, mask, strict=True) if m)
    assert marked.replace(" ", "") == "bullish70"  # both digits of the figure, no '%'
