"""``stonk serve``: a trained adapter behind vLLM's OpenAI-compatible server.

The server is the one training's workers run (``rollout/server.WorkerSpec``: the run's base
model, dtype, context length and device settings), with the adapter registered at start under
``--name`` (``--lora-modules``), so any OpenAI client calls it as that model. The adapter was
trained on chats that open with the task's system prompt; ``request.json`` beside the log
holds a ready request with it, and the printed ``curl`` and ``openai`` lines use it. Ctrl-C
(or SIGTERM) stops the server's whole process group; the command then exits 0.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import replace
from pathlib import Path

from trainer.config import ConfigError, StageConfig


def example_request(cfg: StageConfig, name: str) -> dict:
    """A chat completion request answered greedily, with the task's example prompt
    (``TaskUsage.example_messages``: e.g. the stock task's system prompt and a made-up window
    of the run's length)."""
    from trainer.tasks.registry import task_usage

    return {"model": name, "messages": task_usage(cfg).example_messages(),
            "temperature": 0.0, "max_tokens": cfg.rollout.max_tokens}


def client_lines(url: str, request_path: Path, name: str, key_env: str | None) -> str:
    auth = f" -H \"Authorization: Bearer ${key_env}\"" if key_env else ""
    key = f"os.environ[{key_env!r}]" if key_env else "'none'"
    return "\n".join([
        f"[serve] adapter served as model {name!r} at {url}/v1 (Ctrl-C stops it)",
        f"  curl -s {url}/v1/chat/completions -H 'Content-Type: application/json'{auth} "
        f"-d @{request_path}",
        "  python -c \"import json, os; from openai import OpenAI; "
        f"c = OpenAI(base_url='{url}/v1', api_key={key}); "
        f"r = c.chat.completions.create(**json.load(open('{request_path}'))); "
        "print(r.choices[0].message.content)\"",
    ])


def serve(cfg: StageConfig, adapter: Path, name: str, host: str, port: int,
          out_dir: Path) -> int:
    """Start the server, print how to call it, keep it up until Ctrl-C / SIGTERM (0) or
    until it dies (1, with its log's tail)."""
    from launch.offline.evaluate import offline_plan, offline_spec
    from launch.run.plan import LOOPBACK
    from rollout.server import StartAborted, WorkerError, WorkerProcess

    key_env = cfg.rollout.api_key_env
    key = os.environ.get(key_env) or None
    if host not in LOOPBACK and key is None:
        raise ConfigError(f"--host {host}: a server other hosts can reach needs an API key: "
                          f"export {key_env}=<secret> (rollout.api_key_env)")
    spec = replace(offline_spec(cfg, offline_plan(cfg), key, probe_ports=False), host=host,
                   port=port, served_name="base", lora_modules={name: str(adapter.resolve())},
                   runtime_lora=False)  # clients may not unload or swap the served adapter
    out_dir.mkdir(parents=True, exist_ok=True)
    request = out_dir / "request.json"
    request.write_text(json.dumps(example_request(cfg, name), indent=2) + "\n")
    worker = WorkerProcess(spec, out_dir / "server.log")
    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signum

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"[serve] starting vLLM on {cfg.model.name_or_path} with adapter {adapter}; "
              f"log {worker.log_path}", flush=True)
        worker.start()
        worker.wait_healthy(cfg.rollout.startup_timeout_s,
                            lambda: "stopped" if stop["signal"] else None)
        print(client_lines(spec.url, request, name,
                           key_env if key else None), flush=True)
        while stop["signal"] is None and worker.alive():
            time.sleep(0.5)
        if stop["signal"] is None:
            raise WorkerError(f"the server exited with code {worker.returncode}; last lines "
                              f"of {worker.log_path}:\n{worker.log_tail()}")
    except StartAborted:  # Ctrl-C while it loaded
        pass
    finally:
        worker.close()
        for s, handler in old.items():
            signal.signal(s, handler)
    print("[serve] stopped", flush=True)
    return 0
