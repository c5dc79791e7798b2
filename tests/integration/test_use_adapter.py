"""A trained adapter used outside training, on the short demo's Stage I run: batch
`stonk predict` through one worker, `stonk serve` called with the `openai` client and stopped
with Ctrl-C, and `stonk export`'s merged model giving the served adapter's greedy answers in
plain transformers and plain vLLM."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from launch.run.runner import free_port
from tests.integration.helpers import REPO, demo_worker_env, processes_mentioning
from trainer.config import load_config
from trainer.tasks.stock.answer import parse_answer

pytestmark = pytest.mark.integration
DAYS = ["2024-02-01", "2024-02-02", "2024-02-05", "2024-02-06", "2024-02-07", "2024-02-08",
        "2024-02-09", "2024-02-12", "2024-02-13"]


def test_predict_writes_one_row_per_ticker_and_date(demo, tmp_path):
    prices = tmp_path / "prices"
    prices.mkdir()
    aaa = [100 * 1.01 ** i for i in range(len(DAYS))]
    bbb = [50 * 0.99 ** i * (1.03 if i % 3 == 0 else 1.0) for i in range(len(DAYS))]
    (prices / "aaa.csv").write_text("date,close\n" + "".join(
        f"{d},{c:.4f}\n" for d, c in zip(DAYS, aaa, strict=True)))
    (prices / "bbb.csv").write_text("Date;Price\n" + "".join(  # ';' and an alias column
        f"{d};{c:.4f}\n" for d, c in zip(DAYS, bbb, strict=True)))
    out = tmp_path / "p.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "launch.cli", "predict", "--run", str(demo[0] / "stage1"),
         "--prices", str(prices), "--dates", "all", "--out", str(out), "--log-dir",
         str(tmp_path / "logs")], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    window = load_config(demo[0] / "stage1" / "config.yaml").data.window
    ends = DAYS[window:]
    assert [(r["ticker"], r["date"]) for r in rows] == [(t, d) for t in ("AAA", "BBB")
                                                        for d in ends]
    for ticker, closes in (("AAA", aaa), ("BBB", bbb)):
        mine = [r for r in rows if r["ticker"] == ticker]
        assert [r["target_date"] for r in mine] == [*ends[1:], ""]
        want = ["UP" if b > a else "DOWN" for a, b in zip(closes[window:], closes[window + 1:],
                                                          strict=False)]
        assert [r["actual"] for r in mine] == [*want, ""]
    for r in rows:
        assert r["prompt"].count("\n2024-02-") == window  # the run's window, dated rows
        assert "nan" not in r["prompt"]
        ans = parse_answer(r["completion"])
        assert r["prediction"] == (ans.prediction or "")
        if ans.valid:
            p = ans.confidence if ans.prediction == "UP" else 1 - ans.confidence
            assert r["p_up"] == pytest.approx(p, abs=1e-6)
    assert sum(r["format_valid"] for r in rows) >= len(rows) - 1
    assert f"[predict] {len(rows)}/{len(rows)} answered" in proc.stdout


def test_predict_with_a_stage2_adapter_runs_on_its_merged_base(demo, tmp_path):
    """A Stage II run's adapter is served on the run's own merged Stage I model."""
    stage2 = demo[0] / "stage2"
    prices = tmp_path / "acme.csv"
    prices.write_text("date,close\n" + "".join(
        f"{d},{100 + (i % 3)}\n" for i, d in enumerate(DAYS)))
    out = tmp_path / "p.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "launch.cli", "predict", "--run", str(stage2), "--adapter",
         "latest", "--prices", str(prices), "--out", str(out), "--log-dir",
         str(tmp_path / "logs")], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"on base {(stage2 / 'base').resolve()}" in proc.stdout
    (row,) = list(csv.DictReader(open(out, newline="")))
    assert row["ticker"] == "ACME" and row["date"] == DAYS[-1] and row["target_date"] == ""
    assert row["prediction"] in ("UP", "DOWN")
    # Stage II reads a stated confidence against its training split's natural up ratio,
    # which training kept in data.json (odds times the prior's odds), as its evaluation does
    prior = json.loads((stage2 / "data.json").read_text())["confidence_prior_up"]
    assert prior != 0.5 and "P(UP) read against the training split's up ratio" in proc.stdout
    assert row["confidence"], row  # the demo's Stage II model states one
    c = float(row["confidence"])
    p = c if row["prediction"] == "UP" else 1 - c
    odds = p / (1 - p) * prior / (1 - prior)
    assert float(row["p_up"]) == pytest.approx(odds / (1 + odds), abs=1e-6)


def _wait_for_line(proc: subprocess.Popen, text: str, timeout: float) -> list[str]:
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"no {text!r} from the process:\n{''.join(lines)[-3000:]}")


@pytest.fixture(scope="module")
def served(demo, tmp_path_factory):
    """(url, request.json, the process) of `stonk serve` on the demo's Stage I run."""
    port = free_port(8000 + 421, "127.0.0.1", set())
    logs = tmp_path_factory.mktemp("serve")
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "launch.cli", "serve", "--run", str(demo[0] / "stage1"),
         "--port", str(port), "--log-dir", str(logs)], cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    try:
        lines = _wait_for_line(proc, "curl -s", 600)
        yield f"http://127.0.0.1:{port}", logs / "request.json", proc, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()


# bf16 keeps 8 bits of mantissa: the merged weights sit within 2^-9 (relative) of the float32
# sum, and through the embedded model's two layers that moved the served tokens' log-probs by
# at most 0.03 nats (seen on an AVX2 box; an AVX-512 one gave a near-tie's other greedy
# token). Whether the adapter was merged at all is checked on the weights, where a 2-step
# adapter already moves most entries by more than bf16's spacing.
BF16_NATS = 0.08
MERGE_ULPS = 2.0  # bf16(W) + bf16(delta) rounded: at most 1.5 spacings of max(|W|, |delta|)


def _bf16_spacing(x):
    """The distance between neighbouring bf16 numbers at |x| (8 significant bits)."""
    import torch

    return torch.exp2(torch.floor(torch.log2(x.abs().clamp(min=1e-30))) - 7)


def _assert_merged_is_base_plus_adapter(merged, base, adapter) -> None:
    """Each adapted weight of the bf16 merge is W + (alpha / r) B A within MERGE_ULPS bf16
    spacings, where the base alone would miss it in most entries; every other weight is
    the base's, rounded to bf16."""
    import torch
    from safetensors.torch import load_file

    got = load_file(str(merged / "model.safetensors"))
    want = load_file(str(base / "model.safetensors"))
    lora = load_file(str(adapter / "adapter_model.safetensors"))
    conf = json.loads((adapter / "adapter_config.json").read_text())
    scale = conf["lora_alpha"] / conf["r"]
    adapted = set()
    for key in (k for k in lora if ".lora_A." in k):
        name = key.replace("base_model.model.", "").replace(".lora_A.weight", ".weight")
        w, m = want[name].float(), got[name].float()
        delta = scale * lora[key.replace("lora_A", "lora_B")].float() @ lora[key].float()
        spacing = _bf16_spacing(torch.maximum(w.abs(), delta.abs()))
        assert ((m - (w + delta)).abs() / spacing).max() <= MERGE_ULPS, name
        unmerged = (w.to(torch.bfloat16).float() - (w + delta)).abs() / spacing
        assert (unmerged > MERGE_ULPS).float().mean() > 0.5, name  # the check can tell
        adapted.add(name)
    assert adapted and set(got) == set(want)
    for name in set(want) - adapted:
        assert torch.equal(got[name], want[name].to(torch.bfloat16)), name


def _served_tokens(url: str, model: str, messages: list[dict], max_tokens: int):
    """The greedy answer as (token ids, their log-probs, top-1 minus top-2 log-prob)."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key="none", timeout=120)
    r = client.chat.completions.create(
        model=model, messages=messages, temperature=0.0, max_tokens=max_tokens,
        logprobs=True, top_logprobs=2, extra_body={"return_tokens_as_token_ids": True})
    content = r.choices[0].logprobs.content
    ids = [int(t.token.split(":", 1)[1]) for t in content]
    margins = [t.top_logprobs[0].logprob - t.top_logprobs[1].logprob
               if len(t.top_logprobs) > 1 else float("inf") for t in content]
    return ids, [t.logprob for t in content], margins


def _teacher_forced(model, tok, messages: list[dict],
                    ids: list[int]) -> tuple[list[float], list[int]]:
    """Log-probs a model gives the tokens ``ids`` after the chat prompt, and its own top
    token at each of those positions (one forward)."""
    import torch

    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                     return_dict=True)["input_ids"]
    x = torch.tensor([list(prompt) + ids])
    with torch.no_grad():
        logits = model(input_ids=x).logits[0, len(prompt) - 1:-1].float()
    logps = torch.log_softmax(logits, -1)
    return (logps.gather(-1, torch.tensor(ids)[:, None])[:, 0].tolist(),
            logps.argmax(-1).tolist())


def _agree_until_a_near_tie(got: list[int], want: list[int], margins: list[float]) -> None:
    """Greedy answers from two precisions agree token for token, unless they part where the
    float32 model's top two were within bf16's noise (after that they may differ freely)."""
    for i, (a, b) in enumerate(zip(got, want, strict=False)):
        if a != b:
            assert margins[i] < 2 * BF16_NATS, (i, margins[i], got, want)
            return
    assert len(got) == len(want), (got, want)


def test_export_gives_the_served_adapters_greedy_answers(demo, served, tmp_path):
    """The merged bf16 folder scores the served adapter's greedy answers as the adapter does
    (teacher-forced through plain transformers, within bf16's tolerance), and plain vLLM on
    it answers the same, token for token, up to a near-tie of the float32 model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.tasks.stock.task import StockTask

    run = demo[0] / "stage1"
    url = served[0]
    cfg = load_config(run / "config.yaml")
    samples = StockTask(cfg.data, cfg.reward).split("test")[:3]
    n = cfg.rollout.max_tokens
    want = [_served_tokens(url, "stonk", s.messages, n) for s in samples]

    out = tmp_path / "export"
    proc = subprocess.run([sys.executable, "-m", "launch.cli", "export", "--run", str(run),
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    card = (out / "merged" / "README.md").read_text()
    gate = json.loads((run / "gate.json").read_text())
    assert "not investment advice" in card.lower()
    assert f"promotion gate: {'passed' if gate['passed'] else 'failed'}" in card
    assert "majority" in card and "bayes_rule" in card  # the same-sample baselines
    gen = json.loads((out / "merged" / "generation_config.json").read_text())
    assert gen.get("repetition_penalty", 1.0) == 1.0 and gen.get("top_k", 0) == 0

    merged = out / "merged"
    tok = AutoTokenizer.from_pretrained(merged)
    model = AutoModelForCausalLM.from_pretrained(merged)
    assert model.dtype == torch.bfloat16
    adapter = (run / "checkpoints" / "best" / "adapter").resolve()
    _assert_merged_is_base_plus_adapter(merged, REPO / cfg.model.name_or_path, adapter)
    for s, (ids, logps, margins) in zip(samples, want, strict=True):
        scored, top = _teacher_forced(model, tok, s.messages, ids)
        gaps = [abs(a - b) for a, b in zip(scored, logps, strict=True)]
        assert max(gaps) < BF16_NATS, (max(gaps), s.messages[-1]["content"][-80:])
        # greedy in bf16 picks the served token wherever float32 was not near a tie
        assert all(t == i or m < 2 * BF16_NATS
                   for t, i, m in zip(top, ids, margins, strict=True)), (top, ids, margins)

    port = free_port(8000 + 431, "127.0.0.1", set())
    vllm = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(merged),
         "--port", str(port), "--max-model-len", "1024", "--gpu-memory-utilization",
         "0.15"], cwd=REPO,
        env={**os.environ, **demo_worker_env()}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        _wait_for_line(vllm, "Application startup complete", 600)
        plain = [_served_tokens(f"http://127.0.0.1:{port}", str(merged), s.messages, n)[0]
                 for s in samples]
    finally:
        os.killpg(vllm.pid, signal.SIGKILL)
        vllm.wait()
    for got, (ids, _, margins) in zip(plain, want, strict=True):
        _agree_until_a_near_tie(got, ids, margins)


def test_serve_answers_the_openai_client_and_stops_on_ctrl_c(served, demo):
    url, request, proc, printed = served
    adapter = (demo[0] / "stage1" / "checkpoints" / "best" / "adapter").resolve()
    assert "model 'stonk'" in printed and f"{url}/v1/chat/completions" in printed
    body = json.loads(request.read_text())
    assert body["messages"][0]["role"] == "system" and "Prediction: UP or DOWN" in \
        body["messages"][0]["content"]
    from openai import OpenAI

    answer = OpenAI(base_url=f"{url}/v1", api_key="none").chat.completions.create(**body)
    ans = parse_answer(answer.choices[0].message.content)
    assert ans.valid, answer.choices[0].message.content
    assert answer.model == "stonk"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 0
    assert "[serve] stopped" in proc.stdout.read()
    assert not processes_mentioning(f"stonk={adapter}"), "the server survived Ctrl-C"


def test_serve_stopped_while_loading_exits_cleanly(demo, tmp_path):
    """Ctrl-C before the server answers: the server's process group goes, exit 0."""
    adapter = (demo[0] / "stage1" / "checkpoints" / "best" / "adapter").resolve()
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "launch.cli", "serve", "--run", str(demo[0] / "stage1"),
         "--port", str(free_port(8000 + 441, "127.0.0.1", set())), "--log-dir",
         str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for_line(proc, "[serve] starting", 120)
        deadline = time.monotonic() + 60  # the vLLM process is up, not yet healthy
        while not processes_mentioning(f"stonk={adapter}") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert processes_mentioning(f"stonk={adapter}")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0
        assert "[serve] stopped" in proc.stdout.read()
        assert not processes_mentioning(f"stonk={adapter}"), "the server survived Ctrl-C"
    finally:
        if proc.poll() is None:
            proc.kill()
