"""P(UP) read from an answer, and the market-aware (prior-shift) reading of its confidence.

An answer names a direction d and a confidence c (0..1) that d happens. As a probability
of UP::

    p_up = c        if d is UP
    p_up = 1 - c    if d is DOWN
    p_up = 0.5      if the answer has no prediction or no confidence (uninformative)

Market-aware reading (Stage II, ``reward.market_aware_confidence: true``). A model trained on
the balanced Stage I set states its confidence under a 50/50 prior. On the natural
distribution, with a share pi of UP days, Bayes' rule moves it by the prior odds (posterior
odds = evidence odds x prior odds)::

    odds'(UP) = odds(UP) * pi / (1 - pi),   i.e.   p' = p pi / (p pi + (1 - p)(1 - pi))

where p is the plain p_up above and pi the training split's natural up ratio (before
balancing), clipped to [0.05, 0.95] like the skew reward. At pi = 0.5 the shift is the
identity, so the switch only chooses the prior (``Facts.prior_up``): 0.5 reads the answer as
stated. Example: UP at 70% with pi = 0.6 gives 0.7 * 0.6 / (0.7 * 0.6 + 0.3 * 0.4) = 0.778.

The shifted probability feeds the ``confidence`` and ``calibration`` rewards and the
evaluation's ROC-AUC and calibration. So in Stage II the model is paid for stating the
evidence of the window alone and the formula adds the base rate; an answer that also folded
the base rate into its number would count it twice. An invalid answer stays at 0.5: it
carries no evidence, and the base rate alone is no answer.
"""

from __future__ import annotations

from trainer.tasks.stock.answer import ParsedAnswer
from trainer.tasks.stock.rewards.distribution import clip_rate

PLAIN_PRIOR = 0.5  # the prior a confidence is stated under; shifting to it changes nothing


def prior_shift(p: float, prior: float) -> float:
    """Move a probability stated under a 50/50 prior to the prior ``prior`` (odds x ratio)."""
    pi = clip_rate(prior)
    return p * pi / (p * pi + (1.0 - p) * (1.0 - pi))


def p_up(ans: ParsedAnswer, prior: float = PLAIN_PRIOR) -> float:
    """P(UP) an answer states, read against ``prior``; 0.5 without prediction or confidence."""
    if ans.prediction is None or ans.confidence is None:
        return 0.5
    p = ans.confidence if ans.prediction == "UP" else 1.0 - ans.confidence
    return prior_shift(p, prior)


def p_predicted(ans: ParsedAnswer, prior: float = PLAIN_PRIOR) -> float | None:
    """The probability of the direction the answer predicted, read against ``prior``
    (None without prediction or confidence): the confidence, market-aware when asked."""
    if ans.prediction is None or ans.confidence is None:
        return None
    up = p_up(ans, prior)
    return up if ans.prediction == "UP" else 1.0 - up
