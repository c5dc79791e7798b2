"""The prompts task: any dataset with a prompt column, reward functions by import path with
TRL's signature, held-out splits, evaluation; and the config checks that name a bad setting."""

from __future__ import annotations

import json
import math

import pytest

from tests.conftest import REPO
from trainer.config import ConfigError, from_dict, load_config
from trainer.tasks import build_task
from trainer.tasks.hub import DataError
from trainer.tasks.prompts.arithmetic import close_answer, exact_answer, problems
from trainer.tasks.prompts.rewards import RewardFunctionError

DEMO = REPO / "configs/demo/prompts.yaml"


def _rows(n=20):
    return [{"question": f"q{i}?", "answer": i, "kind": "even" if i % 2 == 0 else "odd"}
            for i in range(n)]


def _config(dataset, *, functions, **data):
    return from_dict({"task": "prompts",
                      "data": {"dataset": str(dataset), "prompt_column": "question",
                               "val_size": 3, "test_size": 4, **data},
                      "reward": {"functions": functions}})


@pytest.fixture
def reward_file(tmp_path):
    """A user's own reward functions in a file of their own (TRL's signature)."""
    path = tmp_path / "my_rewards.py"
    path.write_text(
        "SEEN = []\n"
        "def says_answer(prompts, completions, answer, **kwargs):\n"
        "    SEEN.append({'prompts': prompts, 'completions': completions, 'answer': answer,\n"
        "                 **kwargs})\n"
        "    return [float(str(a) in str(c)) for c, a in zip(completions, answer)]\n"
        "def odd_only(prompts, completions, kind, **kwargs):\n"
        "    return [0.5 if k == 'odd' else None for k in kind]\n")
    return path


@pytest.mark.parametrize("suffix", ["jsonl", "csv", "parquet", "disk"])
def test_any_local_dataset_format_gives_disjoint_held_out_splits(tmp_path, reward_file, suffix):
    import datasets

    ds = datasets.Dataset.from_list(_rows())
    path = tmp_path / f"d.{suffix}"
    {"jsonl": lambda: ds.to_json(str(path)), "csv": lambda: ds.to_csv(str(path)),
     "parquet": lambda: ds.to_parquet(str(path)),
     "disk": lambda: ds.save_to_disk(str(path))}[suffix]()
    task = build_task(_config(path, functions=[f"{reward_file}:says_answer"]))
    ids = {name: [s.meta["columns"]["answer"] for s in task.split(name)]
           for name in ("train", "val", "test")}
    assert (len(ids["val"]), len(ids["test"]), len(ids["train"])) == (3, 4, 13)
    assert sorted(ids["train"] + ids["val"] + ids["test"]) == list(range(20))
    sample = task.split("train")[0]
    assert sample.messages == [{"role": "user", "content": sample.meta["prompt"]}]
    again = build_task(_config(path, functions=[f"{reward_file}:says_answer"]))
    assert [s.meta for s in again.split("val")] == [s.meta for s in task.split("val")]
    other = build_task(_config(path, functions=[f"{reward_file}:says_answer"], seed=1))
    assert [s.meta for s in other.split("val")] != [s.meta for s in task.split("val")]


def test_reward_functions_get_the_batch_and_every_other_column_by_name(tmp_path, reward_file):
    from trainer.tasks.prompts.rewards import load_function

    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    cfg = _config(path, functions=[f"{reward_file}:says_answer", f"{reward_file}:odd_only"],
                  system_prompt="Be brief.")
    cfg.reward.weights = {"says_answer": 2.0}
    task = build_task(cfg)
    a, b = task.split("train")[:2]
    assert a.messages[0] == {"role": "system", "content": "Be brief."}
    scored = task.score_batch([a, b], [[f"it is {a.meta['columns']['answer']}", "no"],
                                       ["x", "y"]])
    seen = load_function(f"{reward_file}:says_answer").__globals__["SEEN"][-1]
    assert seen["prompts"] == [a.meta["prompt"]] * 2 + [b.meta["prompt"]] * 2
    assert seen["completions"] == [f"it is {a.meta['columns']['answer']}", "no", "x", "y"]
    assert seen["answer"] == [a.meta["columns"]["answer"]] * 2 + [b.meta["columns"]["answer"]] * 2
    assert seen["kind"] == [a.meta["columns"]["kind"]] * 2 + [b.meta["columns"]["kind"]] * 2
    # weight 2 on says_answer; odd_only's None (an even row) counts 0, its 0.5 at weight 1
    odd = {s.id: 0.5 if s.meta["columns"]["kind"] == "odd" else 0.0 for s in (a, b)}
    assert scored[0][0] == {"says_answer": 2.0, "odd_only": odd[a.id]}
    assert scored[0][1]["says_answer"] == 0.0 and scored[1][0]["odd_only"] == odd[b.id]
    assert task.score(a, "nothing") == {"says_answer": 0.0, "odd_only": odd[a.id]}


def test_conversational_prompts_pass_through_and_completions_come_as_messages(tmp_path,
                                                                              reward_file):
    chat = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"question": chat, "answer": i, "kind": "odd"}) + "\n"
                            for i in range(12)))
    task = build_task(_config(path, functions=[f"{reward_file}:says_answer"]))
    sample = task.split("train")[0]
    assert sample.messages == chat
    task.score_batch([sample], [["the answer"]])
    from trainer.tasks.prompts.rewards import load_function

    seen = load_function(f"{reward_file}:says_answer").__globals__["SEEN"][-1]
    assert seen["prompts"] == [chat]
    assert seen["completions"] == [[{"role": "assistant", "content": "the answer"}]]


def test_a_broken_reward_function_is_named(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def short(prompts, completions, **kw):\n    return [1.0]\n"
                   "def nan(prompts, completions, **kw):\n    return [float('nan')] * len(completions)\n"
                   "def text(prompts, completions, **kw):\n    return ['high'] * len(completions)\n")
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    for name, said in (("short", "returned 1 values for 2 completions"),
                       ("nan", "must be finite"), ("text", "return a number or None")):
        task = build_task(_config(path, functions=[f"{bad}:{name}"]))
        with pytest.raises(RewardFunctionError, match=f"reward function {name} .*{said}"):
            task.score_batch(task.split("train")[:1], [["a", "b"]])


@pytest.mark.parametrize("sets, message", [
    (["reward.functions=[]"], r"reward\.functions: the prompts task needs at least one"),
    (["reward.functions=[nocolon]"], r"reward\.functions\[0\]: 'nocolon' is not"),
    (["reward.functions=[no/such/file.py:f]"], r"reward\.functions\[0\]: no file no/such/file\.py"),
    (["reward.functions=[json:no_such_function]"], r"reward\.functions\[0\]: json has no function"),
    (["reward.functions=[no_such_package_x:f]"], r"reward\.functions\[0\]: cannot import"),
    (["reward.weights.typo=1"], r"reward\.weights\.typo: no reward function of that name"),
    (["train.pg_tokens=decision"], r"train\.pg_tokens: 'decision' needs a task that marks"),
    (["train.anchor_coef=1"], r"train\.anchor_coef: > 0 needs a task that marks decisions"),
    (["eval.also_on=[bundled]"], r"eval\.also_on: the prompts task has no other data sources"),
    (["data.source=synthetic"], r"data\.source: unknown key; allowed keys here: dataset"),
    (["task=stocks"], r"task: 'stocks' is not a task; use one of stock, prompts"),
])
def test_bad_settings_are_named(sets, message):
    with pytest.raises(ConfigError, match=message):
        load_config(DEMO, sets)


def test_a_bad_dataset_is_a_data_error_naming_the_setting(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    with pytest.raises(DataError, match=r"no column 'prompt' \(data\.prompt_column\); columns: "
                                        r"question, answer, kind"):
        build_task(load_config(DEMO, [f"data.dataset={path}", "data.prompt_column=prompt"]))
    path.write_text("".join(json.dumps({"question": 3, "answer": 1}) + "\n" for _ in range(9)))
    with pytest.raises(DataError, match=r"row 0, column 'question'.*neither a string"):
        build_task(load_config(DEMO, [f"data.dataset={path}", "data.prompt_column=question"]))
    with pytest.raises(DataError, match=r"no training prompts left"):
        build_task(load_config(DEMO, [f"data.dataset={REPO / 'data/examples/arithmetic.jsonl'}",
                                      "data.val_size=300", "data.test_size=300"]))


def test_evaluation_reports_pass_rate_reward_and_each_function(tmp_path):
    task = build_task(load_config(DEMO, ["reward.pass_threshold=1.0"]))
    samples = task.split("test")[:3]
    answers = [s.meta["columns"]["answer"] for s in samples]
    texts = [f"It is {answers[0]}", f"It is {answers[1] + 1000}", "no idea"]
    records = task.eval_records(samples, texts)
    assert [r["passed"] for r in records] == [True, False, False]
    m = task.summarize(records)
    assert m["accuracy"] == pytest.approx(1 / 3)
    assert m["reward/exact_answer"] == pytest.approx(1 / 3)
    assert m["reward"] == pytest.approx((1.5 + records[1]["reward"]) / 3)
    report = task.write_report(tmp_path, {"test": {"metrics": m, "records": records}})
    assert "| accuracy | 0.3333 |" in report.read_text()
    assert json.loads((tmp_path / "metrics.json").read_text())["splits"]["test"]["n"] == 3


def test_arithmetic_rewards_read_the_last_integer():
    done = ["The sum is 40, no: 42", "about 40", "[-3]", "I cannot say"]
    assert exact_answer(None, done, [42, 42, -3, 7]) == [1.0, 0.0, 1.0, 0.0]
    # 0.5 x (1 - |written - answer| / (|answer| + 10)): 42 exact, 40 off by 2 of 52
    assert close_answer(None, done, [42, 42, -3, 7]) == pytest.approx(
        [0.5, 0.5 * (1 - 2 / 52), 0.5, 0.0])
    assert close_answer(None, ["1000"], [5]) == [0.0]  # far off: no credit, never negative
    conversational = [[{"role": "assistant", "content": "= 12"}]]
    assert exact_answer(None, conversational, [12]) == [1.0]


def test_the_shipped_example_is_what_its_generator_writes():
    shipped = [json.loads(x) for x in
               (REPO / "data/examples/arithmetic.jsonl").read_text().splitlines()]
    assert shipped == problems(600, 0)
    assert all(eval(r["prompt"].split("What is ")[1].split("?")[0]) == r["answer"]  # noqa: S307
               for r in shipped)
    assert not math.isnan(sum(r["answer"] for r in shipped))


def test_your_own_task_by_module_path(tmp_path, monkeypatch):
    """docs/tasks.md: a module that registers a task under its own path is a task name."""
    pkg = tmp_path / "mytasks"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "echo.py").write_text(
        "from dataclasses import dataclass\n"
        "from trainer.tasks.registry import TaskEntry, register_task\n"
        "@dataclass\n"
        "class EchoData:\n"
        "    word: str = 'hello'  # what to echo\n"
        "register_task(TaskEntry('mytasks.echo', {'data': EchoData}, build='mytasks.echo:make'))\n"
        "def make(cfg):\n"
        "    return cfg.data.word\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = from_dict({"task": "mytasks.echo", "data": {"word": "hi"}})
    assert type(cfg.data).__name__ == "EchoData" and build_task(cfg) == "hi"
    assert type(cfg.reward).__name__ == "RewardConfig"  # the generic section
    with pytest.raises(ConfigError, match=r"data\.words: unknown key; allowed keys here: word"):
        from_dict({"task": "mytasks.echo", "data": {"words": "hi"}})
    with pytest.raises(ConfigError, match=r"task: 'mytasks\.nope': cannot import"):
        from_dict({"task": "mytasks.nope"})
