"""Reward components for the stock task, as small registered functions (see ``registry``).

| name | range (unweighted) | stage | module |
| --- | --- | --- | --- |
| accuracy | 0 or 0.6 | I | quality |
| data_usage | 0 .. 0.2 | I, II | quality |
| coherence | 0 .. 0.2 | I, II | quality |
| confidence | -0.15 .. 0 | I, II | confidence |
| calibration | 0 .. 0.2 | II | confidence |
| magnitude | 0 .. 0.2 | II | confidence |
| accuracy_skew | 0 .. 0.6 | II | distribution |
| diversity | -0.1 .. 0 (batch) | I, II | distribution |

Stage I (``configs/*stage1.yaml``): accuracy, data_usage, coherence (the seed's 0.6 + 0.2 +
0.2), confidence and diversity, all at weight 1: the total lies in [-0.25, 1].
Stage II (planned, ``STAGE2_WEIGHTS``): the skew-aware accuracy replaces accuracy, and data
usage and calibration weigh more, as the seed's Stage II shifted weight to data use and
confidence.

Importing this package registers every component (each module registers its own).
"""

from trainer.tasks.stock.rewards.confidence import calibration, confidence, magnitude
from trainer.tasks.stock.rewards.distribution import accuracy_skew, diversity
from trainer.tasks.stock.rewards.quality import accuracy, coherence, data_usage
from trainer.tasks.stock.rewards.registry import (
    COMPONENTS,
    Facts,
    bounds,
    score,
    score_batch,
)

STAGE1_WEIGHTS = {"accuracy": 1.0, "data_usage": 1.0, "coherence": 1.0, "confidence": 1.0,
                  "diversity": 1.0}
STAGE2_WEIGHTS = {"accuracy_skew": 1.0, "data_usage": 1.5, "coherence": 1.0, "confidence": 1.0,
                  "calibration": 1.5, "magnitude": 0.5, "diversity": 1.0}

__all__ = ["COMPONENTS", "Facts", "STAGE1_WEIGHTS", "STAGE2_WEIGHTS", "accuracy",
           "accuracy_skew", "bounds", "calibration", "coherence", "confidence", "data_usage",
           "diversity", "magnitude", "score", "score_batch"]
