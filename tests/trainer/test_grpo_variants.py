"""The GRPO family (DAPO, GSPO, CISPO, overlong shaping, dynamic sampling, several updates per
batch) against values computed by hand, and the registry tied to the config's names."""

import math
import typing
from types import SimpleNamespace

import pytest
import torch

from trainer.config import StageConfig, TrainConfig
from trainer.grpo import POLICY_LOSSES, LossSettings, clip_range, grpo_loss, overlong_penalty
from trainer.rollouts import informative_groups


def _loss(variant, log_ratio, adv, low=None, high=None, agg="seq-mean-token-mean"):
    """The loss and d loss / d logp for one or more sequences with the given per-token log
    ratios (logp - old_logp), every token valid, workers equal to the learner (IS = 1)."""
    old = torch.full_like(log_ratio, -2.0)
    logp = (old + log_ratio).requires_grad_(True)
    low = 0.2 if low is None else low
    settings = LossSettings(low, low if high is None else high, policy_loss=variant,
                            aggregation=agg)
    loss, stats = grpo_loss(logp, old, None, old.clone(), torch.tensor(adv),
                            torch.ones_like(logp), settings)
    loss.backward()
    return float(loss.detach()), logp.grad, stats


def test_dapo_clips_higher_above_and_as_grpo_below():
    up = torch.tensor([[math.log(1.25)]])  # ratio 1.25, A = +1
    grpo, g_grpo, _ = _loss("grpo", up, [1.0], 0.2, 0.2)
    dapo, g_dapo, st = _loss("dapo", up, [1.0], 0.2, 0.28)
    assert grpo == pytest.approx(-1.2) and g_grpo.item() == 0.0  # clipped at 1.2: no gradient
    assert dapo == pytest.approx(-1.25) and g_dapo.item() == pytest.approx(-1.25)
    assert st.clip_frac == 0.0
    down = torch.tensor([[math.log(0.75)]])  # ratio 0.75, A = -1: both clip at 0.8
    for variant, high in (("grpo", 0.2), ("dapo", 0.28)):
        value, grad, st = _loss(variant, down, [-1.0], 0.2, high)
        assert value == pytest.approx(0.8) and grad.item() == 0.0 and st.clip_frac == 1.0


def test_gspo_takes_one_geometric_mean_ratio_per_sequence():
    # token log ratios 0.1, -0.3: s = exp(-0.1) = 0.904837, A = 2, range 0.2: unclipped
    log_ratio = torch.tensor([[0.1, -0.3]])
    value, grad, st = _loss("gspo", log_ratio, [2.0], 0.2, 0.2)
    s = math.exp(-0.1)
    assert value == pytest.approx(-2 * s, rel=1e-5)
    # d(-A s)/d logp_t = -A s / L for each of the L = 2 tokens
    assert grad.tolist()[0] == pytest.approx([-s, -s], rel=1e-5)
    assert st.clip_frac == 0.0
    # the paper's range (3e-4, 4e-4): A < 0 and s far below 1 - 3e-4 -> clipped, no gradient
    value, grad, st = _loss("gspo", log_ratio, [-1.0], 3e-4, 4e-4)
    assert value == pytest.approx(1 - 3e-4, rel=1e-6)
    assert grad.abs().sum().item() == 0.0 and st.clip_frac == 1.0


def test_cispo_keeps_every_tokens_gradient_with_a_clipped_detached_weight():
    # ratios 1.5 and 0.5, A = 1, low 1 (no lower bound), high 0.28: weights 1.28 and 0.5
    log_ratio = torch.tensor([[math.log(1.5), math.log(0.5)]])
    value, grad, st = _loss("cispo", log_ratio, [1.0], 1.0, 0.28, agg="token-mean")
    logp = (-2.0 + log_ratio)[0]
    assert value == pytest.approx(-(1.28 * logp[0] + 0.5 * logp[1]).item() / 2, rel=1e-5)
    # the weight is detached: d/d logp_t = -w_t A / 2 (token-mean over 2 tokens); a PPO clip
    # would have given the first token no gradient at all
    assert grad.tolist()[0] == pytest.approx([-1.28 / 2, -0.5 / 2], rel=1e-5)
    assert st.clip_frac == 0.5


def test_overlong_penalty_hand_values():
    # max 100 tokens, buffer 20: free up to 80, then linear to -1 at 100
    got = overlong_penalty(torch.tensor([50, 80, 90, 95, 100]), 100, 20)
    assert got.tolist() == pytest.approx([0.0, 0.0, -0.5, -0.75, -1.0])


@pytest.mark.parametrize("variant, want", [
    ("grpo", (0.2, 0.2)), ("dapo", (0.2, 0.28)), ("gspo", (3e-4, 4e-4)),
    ("cispo", (1.0, 0.28))])
def test_each_variant_brings_its_papers_clip_range_unless_set(variant, want):
    tc = TrainConfig(policy_loss=variant)
    assert clip_range(tc) == pytest.approx(want)
    tc.clip_eps_low, tc.clip_eps_high = 0.1, 0.5
    assert clip_range(tc) == (0.1, 0.5)


def test_the_config_names_exactly_the_registered_variants():
    names = typing.get_args(typing.get_type_hints(TrainConfig)["policy_loss"])
    assert set(names) == set(POLICY_LOSSES)
    aggregations = typing.get_args(typing.get_type_hints(TrainConfig)["loss_agg"])
    assert {v.aggregation for v in POLICY_LOSSES.values()} <= set(aggregations) - {"auto"}


def _scripted(rewards_by_prompt: dict[str, list[float]]):
    """A draw function with fixed rewards per prompt: what the dynamic-sampling loop sees
    from the workers and the task (each group's components are {'r': reward})."""
    calls = []

    def draw(chosen, round_):
        calls.append(([s for s in chosen], round_))
        groups = [[f"{s}-{j}" for j in range(len(rewards_by_prompt[s]))] for s in chosen]
        comps = [{"r": r} for s in chosen for r in rewards_by_prompt[s]]
        return [[i] for i, _ in enumerate(chosen)], groups, comps

    return draw, calls


def test_dynamic_sampling_draws_what_is_missing_until_every_group_is_informative():
    rewards = {"a": [1, 0], "b": [1, 1], "c": [0, 0], "d": [0, 1], "e": [1, 1], "f": [0, 1],
               "g": [1, 0]}
    draw, calls = _scripted(rewards)
    pool = iter("efg")
    samples, drawn, stats = informative_groups(
        list("abcd"), draw, lambda k: [next(pool) for _ in range(k)], max_extra=8)
    # b and c have equal rewards: 2 more drawn (e: equal again, f), then 1 more (g)
    assert [c[0] for c in calls] == [list("abcd"), ["e", "f"], ["g"]]
    assert samples == ["a", "d", "f", "g"]
    assert [c["r"] for c in drawn[2]] == [1, 0, 0, 1, 0, 1, 1, 0]
    assert stats == {"rollout/filtered_groups": 3.0, "rollout/extra_draws": 3.0,
                     "rollout/uninformative_kept": 0.0}


def test_dynamic_sampling_fills_the_batch_with_dropped_groups_at_its_cap():
    rewards = {"a": [1, 0], "b": [1, 1], "c": [0, 0], "e": [2, 2]}
    draw, calls = _scripted(rewards)
    samples, drawn, stats = informative_groups(list("abc"), draw, lambda k: ["e"] * k,
                                               max_extra=1)
    assert samples == ["a", "b", "c"] and len(drawn[1]) == 3  # a full batch all the same
    assert stats == {"rollout/filtered_groups": 3.0, "rollout/extra_draws": 1.0,
                     "rollout/uninformative_kept": 2.0}


def test_dapo_settings_validate_and_bad_ones_name_the_field():
    from trainer.config import ConfigError, from_dict

    cfg = from_dict({"train": {"policy_loss": "dapo", "clip_eps_high": 0.28},
                     "reward": {"overlong_buffer": 32}, "rollout": {"dynamic_sampling": True}})
    assert cfg.train.loss_agg == "auto" and isinstance(cfg, StageConfig)
    for bad, field in [({"train": {"updates_per_batch": 0}}, "train.updates_per_batch"),
                       ({"reward": {"overlong_buffer": 128}}, "reward.overlong_buffer"),
                       ({"train": {"clip_eps_low": 1.5}}, "train.clip_eps_low"),
                       ({"train": {"policy_loss": "ppo"}}, "train.policy_loss")]:
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            from_dict(bad)


def _learner(tiny_model, **train):
    from accelerate import Accelerator

    from trainer.learner import Learner

    cfg = StageConfig()
    cfg.model.name_or_path, cfg.model.dtype, cfg.lora.dropout = str(tiny_model), "float32", 0.0
    cfg.train.prompts_per_rank, cfg.train.micro_batch_size = 2, 2
    cfg.rollout.group_size = 2
    cfg.train.kl_coef, cfg.train.learning_rate, cfg.train.clip_eps = 0.0, 1e-3, 1e-4
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return Learner(cfg, Accelerator(cpu=True))


def _rollout_batch():
    from trainer.types import RolloutBatch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 400, (4, 6), generator=g)
    return RolloutBatch([[1, 5, 6, 7]] * 4, ids, torch.ones(4, 6), torch.full((4, 6), -3.0),
                        torch.zeros(4), torch.tensor([1.0, -1.0, 0.5, -0.5]),
                        torch.zeros(4, dtype=torch.long), group_size=2)


def test_several_updates_per_batch_take_their_ratio_against_the_batchs_start(tiny_model):
    """updates_per_batch=2: the first update records the log-probs at the batch's start and
    the second takes its ratio against them (with a clip range of 1e-4, its tokens fall
    outside it); two single updates each take theirs against themselves (ratio 1)."""
    batch = _rollout_batch()
    twice = _learner(tiny_model, updates_per_batch=2)
    with torch.no_grad():
        start = twice.logprobs(batch).float()
    stats = twice.train_step(batch)
    assert torch.allclose(twice.batch_start["logp"], start, atol=1e-6)
    assert 0.25 < stats["clip_frac"] <= 0.5  # the mean of 0 (update 1) and > 0.5 (update 2)
    once = _learner(tiny_model)
    single = [once.train_step(_rollout_batch()) for _ in range(2)]
    assert [s["clip_frac"] for s in single] == [0.0, 0.0]
    # two optimizer steps either way (the same first step: same seed, same batch)
    a, b = twice.adapter_tensors(), once.adapter_tensors()
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)


def test_the_among_options_ratio_takes_both_sides_at_their_own_time():
    """With a decision's options (choice_lse), the ratio is p(token | options) now over
    p(token | options) at the batch's start: logp -1, lse -0.5 now; -1.2, -0.6 then ->
    exp(0.1) = 1.10517, inside the 0.2 clip. Taking the start's lse as today's would give
    exp(0.2) = 1.2214, clipped at 1.2."""
    from trainer.tasks.decisions import among_options

    def loss(old_lse):
        logp = torch.tensor([[-1.0]], requires_grad=True)
        lse = torch.tensor([[-0.5]])
        scored = SimpleNamespace(extra={"choice_lse": lse},
                                 old={"choice_lse": lse if old_lse is None else old_lse})
        out, _ = grpo_loss(logp, torch.tensor([[-1.2]]), None, torch.tensor([[-1.2]]),
                           torch.tensor([1.0]), torch.ones(1, 1), LossSettings(),
                           pg_view=among_options(scored))
        return float(out.detach())

    assert loss(torch.tensor([[-0.6]])) == pytest.approx(-math.exp(0.1), rel=1e-6)
    assert loss(None) == pytest.approx(-1.2, rel=1e-6)
