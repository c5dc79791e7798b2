"""Workers sample from exactly the distribution the learner scores: each completion request
(training rollouts, evaluation, predict: all go through ``RolloutClient.generate``) states
every sampling field vLLM would otherwise take from the model's generation_config.json, and
workers start with ``--generation-config vllm``. The behaviour of a real worker is checked in
tests/integration/test_rollout_worker.py; this file checks what we send, at a stand-in
HTTP endpoint that records the request bodies."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rollout.client import RolloutClient
from rollout.server import WorkerSpec

# What the learner's math assumes beyond temperature and top_p (trainer/learner.py scores the
# plain softmax at the rollout temperature): no truncation, no penalties.
NEUTRAL = {"top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0, "presence_penalty": 0.0,
           "frequency_penalty": 0.0}


@pytest.fixture
def recorder():
    bodies: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            bodies.append(body)
            choices = [{"index": i, "token_ids": [5], "text": "x", "finish_reason": "stop",
                        "logprobs": {"token_logprobs": [-0.5]}} for i in range(body["n"])]
            data = json.dumps({"model": body["model"], "choices": choices}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    client = RolloutClient([f"http://127.0.0.1:{server.server_address[1]}"], timeout=10)
    client.version = 0  # as after a publish
    yield client, bodies
    server.shutdown()


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.0, 1.0), (0.7, 0.9)],
                         ids=["rollout", "greedy-eval", "configured"])
def test_every_request_states_every_sampling_field(recorder, temperature, top_p):
    client, bodies = recorder
    groups = client.generate([[1, 2], [3]], n=2, max_tokens=4, temperature=temperature,
                             top_p=top_p, seed=11)
    assert [len(g) for g in groups] == [2, 2]
    assert len(bodies) == 2
    for body in bodies:
        assert body["temperature"] == temperature and body["top_p"] == top_p
        assert {k: body.get(k) for k in NEUTRAL} == NEUTRAL


def test_workers_ignore_the_models_generation_config():
    cmd = WorkerSpec(model="m", port=1).command()
    assert cmd[cmd.index("--generation-config") + 1] == "vllm"
