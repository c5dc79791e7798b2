"""``rollout.overlap``: each rank samples step k+1 while its learner trains step k, one
adapter version behind, and nothing mixes versions: a real run (1 vLLM worker, 2 DeepSpeed
ZeRO-2 ranks; the session's ``prompts_run``, plain GRPO on the prompts task: overlap is the
recipe's, not a task's) whose last batch the worker sampled under exactly v(k-2), and whose
checkpoint records the trained position of the prompt sampler, not the prefetched one."""

from __future__ import annotations

import json

import pytest

from tests.integration.helpers import PROMPTS_RUN_STEPS as STEPS
from tests.integration.helpers import worker_logprob_gaps

pytestmark = pytest.mark.integration
PROMPTS = 4  # train.prompts_per_rank of the integration runs (helpers.TEST_SETS)


@pytest.fixture(scope="module")
def run(prompts_run):
    return prompts_run[0]


def _metrics(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_each_batch_is_sampled_one_version_behind(run):
    rows = _metrics(run)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    # step 1 samples under v0 in turn; step k > 1 was sampled during step k-1, under v(k-2)
    assert [r["sampled_with_version"] for r in rows] == [0] + list(range(STEPS - 1))
    assert [r["adapter_version"] for r in rows] == list(range(1, STEPS + 1))
    # every step but the last waited for the next batch; the last has none to sample
    assert all("time/rollout_wait" in r for r in rows[:-1]) and "time/rollout_wait" not in rows[-1]
    for rank in (0, 1):
        lines = (run / f"rollouts.rank{rank}.jsonl").read_text().splitlines()
        seen = {(r["step"], r["adapter_version"]) for r in map(json.loads, lines)}
        assert seen == {(1, 0)} | {(k, k - 2) for k in range(2, STEPS + 1)}


def test_the_worker_sampled_the_last_batch_under_exactly_v_k_minus_2(run, warm_model):
    """The workers' in-place load waits for every rank's sampling: had v(k-1) been loaded
    while a rank still sampled, its tokens' worker log-probs would follow v(k-1)."""
    rows = [json.loads(x) for x in (run / "rollouts.rank1.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["step"] == STEPS][:16]
    gaps = worker_logprob_gaps(warm_model, run, rows, (STEPS - 2, STEPS - 1))
    assert gaps[STEPS - 2] < 1e-4, gaps
    assert gaps[STEPS - 1] > 10 * gaps[STEPS - 2], gaps


def test_a_checkpoint_records_the_trained_sampler_position(run):
    """At step 2 the sampler has already drawn step 3's prompts; the checkpoint holds the
    position after step 2 (a resume replays 2 steps' draws and checks it)."""
    for rank in (0, 1):
        meta = json.loads((run / f"checkpoints/step_000002/rank{rank}.json").read_text())
        assert (meta["sampler"]["epoch"], meta["sampler"]["index"]) == (0, 2 * PROMPTS)
