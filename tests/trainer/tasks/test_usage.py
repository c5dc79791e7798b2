"""How each task presents itself outside training (trainer/tasks/usage.py), reached by the
launcher through the registry: `stonk serve`'s example request, `stonk data`'s summary, the
exported card's lines, `stonk eval`'s notes, and whether `stonk predict` applies."""

from __future__ import annotations

from launch.offline.export import model_card
from launch.offline.serve import example_request
from tests.conftest import REPO
from trainer.config import load_config
from trainer.tasks import build_task
from trainer.tasks.registry import task_usage

STOCK = REPO / "configs/demo/stage1.yaml"
PROMPTS = REPO / "configs/demo/prompts.yaml"


def _content(messages, role):
    return next(m["content"] for m in messages if m["role"] == role)


def test_the_stock_example_request_is_shaped_like_a_training_prompt():
    cfg = load_config(STOCK)
    train = build_task(cfg).split("train")[0].messages
    ask = example_request(cfg, "my-adapter")
    assert ask["model"] == "my-adapter" and ask["temperature"] == 0.0
    # the same system prompt as training, and a window of the run's length
    assert _content(ask["messages"], "system") == _content(train, "system")
    user, trained = _content(ask["messages"], "user"), _content(train, "user")
    assert [ln.count("%") for ln in user.splitlines()] == \
        [ln.count("%") for ln in trained.splitlines()]


def test_another_task_serves_its_first_test_prompt_and_lists_its_rewards():
    cfg = load_config(PROMPTS)
    task = build_task(cfg)
    usage = task_usage(cfg)
    assert type(usage).__name__ == "TaskUsage" and not usage.reads_prices
    assert example_request(cfg, "m")["messages"] == task.split("test")[0].messages
    summary = usage.data_summary()
    assert str(task.describe()[next(iter(task.describe()))]) in summary
    assert task.split("train")[0].messages[0]["content"] in summary
    card = model_card(cfg, None, REPO / "adapter", "Qwen/Qwen2.5-1.5B-Instruct")
    for fn in cfg.reward.functions:
        assert f"`{fn}`" in card
    assert "finance" not in card and "investment" not in card
    assert usage.eval_notes() == []


def test_the_stock_card_and_notes_say_what_the_stock_task_is():
    cfg = load_config(STOCK)
    usage = task_usage(cfg)
    assert usage.reads_prices
    card = model_card(cfg, None, REPO / "adapter", "Qwen/Qwen2.5-1.5B-Instruct")
    assert "tags: [grpo, lora, finance, stonk-trainer]" in card
    assert f"last {cfg.data.window} daily closes" in card
    assert "Not investment advice" in card
    assert usage.eval_notes() == [f"data source: {cfg.data.source}"]
