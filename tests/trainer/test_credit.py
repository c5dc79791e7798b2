"""Credit by span (trainer/credit.py, ``train.credit``): the tokens of the span a component is
sent to take that component's own group advantage, the other tokens the advantage of the
remaining components; the policy gradient reads them per token; the config names real
components, spans the task marks and a token-level loss."""

from __future__ import annotations

import math

import pytest
import torch

from rollout.client import Completion
from trainer.config import ConfigError, from_dict
from trainer.credit import modal_rows, token_advantages
from trainer.grpo import ADVANTAGE_ESTIMATORS, LossSettings, grpo_loss
from trainer.tasks.stock.answer import confidence_span, decision_spans

ANSWERS = ["The stock rose. Prediction: UP\nConfidence: 80%",
           "The stock fell. Prediction: DOWN\nConfidence: 60%",
           "Prediction: UP\nConfidence: 90%",
           "Prediction: UP and nothing else"]  # no figure: no span


class Spans:
    """The stock task's spans: its decision (the prediction) and its confidence figure."""

    def decision_spans(self, text):
        return decision_spans(text)

    def credit_spans(self, text):
        return {"confidence": confidence_span(text)}


def _completions(tok):
    return [Completion(tok(t, add_special_tokens=False)["input_ids"], [], t, "stop", 0, "w")
            for t in ANSWERS]


def test_the_figure_takes_its_components_advantage_and_the_rest_the_others(warm_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(warm_model)
    comps = [{"accuracy": 1.0, "calibration": 0.18}, {"accuracy": 0.0, "calibration": 0.10},
             {"accuracy": 1.0, "calibration": 0.02}, {"accuracy": 0.0, "calibration": 0.06}]
    got = token_advantages(Spans(), tok, _completions(tok), comps, {"calibration": "confidence"},
                           4, ADVANTAGE_ESTIMATORS["grpo"])
    assert got.shape == (4, max(len(tok(t, add_special_tokens=False)["input_ids"])
                                for t in ANSWERS))
    # the rest (accuracy alone), one group of 4: (r - 0.5) / (unbiased std sqrt(1/3) + 1e-6)
    rest = [x * 0.5 / math.sqrt(1 / 3) for x in (1, -1, 1, -1)]
    # the figure: its calibration minus the mean over the group's answers that predicted the
    # same before it: rows 0 and 2 (UP): 0.18 - 0.10 = +0.08, 0.02 - 0.10 = -0.08; row 1
    # (DOWN) alone: 0; row 3 has no figure
    own = [0.08, 0.0, -0.08, None]
    for i, text in enumerate(ANSWERS):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        figure = {j for j, (s, e) in enumerate(_offsets(tok, ids))
                  for a, b in confidence_span(text) if s < b and a < e}
        assert bool(figure) == (own[i] is not None)
        for j in range(len(ids)):
            want = own[i] if j in figure else rest[i]
            assert float(got[i, j]) == pytest.approx(want, rel=1e-4, abs=1e-6), (i, j, text)
        assert (got[i, len(ids):] == 0).all()  # padding


def _offsets(tok, ids):
    from trainer.spans import token_offsets

    return token_offsets(tok, ids)[1]


def test_with_modal_only_the_groups_most_frequent_decision_learns_the_figure(warm_model):
    """``train.credit_modal``: two UP answers and four DOWN ones in a group of 6; the UP
    answers' figure tokens take 0 (without it: their calibration minus their mean), the
    DOWN ones' as before, the rest of every answer unchanged. A tie counts every tied one."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(warm_model)
    texts = [f"Prediction: {d}\nConfidence: {c}%" for d, c in
             (("UP", 80), ("UP", 60), ("DOWN", 50), ("DOWN", 70), ("DOWN", 90), ("DOWN", 60))]
    done = [Completion(tok(t, add_special_tokens=False)["input_ids"], [], t, "stop", 0, "w")
            for t in texts]
    assert modal_rows(Spans(), texts, "confidence", 6) == [False] * 2 + [True] * 4
    assert modal_rows(Spans(), texts[:4], "confidence", 4) == [True] * 4  # 2 UP, 2 DOWN: a tie
    assert modal_rows(Spans(), texts[:3] + ["Prediction: DOWN"], "confidence", 2) == [
        True, True, True, False]  # groups of 2; no figure: no span
    comps = [{"accuracy": float(i % 2), "calibration": 0.02 * (i + 1)} for i in range(6)]
    plain, modal = (token_advantages(Spans(), tok, done, comps, {"calibration": "confidence"},
                                     6, ADVANTAGE_ESTIMATORS["grpo"], modal=m)
                    for m in (False, True))
    for i, text in enumerate(texts):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        figure = [j for j, (s, e) in enumerate(_offsets(tok, ids))
                  for a, b in confidence_span(text) if s < b and a < e]
        assert figure, text
        for j in range(len(ids)):
            want = (0.0 if i < 2 else float(plain[i, j])) if j in figure else float(plain[i, j])
            assert float(modal[i, j]) == pytest.approx(want, abs=1e-7), (i, j)
        if i < 2:  # without modal the UP figures moved: +-0.01 about their mean
            assert abs(float(plain[i, figure[0]])) == pytest.approx(0.01, abs=1e-6)


def test_the_policy_gradient_reads_each_tokens_advantage():
    """grpo_loss with [N, T] advantages: each token's gradient is -A_t (first update, ratio 1,
    token-mean over 4 tokens); with [N] advantages every token of a row gets the row's."""
    logp = torch.zeros(1, 4, requires_grad=True)
    adv = torch.tensor([[1.0, -2.0, 0.5, 3.0]])
    mask = torch.ones(1, 4)
    settings = LossSettings(clip_low=0.2, clip_high=0.2, is_cap=2.0, kl_coef=0.0,
                            policy_loss="grpo", aggregation="token-mean")
    loss, _ = grpo_loss(logp, logp.detach(), None, logp.detach(), adv, mask, settings)
    loss.backward()
    assert logp.grad[0].tolist() == pytest.approx([-1.0 / 4, 2.0 / 4, -0.5 / 4, -3.0 / 4])


@pytest.mark.parametrize("credit,problem", [
    ({"calibration": "confidence"}, "not a reward component with a weight > 0"),
    ({"accuracy": "reasoning"}, "'reasoning' is not a span task 'stock' marks"),
])
def test_credit_names_a_weighted_component_and_a_span_the_task_marks(credit, problem):
    with pytest.raises(ConfigError, match=problem):
        from_dict({"train": {"credit": credit}})


def test_credit_modal_needs_credit():
    with pytest.raises(ConfigError, match="train.credit_modal: needs train.credit"):
        from_dict({"train": {"credit_modal": True}})


def test_credit_needs_a_token_level_policy_loss():
    with pytest.raises(ConfigError, match="gspo's ratio is one per sequence"):
        from_dict({"train": {"credit": {"accuracy": "confidence"}, "policy_loss": "gspo"}})
    cfg = from_dict({"train": {"credit": {"accuracy": "confidence"}}})
    assert cfg.train.credit == {"accuracy": "confidence"}
