"""Two steps of the recipe (trainer/recipe.py) on the embedded model, its rollout side a
recorded run (rollout/source.RecordedRollouts, tests/trainer/recipe_replay/) instead of vLLM.

The loss and KL each step logs are pinned to the GRPO objective recomputed here from first
principles: the replay's own rows (tokens, worker log-probs, rewards), group-normalised
advantages, and plain transformers + peft forward passes of the adapter that step trained
from (v(step - 1), as the recipe published it) and of the base. Step 1 starts from a zero
LoRA, so its KL is exactly 0; step 2's policy has moved, so its KL and policy-gradient term
are not; and the step from v0 to v1 is AdamW's first step against the objective's
gradient. micro_batch_size equals the step's 2 x 4 completions, so the entropy top-fraction
the learner takes per micro-batch is the whole step's, as recomputed here."""

import json

import pytest
import torch

from rollout.server import WorkerError
from rollout.source import RecordedRollouts, RolloutSource
from tests.conftest import REPO

REPLAY = REPO / "tests" / "trainer" / "recipe_replay"


def _recipe(run, warm_model, source):
    from accelerate import Accelerator

    from rollout.adapter_store import AdapterStore
    from trainer.config import load_config
    from trainer.learner import Learner
    from trainer.recipe import GRPORecipe
    from trainer.tasks import build_task

    cfg = load_config(REPLAY / "config.yaml", [f"model.name_or_path={warm_model}"])
    learner = Learner(cfg, Accelerator(cpu=True))
    return cfg, GRPORecipe(cfg, run, accelerator=learner.acc, task=build_task(cfg),
                           learner=learner, source=source,
                           store=AdapterStore(run / "adapters"))


def _advantages(rows, g: int, dtype=torch.float32) -> torch.Tensor:
    """GRPO's: (r - group mean) / (unbiased group std + 1e-6), 0 where a group's rewards tie."""
    rewards = torch.tensor([r["reward"] for r in rows], dtype=dtype).view(-1, g)
    std = rewards.std(dim=1, keepdim=True)
    return torch.where(std < 1e-6, torch.zeros_like(rewards),
                       (rewards - rewards.mean(dim=1, keepdim=True)) / (std + 1e-6)).view(-1)


def _policy(base_dir, adapter_dir, **kwargs):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32)
    return PeftModel.from_pretrained(base, str(adapter_dir), **kwargs)


def _vocab_logps(model, row, temperature: float, dtype) -> torch.Tensor:
    """[T, vocab]: the sampling distribution's log-probs at each of the row's completion
    positions (one unpadded forward)."""
    ids = torch.tensor([row["prompt_ids"] + row["token_ids"]])
    logits = model(input_ids=ids).logits[0, len(row["prompt_ids"]) - 1:-1].to(dtype)
    return torch.log_softmax(logits / temperature, -1)


def _top_entropy(entropies: list[torch.Tensor], frac: float) -> float:
    """The entropy at or above which a token is among the batch's top ``frac`` share, ties
    to float rounding (1e-4 relative) kept, as the high_entropy selection's rule says."""
    flat = torch.cat(entropies)
    threshold = torch.topk(flat, max(1, round(frac * flat.numel()))).values[-1]
    return threshold - (1e-4 * threshold.abs() + 1e-7)


def _picked(logps: torch.Tensor, row) -> torch.Tensor:
    return logps.gather(-1, torch.tensor(row["token_ids"])[:, None])[:, 0]


def _entropy(logps: torch.Tensor) -> torch.Tensor:
    return -(logps.exp() * logps).sum(-1)


def _expected(cfg, rows, base_dir, adapter_dir):
    """(loss, policy_loss, kl) of the objective for this step's rows: the policy gradient
    over the top-entropy tokens (pg_tokens: high_entropy) with the ratio 1 of a single
    update, each token weighted by min(exp(logp - worker logp), is_cap), plus kl_coef x k3
    KL to the base; mean over each answer's tokens, then over answers. policy_loss is the
    policy-gradient part alone, before the importance weights (as grpo_loss logs it)."""
    tc, temp = cfg.train, cfg.rollout.temperature
    adv = _advantages(rows, cfg.rollout.group_size, torch.float64)
    policy = _policy(base_dir, adapter_dir).eval()
    per_row = []
    with torch.no_grad():
        for r in rows:
            logps = _vocab_logps(policy, r, temp, torch.float64)
            with policy.disable_adapter():
                ref = _vocab_logps(policy, r, temp, torch.float64)
            per_row.append((_picked(logps, r), _picked(ref, r), _entropy(logps),
                            torch.tensor(r["worker_logprobs"], dtype=torch.float64)))
    threshold = _top_entropy([ent for _, _, ent, _ in per_row], tc.entropy_top_frac)
    losses, pgs, kls = [], [], []
    for a, (logp, ref, ent, worker) in zip(adv, per_row, strict=True):
        weight = torch.clamp(torch.exp(logp - worker), max=tc.is_cap)
        k3 = torch.exp(ref - logp) - (ref - logp) - 1
        pg = -a * (ent >= threshold)
        losses.append(float((weight * pg + tc.kl_coef * k3).mean()))
        pgs.append(float(pg.mean()))
        kls.append(k3)
    n = len(losses)
    return sum(losses) / n, sum(pgs) / n, float(torch.cat(kls).mean())


def _assert_first_update_descends(cfg, rows, base_dir, v0, v1):
    """AdamW's first step moves each parameter by lr x g / (|g| + eps), about -lr x sign(g):
    v1 - v0 must be that step against the gradient of the objective at v0, recomputed here
    (the policy-gradient part: the k3 KL has zero gradient where policy = reference). With
    a zero LoRA B only the B matrices have a gradient."""
    from safetensors.torch import load_file

    tc = cfg.train
    policy = _policy(base_dir, v0, is_trainable=True).train()
    adv = _advantages(rows, cfg.rollout.group_size)
    picked, entropies = [], []
    for r in rows:
        logps = _vocab_logps(policy, r, cfg.rollout.temperature, torch.float32)
        picked.append(_picked(logps, r))
        entropies.append(_entropy(logps).detach())
    threshold = _top_entropy(entropies, tc.entropy_top_frac)
    loss = sum(-a * (torch.clamp(torch.exp(lp.detach() - torch.tensor(r["worker_logprobs"])),
                                 max=tc.is_cap) * (ent >= threshold) * lp).mean()
               for a, lp, ent, r in zip(adv, picked, entropies, rows, strict=True)) / len(rows)
    loss.backward()
    before, after = load_file(str(v0 / "adapter_model.safetensors")), \
        load_file(str(v1 / "adapter_model.safetensors"))
    checked = 0
    for name, p in policy.named_parameters():
        if "lora_B" not in name or p.grad is None:
            continue
        key = name.replace(".default", "")
        step, grad = after[key] - before[key], p.grad
        clear = grad.abs() > 1e-6  # Adam's eps (1e-8) and float noise are negligible here
        want = -tc.learning_rate * torch.sign(grad[clear])
        assert torch.allclose(step[clear], want, rtol=0, atol=tc.learning_rate * 0.05), name
        checked += int(clear.sum())
    assert checked > 1000


def test_two_recipe_steps_log_the_grpo_loss_and_kl_of_their_policy(tmp_path, warm_model):
    run = tmp_path / "run"
    run.mkdir()
    source = RecordedRollouts(REPLAY / "rollouts.rank0.jsonl")
    cfg, recipe = _recipe(run, warm_model, source)
    recipe.run(recipe.start(resume=False))

    assert source.remaining() == 0  # every recorded group was asked for, none twice
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    replayed = [json.loads(x) for x in (run / "rollouts.rank0.jsonl").read_text().splitlines()]
    recorded = [json.loads(x) for x in (REPLAY / "rollouts.rank0.jsonl").read_text()
                .splitlines()]
    assert [r["token_ids"] for r in replayed] == [r["token_ids"] for r in recorded]
    for m in metrics:
        rows = [r for r in replayed if r["step"] == m["step"]]
        loss, pg, kl = _expected(cfg, rows, warm_model, recipe.store.path(m["step"] - 1))
        assert m["loss"] == pytest.approx(loss, abs=2e-6), m["step"]
        # with zero-mean advantages and one selected share per answer the policy-gradient
        # part can be ~0 up to rounding: pinned to its recomputation, never to a nonzero size
        assert m["policy_loss"] == pytest.approx(pg, abs=2e-6), m["step"]
        assert m["kl"] == pytest.approx(kl, rel=1e-3, abs=1e-9), m["step"]
    assert metrics[0]["kl"] == 0.0  # v0 is the base: a zero LoRA
    assert [r["reward"] for r in replayed] == pytest.approx([r["reward"] for r in recorded])
    _assert_first_update_descends(cfg, [r for r in replayed if r["step"] == 1], warm_model,
                                  recipe.store.path(0), recipe.store.path(1))
    assert metrics[1]["kl"] > 1e-4  # step 2's policy moved off the reference
    # every phase timed, the checkpoint of the last step written
    assert all(f"time/{p}" in metrics[1] for p in ("generate", "reward", "learner", "sync"))
    assert (run / "checkpoints" / "LATEST").read_text().strip() == "step_000002"


def test_a_replay_that_drifts_from_its_record_says_where(tmp_path, warm_model):
    """A record that holds other prompts than the replay draws: one error naming the file,
    not a loss computed on the wrong samples."""
    rows = [json.loads(x) for x in (REPLAY / "rollouts.rank0.jsonl").read_text().splitlines()]
    for r in rows:
        r["prompt_ids"] = r["prompt_ids"][1:]
    other = tmp_path / "rollouts.rank0.jsonl"
    other.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    run.mkdir()
    _, recipe = _recipe(run, warm_model, RecordedRollouts(other))
    with pytest.raises(WorkerError, match=r"rollouts.rank0.jsonl: no recorded group"):
        recipe.run(recipe.start(resume=False))


def test_recorded_groups_must_match_the_served_adapter_and_group_size(tmp_path):
    source = RecordedRollouts(REPLAY / "rollouts.rank0.jsonl")
    first = json.loads((REPLAY / "rollouts.rank0.jsonl").read_text().splitlines()[0])
    with pytest.raises(WorkerError, match="before any adapter"):
        source.generate([first["prompt_ids"]], n=4, max_tokens=8)
    source.sync(0, tmp_path)
    with pytest.raises(WorkerError, match=r"step 1: 4 completions recorded, .* n=8"):
        source.generate([first["prompt_ids"]], n=8, max_tokens=8)
    source.sync(5, tmp_path)
    with pytest.raises(WorkerError, match=r"recorded under adapter v0, the replay serves v5"):
        source.generate([first["prompt_ids"]], n=4, max_tokens=8)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"step": 1}) + "\n")
    with pytest.raises(WorkerError, match=r"bad.jsonl, line 1: not a rollout record"):
        RecordedRollouts(bad)


def test_the_workers_client_and_the_replay_are_rollout_sources():
    from rollout.client import RolloutClient

    assert isinstance(RolloutClient(["http://127.0.0.1:1"]), RolloutSource)
    assert isinstance(RecordedRollouts(REPLAY / "rollouts.rank0.jsonl"), RolloutSource)


def test_a_sample_drawn_twice_in_a_row_replays_as_two_groups(tmp_path):
    """An epoch that ends inside a step can draw one sample twice in a row: the record
    tells its two groups apart by their group index."""
    lines = (REPLAY / "rollouts.rank0.jsonl").read_text().splitlines()
    first = [json.loads(x) for x in lines[:4]]
    again = [{**r, "group": 1, "token_ids": r["token_ids"][:-1],
              "worker_logprobs": r["worker_logprobs"][:-1]} for r in first]
    record = tmp_path / "rollouts.rank0.jsonl"
    record.write_text("".join(json.dumps(r) + "\n" for r in first + again))
    source = RecordedRollouts(record)
    source.sync(0, tmp_path)
    groups = source.generate([first[0]["prompt_ids"]] * 2, n=4, max_tokens=8)
    assert [[c.token_ids for c in g] for g in groups] == [
        [r["token_ids"] for r in first], [r["token_ids"] for r in again]]
    assert source.remaining() == 0


def test_fewer_training_windows_than_ranks_is_a_config_error(tmp_path, warm_model, monkeypatch):
    """Each rank draws from its own share of the training split: a rank with none is told
    as one line naming the settings, not a traceback from the sampler. (The world size is
    patched: a process group of more ranks than windows is what cannot be built here.)"""
    from trainer import recipe as recipe_mod
    from trainer.config import ConfigError

    monkeypatch.setattr(recipe_mod, "rank_and_world", lambda: (0, 100_000))
    with pytest.raises(ConfigError, match=r"^data: the training split has \d+ prompt\(s\), "
                                          r"fewer than the 100000 learner ranks"):
        _recipe(tmp_path, warm_model, RecordedRollouts(REPLAY / "rollouts.rank0.jsonl"))
