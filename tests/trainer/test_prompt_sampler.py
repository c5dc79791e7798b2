"""The per-rank prompt sampler: plain epoch shuffles, and Stage I's label-interleaved draws
that keep every step's prompts as balanced as the set."""

from __future__ import annotations

import random

from trainer.rollouts import PromptSampler
from trainer.tasks.base import Sample
from trainer.tasks.stock.config import DataConfig, StockRewardConfig


def _samples(labels: str) -> list[Sample]:
    return [Sample(f"s{i}", [], {"label": {"U": "UP", "D": "DOWN"}[c]})
            for i, c in enumerate(labels)]


def _draw(sampler: PromptSampler, n: int) -> list[str]:
    return [s.id for s in sampler.next(n)]


def test_plain_draws_are_the_seeded_epoch_shuffle():
    samples = _samples("UUUUUUDD")
    for key in (None, lambda s: None):  # a key with one class is plain shuffling
        sampler = PromptSampler(samples, seed=3, key=key)
        for epoch in range(2):
            order = list(range(8))
            random.Random(3 * 100_003 + epoch).shuffle(order)
            assert _draw(sampler, 8) == [f"s{i}" for i in order]


def test_keyed_draws_alternate_the_classes_then_the_rest():
    samples = _samples("UUUUUUDDDD")  # 6 UP, 4 DOWN
    label = {s.id: s.meta["label"] for s in samples}
    sampler = PromptSampler(samples, seed=0, key=lambda s: s.meta["label"])
    epochs = [_draw(sampler, 10) for _ in range(3)]
    for drawn in epochs:
        assert sorted(drawn) == sorted(s.id for s in samples)  # every sample once an epoch
        # classes in sorted order, one of each in turn while both last; the 2 UP left after
        assert [label[i] for i in drawn[:8]] == ["DOWN", "UP"] * 4
        assert [label[i] for i in drawn[8:]] == ["UP", "UP"]
    assert len({tuple(d) for d in epochs}) == 3  # reshuffled every epoch
    again = PromptSampler(samples, seed=0, key=lambda s: s.meta["label"])
    assert _draw(again, 30) == [i for d in epochs for i in d]  # seeded: resumable


def test_stage1_steps_are_50_50_and_stage2_draws_the_natural_mix():
    from trainer.tasks.stock.task import StockTask

    data = DataConfig(source="synthetic", synthetic_days=400, window=5,
                      train_end="2001-06-30", val_end="2001-09-30")
    task = StockTask(data, StockRewardConfig())
    train = task.split("train")
    assert {task.stratum(s) for s in train} == {"UP", "DOWN"}
    sampler = PromptSampler(train, seed=1, key=task.stratum)
    for _ in range(len(train) // 4):  # one epoch of 4-prompt steps
        assert sorted(s.meta["label"] for s in sampler.next(4)) == ["DOWN", "DOWN", "UP", "UP"]
    for off in ({"balance": False}, {"balanced_batches": False}):
        other = StockTask(DataConfig(**{**vars(data), **off}), StockRewardConfig())
        assert {other.stratum(s) for s in other.split("train")} == {None}


def test_a_snapshot_keeps_its_position_across_later_draws_and_epochs():
    """rollout.overlap draws the next step's prompts before this step's checkpoint: the
    snapshot taken before that draw must still say where this step left off."""
    sampler = PromptSampler(_samples("UUDDUD"), seed=1, key=lambda s: s.meta["label"])
    _draw(sampler, 4)
    snap = sampler.snapshot()
    ahead = _draw(sampler, 5)  # crosses into epoch 1
    assert (sampler.epoch, sampler.index) == (1, 3)
    assert (snap.epoch, snap.index, snap.seed, len(snap.samples)) == (0, 4, 1, 6)
    assert _draw(snap, 5) == ahead  # the snapshot continues with the same draws


def test_a_saved_position_continues_exactly_whatever_each_step_drew():
    """Dynamic sampling draws a varying number of prompts a step: the position, not a count
    of steps, is what a checkpoint restores (across an epoch boundary too)."""
    import pytest

    samples = _samples("UUUDDDUD")
    key = lambda s: s.meta["label"]  # noqa: E731
    first = PromptSampler(samples, seed=5, key=key)
    for n in (3, 5, 4):  # 12 draws: into the second epoch
        first.next(n)
    state = first.state_dict()
    again = PromptSampler(samples, seed=5, key=key)
    again.load_state_dict(state)
    assert (again.epoch, again.index) == (1, 4)
    assert _draw(again, 9) == _draw(first, 9)
    with pytest.raises(ValueError, match="seed/size"):
        PromptSampler(samples, seed=6, key=key).load_state_dict(state)
    with pytest.raises(ValueError, match="out of range"):
        PromptSampler(samples, seed=5, key=key).load_state_dict({**state, "index": 9})
