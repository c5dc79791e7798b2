"""Pure helpers of the benchmark scripts: options, medians, tables, threshold crossing,
process roles, stop-token cut, the TRL reward wrapper's regrouping, and the per-step wall
interval of a run."""

import json
import sys

import pytest

from benchmarks.common import (
    cumulative,
    first_crossing,
    median_after_warmup,
    model_sets,
    parser,
    result_tag,
    table,
)
from benchmarks.hf_generate import _cut
from benchmarks.learning import ours_points, summary, trl_points
from benchmarks.memory import role_of
from benchmarks.robustness import bars, seeds_of, spread
from benchmarks.trl_grpo import reward_function


def test_common_options_name_the_model_in_overrides_and_results():
    a = parser("doc").parse_args(["--set", "train.steps=3", "--model", "models/qwen2-25m"])
    assert a.config == "configs/demo/stage1.yaml"
    assert model_sets(a) == ["train.steps=3", "model.name_or_path=models/qwen2-25m"]
    assert result_tag("memory", a) == "memory-qwen2-25m"
    plain = parser("doc").parse_args([])
    assert (model_sets(plain), result_tag("memory", plain)) == ([], "memory")


def test_median_after_warmup_drops_warmup_and_none():
    assert median_after_warmup([100.0, 1.0, None, 3.0, 2.0], 1) == 2.0
    assert median_after_warmup([5.0], 1) is None


def test_table_formats_floats_and_missing():
    out = table(["a", "b"], [["x", 1.23456], [2, None]]).splitlines()
    assert out == ["| a | b |", "| --- | --- |", "| x | 1.235 |", "| 2 | - |"]


def test_first_crossing_and_cumulative():
    pts = list(zip([10, 20, 30], cumulative([1.0, 2.0, 3.0]), [0.5, 0.71, 0.9], strict=True))
    assert first_crossing(pts, 0.7) == (20, 3.0, 0.71)
    assert first_crossing(pts, 0.95) is None


def test_learning_points_exclude_eval_and_startup():
    run = {"rows": [{"step": 1, "time/generate": 1.0, "time/reward": 0.0, "time/learner": 1.0,
                     "time/sync": 0.0},
                    {"step": 2, "time/eval": 5.0, "eval/accuracy": 0.6}],
           "wall": [60.0, 8.0]}  # step 1's interval includes start-up
    assert ours_points(run) == [(2, 5.0, 0.6)]
    trl = {"steps": [{"step": 1, "seconds": 2.0}, {"step": 2, "seconds": 3.0,
                                                   "eval/accuracy": 0.4}]}
    assert trl_points(trl) == [(2, 5.0, 0.4)]
    s = summary([(2, 5.0, 0.6), (4, 9.0, 0.8)], bar=0.7, steps=4)
    assert (s["reached"], s["step"], s["seconds"], s["best_accuracy"]) == (True, 4, 9.0, 0.8)
    assert summary([(2, 5.0, 0.6)], bar=0.7, steps=2)["reached"] is False


def test_role_of_names_processes_and_children():
    assert role_of(["python", "-m", "vllm.entrypoints.openai.api_server"], None) == "worker"
    assert role_of(["python", "-m", "trainer.train", "--run-dir", "x"], "accelerate launch") \
        == "learner rank"
    assert role_of(["/v/bin/accelerate", "launch", "-m", "trainer.train"], "launcher") \
        == "accelerate launch"
    assert role_of(["python", "-c", "spawn_main"], "worker") == "worker"
    assert role_of(["/usr/bin/tail", "-f"], None) == "tail"


def test_cut_keeps_first_stop_token():
    assert _cut([5, 6, 2, 0, 0], {2, 0}) == [5, 6, 2]
    assert _cut([5, 6, 7], {2}) == [5, 6, 7]


class FakeTask:
    """Scores a completion as its length; diagnostics count them."""

    def score_batch(self, samples, completions):
        assert all(len(g) <= 2 for g in completions)  # groups never exceed G
        return [[{"len": float(len(c)), "sample": float(s)} for c in g]
                for s, g in zip(samples, completions, strict=True)]

    def diagnostics(self, sample, completion):
        return {"accuracy": 1.0}

    def aggregate(self, diags):
        return {"n": float(len(diags))}


def test_trl_reward_regroups_contiguous_repeats_by_group_size():
    last = {}
    fn = reward_function(FakeTask(), samples=[10, 20], group_size=2, last=last)
    # the same prompt drawn twice in a row makes two groups, not one of four
    completions = [[{"role": "assistant", "content": t}] for t in ["a", "bb", "ccc", "d"]]
    out = fn(prompts=[None] * 4, completions=completions, sample_index=[0, 0, 0, 0])
    assert out == [11.0, 12.0, 13.0, 11.0]
    assert last == {"n": 4.0}


def test_decision_probe_learner_update_is_the_probes(warm_model, monkeypatch, tmp_path):
    """The real Learner.train_step on the probe's batch (forced reasoning, sampled lean,
    decision marks, KL 0, the anchor) moves the lean as the probe's own REINFORCE + anchor
    step does: same init, same draws, same change per count."""
    import json

    from benchmarks import decision_probe

    monkeypatch.setattr(decision_probe, "RESULTS", tmp_path)
    moves = {}
    for mode in ([], ["--learner"]):
        args = ["--model", str(warm_model), "--lr", "1e-2", "--steps", "3", "--every", "3",
                "--prompts", "4", "--group", "4", "--anchor", "1", "--seed", "1", "--val", "60",
                *mode]
        assert decision_probe.main(args) == 0
        rows = json.loads((tmp_path / "decision_probe.json").read_text())["rows"]
        moves[bool(mode)] = [after - before for before, after in zip(rows[0][1:5], rows[-1][1:5],
                                                                     strict=True)]
    probe, learner = moves[False], moves[True]
    assert max(map(abs, probe)) > 0.01, probe  # the update moved the lean
    for p, q in zip(probe, learner, strict=True):
        assert abs(p - q) < 0.1 * max(map(abs, probe)), (probe, learner)


def test_run_timed_reads_each_steps_wall_interval_from_its_metrics_line(tmp_path):
    """Our side's step time is the interval between metrics lines appearing (the run's own
    phase timings leave barriers and logging out)."""
    from benchmarks.common import run_timed

    run_dir = tmp_path / "run"
    script = ("import json, pathlib, time\n"
              f"d = pathlib.Path({str(run_dir)!r}); d.mkdir()\n"
              "for step in (1, 2, 3):\n"
              "    time.sleep(0.6)\n"
              "    with open(d / 'metrics.jsonl', 'a') as f:\n"
              "        f.write(json.dumps({'step': step}) + '\\n')\n")
    run = run_timed([sys.executable, "-c", script], run_dir, env={"STONK_X": "1"})
    assert run["exit_code"] == 0 and [r["step"] for r in run["rows"]] == [1, 2, 3]
    # each line is seen at most one poll (0.2 s) plus the machine's delay after it lands: on
    # a loaded machine one interval can shrink by that delay, but not the span of both,
    # which covers the 1.2 s the writer slept between its first and last line
    assert len(run["wall"]) == 3 and all(w > 0 for w in run["wall"])
    assert sum(run["wall"][1:]) >= 0.6
    assert (tmp_path / "run.log").is_file()


def test_hf_generate_samples_the_plain_softmax_despite_the_models_defaults(warm_model):
    """The embedded model ships Qwen2.5-Instruct's top_k 20 and repetition penalty; the
    baseline's generate settings must override them: each step's processed scores are the
    plain log-softmax of the model's logits (so sampling is from the learner's distribution)."""
    import torch
    from transformers import AutoModelForCausalLM

    from benchmarks.hf_generate import sampling_kwargs

    model = AutoModelForCausalLM.from_pretrained(warm_model, dtype=torch.float32).eval()
    prompt = torch.tensor([[1, 40, 41, 42, 43, 40, 41]])
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                             max_new_tokens=12, output_scores=True,
                             return_dict_in_generate=True, pad_token_id=0,
                             **sampling_kwargs(1.0))
        logits = model(out.sequences).logits[0, prompt.shape[1] - 1:-1]
    processed = torch.log_softmax(torch.stack(out.scores)[:, 0], -1)
    steps = len(out.scores)
    assert torch.allclose(processed, torch.log_softmax(logits[:steps], -1), atol=1e-4)


def test_reward_share_arms_alternate_and_only_the_reasoning_weights_change():
    from benchmarks.reward_share import ARMS, arm_order
    from trainer.config import load_config

    assert arm_order(0) == ["seed", "accuracy_only"] == arm_order(2)
    assert arm_order(1) == ["accuracy_only", "seed"]
    seed = load_config("configs/demo/stage1.yaml", ARMS["seed"]).reward.weights
    only = load_config("configs/demo/stage1.yaml", ARMS["accuracy_only"]).reward.weights
    assert seed["data_usage"] > 0 and seed["coherence"] > 0
    assert only["data_usage"] == only["coherence"] == 0
    assert {k: v for k, v in only.items() if k not in ("data_usage", "coherence")} == \
        {k: v for k, v in seed.items() if k not in ("data_usage", "coherence")}


def test_grpo_variants_reads_the_eval_curve_and_names_registered_variants(tmp_path):
    import json

    from benchmarks import grpo_variants
    from trainer.config import load_config

    rows = [{"step": 1, "rollout/filtered_groups": 2.0}, {"step": 2, "eval/accuracy": 0.5},
            {"step": 3}, {"step": 4, "eval/accuracy": 0.75, "rollout/filtered_groups": 1.0}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert grpo_variants.curve(tmp_path) == ([(2, 0.0, 0.5), (4, 0.0, 0.75)], 3.0)
    for arm, sets in grpo_variants.ARMS.items():  # each arm a valid change of the demo
        cfg = load_config("configs/demo/stage1.yaml", sets)
        assert cfg.train.policy_loss == arm.split("_")[0], arm


def test_robustness_reads_seed_ranges_and_judges_each_run_by_the_issues_bars():
    assert seeds_of("0-3,7") == [0, 1, 2, 3, 7] and seeds_of("5") == [5]
    good = {"of_bayes_rule": 0.96, "gate": True, "roc_auc": 0.88, "bayes_roc_auc": 0.9,
            "ece": 0.04}
    assert bars(good) == {"decision": True, "confidence": True}
    assert bars({**good, "gate": False})["decision"] is False
    assert bars({**good, "of_bayes_rule": 0.94})["decision"] is False
    assert bars({**good, "roc_auc": 0.86})["confidence"] is False  # 0.04 below the posterior
    assert bars({**good, "ece": 0.06})["confidence"] is False
    assert bars({"gate": True}) == {"decision": None, "confidence": None}
    assert bars({**good, "gate": None})["decision"] is True  # Stage II: no gate of its own
    runs = [{"accuracy": a} for a in (0.7, 0.9, 0.8)]
    assert [row[:2] for row in spread(runs)] == [["min", 0.7], ["median", 0.8], ["max", 0.9]]


def test_robustness_takes_stage1_runs_from_an_earlier_matrix(tmp_path, monkeypatch):
    import benchmarks.robustness as rob

    monkeypatch.setattr(rob, "RESULTS", tmp_path)
    (tmp_path / "m.json").write_text(json.dumps({"runs": [
        {"seed": 0, "exit_code": 0, "run": "a"}, {"seed": 1, "exit_code": 1, "run": "b"}]}))
    assert rob.stage1_runs("m") == {0: {"seed": 0, "exit_code": 0, "run": "a"}}  # failed: left
    with pytest.raises(SystemExit, match="--stage1-from nope: .*nope.json does not exist"):
        rob.stage1_runs("nope")


def test_run_figures_come_from_the_runs_test_evaluation_and_gate(tmp_path):
    from benchmarks.reward_share import test_figures

    assert test_figures(tmp_path) == {}  # no evaluation: nothing to report
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "test.json").write_text(json.dumps({"metrics": {
        "n": 8, "accuracy": 0.5, "format_valid": 1.0}}))
    assert test_figures(tmp_path)["gate"] is None  # a Stage II run: no gate.json
    metrics = {"n": 128, "accuracy": 0.78, "bayes_rule_accuracy": 0.8, "of_bayes_rule": 0.975,
               "format_valid": 1.0, "bayes_agreement": 0.93, "roc_auc": 0.8, "ece": 0.03,
               "same_samples": {"logistic": {"verdict": "better", "accuracy": 0.7}}}
    (tmp_path / "eval" / "test.json").write_text(json.dumps({"metrics": metrics}))
    (tmp_path / "gate.json").write_text(json.dumps({"passed": False}))
    got = test_figures(tmp_path)
    assert (got["n"], got["of_bayes_rule"], got["gate"], got["vs_logistic"],
            got["logistic_acc"], got["vs_trend5"]) == (128, 0.975, False, "better", 0.7, None)
