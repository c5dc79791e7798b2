"""Every GRPO variant through the real stack on the demo config, a few steps each, against one
shared worker start (`stonk workers`, then `accelerate launch` learners by hand, the path
tests/integration/test_scale_cpu.py checks): DAPO (clip-higher, token-mean, overlong
shaping, dynamic sampling), GSPO with two updates per batch, CISPO with dynamic sampling on
two ranks and rollout.overlap. Each run's logged loss terms and the metrics its variant adds
must be there and finite, and each variant's own mechanics are read back from what the run
left on disk (the adapters it published, the completions it recorded)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from itertools import pairwise

import pytest
import torch
from safetensors.torch import load_file

from rollout.adapter_store import AdapterStore
from tests.integration.helpers import DEMO, REPO, TEST_SETS, assert_shared_prefix_held, set_flags
from tests.integration.test_scale_cpu import _wait_healthy
from trainer.config import load_config
from trainer.grpo import LossSettings, grpo_loss
from trainer.run_folder import RunFolder

pytestmark = pytest.mark.integration
PORT = 8430
STEPS = 3
# accuracy alone, groups of 2: a group whose answers are both right (or both wrong) has one
# reward, the case dynamic sampling drops (the demo's other components almost never tie, and
# its near-50/50 start makes 8 equal answers rare)
TIES = ["reward.weights={accuracy: 1.0}", "rollout.group_size=2", "train.micro_batch_size=8"]
RUNS = {
    # the warm start's answers are ~43 tokens of max_tokens 96: a 64-token buffer (no penalty
    # up to 32 tokens) puts them inside it, where a 32-token one left them all penalty-free.
    # TIES: groups that tie, for dynamic sampling to drop (the overlong penalty breaks a tie
    # only between answers of different lengths, rare here)
    "dapo": ["train.policy_loss=dapo", "reward.overlong_buffer=64", "rollout.dynamic_sampling=true",
             "rollout.max_extra_draws=8", *TIES],
    # every published adapter kept on disk (the demo keeps 3), so the publishes can be counted
    "gspo": ["train.policy_loss=gspo", "train.updates_per_batch=2",
             f"run.keep_adapter_versions={STEPS + 2}"],
    # a total reward that ties: overlong shaping (length) would break the ties
    "cispo": ["train.policy_loss=cispo", "rollout.dynamic_sampling=true", "rollout.overlap=true",
              *TIES],
}
RANKS = {"dapo": 1, "gspo": 1, "cispo": 2}


@pytest.fixture(scope="module")
def variant_runs(tmp_path_factory, warm_model):
    """{variant: (run folder, metrics rows, learner output)}, all against one worker."""
    root = tmp_path_factory.mktemp("variants")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    log = root / "workers.log"
    workers = subprocess.Popen(
        [sys.executable, "-m", "launch.cli", "workers", "--config", DEMO,
         "--set", f"rollout.base_port={PORT}", "--log-dir", str(root / "wlogs")],
        cwd=REPO, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{PORT}"
    runs = {}
    try:
        _wait_healthy([url], workers, log)
        for name, sets in RUNS.items():
            run_dir = root / name
            cmd = [sys.executable, "-m", "accelerate.commands.launch",
                   "--config_file", "launch/accelerate/cpu_deepspeed.yaml",
                   "--num_processes", str(RANKS[name]), "--main_process_port", "29621",
                   "-m", "trainer.train", "--config", DEMO,
                   *set_flags(f"train.steps={STEPS}", f"rollout.base_port={PORT}",
                              f"launch.num_processes={RANKS[name]}", "eval.every_steps=0",
                              *TEST_SETS, *sets),
                   "--run-dir", str(run_dir), "--workers", url]
            proc = subprocess.run(cmd, cwd=REPO, env=dict(env, DS_ACCELERATOR="cpu"),
                                  capture_output=True, text=True, timeout=900)
            out = proc.stdout + proc.stderr
            assert proc.returncode == 0, f"{name}:\n{out[-4000:]}"
            rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
            runs[name] = (run_dir, rows, out)
    finally:
        workers.send_signal(signal.SIGTERM)
        workers.wait(timeout=120)
    return runs


def _finite(rows, *keys):
    for row in rows:
        for key in keys:
            assert key in row and math.isfinite(row[key]), (key, row.get(key))


def test_every_variant_trains_and_logs_its_terms(variant_runs):
    for name, (_, rows, out) in variant_runs.items():
        assert [r["step"] for r in rows] == list(range(1, STEPS + 1)), name
        assert_shared_prefix_held(out)  # GSPO's sequence ratios and two updates included
        _finite(rows, "loss", "policy_loss", "clip_frac", "is_weight", "grad_norm")


def _recorded(run_dir) -> dict[int, list[list[dict]]]:
    """{step: [each rank's rollout rows of the step]} from rollouts.rank*.jsonl."""
    out: dict[int, dict[str, list[dict]]] = {}
    for path in sorted(run_dir.glob("rollouts.rank*.jsonl")):
        for row in map(json.loads, path.read_text().splitlines()):
            out.setdefault(row["step"], {}).setdefault(path.name, []).append(row)
    return {step: list(ranks.values()) for step, ranks in out.items()}


def test_dapo_shapes_overlong_answers(variant_runs):
    run_dir, rows, _ = variant_runs["dapo"]
    _finite(rows, "reward/overlong", "rollout/filtered_groups", "rollout/extra_draws",
            "rollout/uninformative_kept")
    cfg = load_config(run_dir / "config.yaml")
    max_tokens, buffer = cfg.rollout.max_tokens, cfg.reward.overlong_buffer
    coef = cfg.reward.overlong_coef
    assert 0 < buffer < max_tokens

    def penalty(n: int) -> float:  # DAPO's soft overlong punishment, written out
        return -coef * min(max(n - (max_tokens - buffer), 0) / buffer, 1.0)

    recorded = _recorded(run_dir)
    assert sorted(recorded) == list(range(1, STEPS + 1))
    inside = 0
    for row in rows:
        per_rank = []
        for rank_rows in recorded[row["step"]]:
            for r in rank_rows:
                assert r["components"]["overlong"] == pytest.approx(
                    penalty(len(r["token_ids"])), abs=1e-6), r["token_ids"]
                inside += len(r["token_ids"]) > max_tokens - buffer
            # each rank logs the mean over its rows, and the step the mean over ranks
            per_rank.append(sum(penalty(len(r["token_ids"])) for r in rank_rows)
                            / len(rank_rows))
        assert row["reward/overlong"] == pytest.approx(sum(per_rank) / len(per_rank),
                                                       abs=1e-6), row["step"]
    assert inside > 0, "no completion fell inside the overlong buffer: nothing was shaped"
    # some group tied (every answer equally right, equally long) and was dropped
    assert sum(r["rollout/filtered_groups"] for r in rows) > 0


def test_dapo_aggregates_token_mean_under_loss_agg_auto(variant_runs):
    """``train.loss_agg: auto`` is the variant's own aggregation: token-mean for DAPO (long
    answers weigh by their length), seq-mean-token-mean for GSPO. The run's demo answers are
    almost all 43 tokens long, where both give the same value, so the resolution is checked on
    the runs' own saved configs through the loss settings the learner's term reads
    (trainer/grpo.LossSettings.of) on a batch where they differ: a 1-token answer with
    advantage +1, a 4-token one with -1."""
    mask = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    zeros, adv = torch.zeros_like(mask), torch.tensor([1.0, -1.0])
    token_mean = -(1.0 * 1 + -1.0 * 4) / 5  # per-token loss -A, over all 5 tokens
    seq_mean = -(1.0 + -1.0) / 2  # per answer, then over answers
    expected = {"dapo": ("token-mean", token_mean), "gspo": ("seq-mean-token-mean", seq_mean)}
    for name, (aggregation, value) in expected.items():
        tc = load_config(variant_runs[name][0] / "config.yaml").train
        assert tc.policy_loss == name and tc.loss_agg == "auto", (tc.policy_loss, tc.loss_agg)
        settings = LossSettings.of(tc)
        assert settings.aggregation == aggregation
        _, stats = grpo_loss(zeros, zeros, None, zeros, adv, mask, settings)
        assert stats.policy_loss == pytest.approx(value, abs=1e-6), (name, aggregation)


def test_gspo_reuses_each_batch_for_two_updates(variant_runs):
    run_dir, rows, _ = variant_runs["gspo"]
    # the second update's sequence ratios move off 1: with GSPO's range (3e-4, 4e-4) some
    # sequences fall outside it, where one update alone never does (its ratio is 1)
    assert any(r["clip_frac"] > 0 for r in rows)
    # one publish per batch, counted on disk: v0 (the fresh adapter), then one per step,
    # not one per update (none pruned: run.keep_adapter_versions > STEPS + 1)
    store = AdapterStore(RunFolder(run_dir).adapters)
    assert store.versions() == list(range(STEPS + 1)) and store.latest() == STEPS
    published = [json.loads((store.path(v) / "stonk_version.json").read_text())
                 for v in store.versions()]
    assert [m["version"] for m in published] == list(range(STEPS + 1))
    assert all(a["published_at"] < b["published_at"] for a, b in pairwise(published))
    weights = [load_file(store.path(v) / "adapter_model.safetensors") for v in store.versions()]
    for old, new in pairwise(weights):  # each publish carries its batch's updates
        assert any(not torch.equal(old[k], new[k]) for k in old)
    # and the workers sampled step k under the adapter published after step k - 1
    for step, ranks in _recorded(run_dir).items():
        assert {r["adapter_version"] for rank_rows in ranks for r in rank_rows} == {step - 1}


def test_cispo_with_dynamic_sampling_on_two_ranks_and_overlap(variant_runs):
    run_dir, rows, _ = variant_runs["cispo"]
    _finite(rows, "rollout/filtered_groups", "rollout/extra_draws")
    # both ranks' counts summed: some group tied, and more prompts were drawn for it
    assert sum(r["rollout/filtered_groups"] for r in rows) > 0
    assert sum(r["rollout/extra_draws"] for r in rows) > 0
    sampled = {}
    for path in run_dir.glob("rollouts.rank*.jsonl"):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            sampled.setdefault((path.name, row["step"]), []).append(row)
    # every rank trained on a full batch (4 prompts x 2) at every step
    assert len(sampled) == 2 * STEPS and {len(v) for v in sampled.values()} == {8}
    # overlap: step k + 1 was sampled under v(k - 1) while step k trained
    assert [r["sampled_with_version"] for r in rows] == [0, 0, 1]
