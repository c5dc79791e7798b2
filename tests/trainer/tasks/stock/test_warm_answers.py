"""The warm-start template: correct facts, a lean word next to the majority, no label."""

import random
import re

from trainer.tasks.stock.answer import parse_answer
from trainer.tasks.stock.warm_answers import LEAN, reasoning_prefix, templated_answer

RISING_THEN_MIXED = [100.0, 101.0, 102.0, 101.0, 103.0, 104.0]  # last three: -, +, +


def test_reasoning_states_the_count_and_majority_and_the_lean_follows_directly():
    text = templated_answer(RISING_THEN_MIXED, random.Random(0))
    m = re.search(r"went (\w+), (\w+), (\w+): down (\d), up (\d), mostly (\w+) (\w+)\.\n"
                  r"Prediction: (UP|DOWN)\n", text)
    assert m, text
    assert m.groups()[:6] == ("down", "up", "up", "1", "2", "up")
    assert m.group(7) == LEAN[m.group(8)]  # the word after the majority announces the prediction
    assert "The trend is up over 5 days." in text
    assert parse_answer(text).valid


def test_the_majority_is_the_last_three_moves_not_the_trend():
    falling_then_up = [104.0, 103.0, 102.0, 101.0, 102.0, 101.5]  # last three: -, +, -
    assert reasoning_prefix(falling_then_up).endswith("down 2, up 1, mostly down")
    assert reasoning_prefix([100.0, 99.0, 100.0, 101.0]).endswith("down 1, up 2, mostly up")
    assert reasoning_prefix([100.0, 101.0, 102.0, 103.0]).endswith("down 0, up 3, mostly up")


def test_prediction_and_confidence_do_not_depend_on_the_data():
    rng = random.Random(1)
    falling = [100.0 * 0.99 ** i for i in range(6)]
    for closes in (RISING_THEN_MIXED, falling):
        answers = [parse_answer(templated_answer(closes, rng)) for _ in range(400)]
        ups = sum(a.prediction == "UP" for a in answers) / len(answers)
        assert 0.4 < ups < 0.6
        assert len({a.confidence for a in answers}) == 5  # 50..90% in steps of 10


def test_warm_start_loss_weights_the_decision_tokens():
    import torch

    from trainer.tasks.stock.warmstart import DECISION_WEIGHT, weighted_loss

    torch.manual_seed(0)
    logits = torch.randn(1, 4, 7)
    labels = torch.tensor([[-100, 2, 5, 3]])  # position 0 is the prompt; 5 is a decision token
    ce = torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:].clamp(min=0),
                                           reduction="none")
    want = (ce[0] + DECISION_WEIGHT * ce[1] + ce[2]) / (2 + DECISION_WEIGHT)
    got = weighted_loss(logits, labels, torch.tensor([5]))
    assert torch.allclose(got, want)
    plain = weighted_loss(logits, labels, torch.tensor([6]))  # no decision token present
    assert torch.allclose(plain, ce.mean())


def test_reasoning_prefix_is_the_answer_up_to_its_lean():
    prefix = reasoning_prefix(RISING_THEN_MIXED)
    for seed in range(4):
        text = templated_answer(RISING_THEN_MIXED, random.Random(seed))
        assert text.startswith(prefix)
        assert text[len(prefix):].split(".")[0].strip() in LEAN.values()
    assert prefix.endswith("down 1, up 2, mostly up")


def test_choices_are_the_lean_and_the_confidence_figure_with_their_options():
    from trainer.tasks.stock.warm_answers import answer_and_choices

    seen = set()
    for seed in range(12):
        text, choices = answer_and_choices(RISING_THEN_MIXED, random.Random(seed))
        assert text == templated_answer(RISING_THEN_MIXED, random.Random(seed))
        lean, figure = (text[c.start:c.end] for c in choices)
        ans = parse_answer(text)
        assert lean == LEAN[ans.prediction]
        assert float(figure) / 100 == ans.confidence
        # restated, not a choice
        assert text[choices[0].end:choices[1].start].count("Prediction") == 1
        # the options: both leans, every figure the template draws, the written one among them
        assert set(choices[0].options) == set(LEAN.values())
        assert choices[1].options == ("50", "60", "70", "80", "90")
        assert lean in choices[0].options and figure in choices[1].options
        seen.add(figure)
    assert len(seen) > 2


def test_paired_answers_differ_only_in_the_lean_and_the_prediction_it_announces():
    from trainer.tasks.stock.warmstart import paired_answers

    rng = random.Random(4)
    firsts = []
    for _ in range(200):
        text, twin = paired_answers(RISING_THEN_MIXED, rng)
        a, b = parse_answer(text), parse_answer(twin)
        assert {a.prediction, b.prediction} == {"UP", "DOWN"}
        assert a.confidence == b.confidence and a.valid and b.valid
        for answer, parsed in ((text, a), (twin, b)):  # each announces its own prediction
            assert f"{LEAN[parsed.prediction]}.\nPrediction: {parsed.prediction}\n" in answer
        mask = LEAN[a.prediction], LEAN[b.prediction]
        assert text.replace(mask[0], "?").replace(f": {a.prediction}\n", ": ?\n") == \
            twin.replace(mask[1], "?").replace(f": {b.prediction}\n", ": ?\n")
        firsts.append(a.prediction)
    # the first of a pair is a random direction
    assert 0.35 < firsts.count("UP") / len(firsts) < 0.65
