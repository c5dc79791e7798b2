"""Keep-alive connections against one connection per request, on a real worker (issue 21).

``RolloutClient`` opens a new HTTP connection for every request (``urllib``). The question is
whether a persistent pool per worker (HTTP/1.1 keep-alive) would make a training step
faster. One worker is started as the launcher starts it, serving a fresh policy adapter;
both clients talk to it, alternating in rounds:
- ``small``: ``--small`` sequential ``GET /v1/models`` (what verify and health checks send),
  milliseconds per request;
- ``sync``: ``RolloutClient.sync`` of the version already served (the health check and
  verify every step does between steps), milliseconds;
- ``step``: one rank's rollout, ``--prompts`` prompts x ``--n`` samples sent concurrently,
  seeded (both sides sample the same tokens), seconds.
The pooled side is :class:`PooledClient` below: the client with ``_request`` over
``http.client`` connections kept per worker (a connection the server closed while idle,
vLLM's ``VLLM_HTTP_TIMEOUT_KEEP_ALIVE`` is 5 s, is reopened once).

    .venv/bin/python benchmarks/keepalive.py --rounds 5
Writes ``benchmarks/results/keepalive[-<model>].json``.
"""

from __future__ import annotations

import http.client
import json
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, model_sets, parser, result_tag, save, table  # noqa: E402
from rollout.client import RolloutClient, WorkerUnavailable  # noqa: E402

STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


class PooledClient(RolloutClient):
    """The same client, its requests over connections kept open per worker."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._idle: dict[str, list[http.client.HTTPConnection]] = {}
        self._pool_lock = threading.Lock()

    def _take(self, url: str) -> tuple[http.client.HTTPConnection, bool]:
        with self._pool_lock:
            idle = self._idle.setdefault(url, [])
            if idle:
                return idle.pop(), True
        u = urllib.parse.urlsplit(url)
        return http.client.HTTPConnection(u.hostname, u.port, timeout=self.timeout), False

    def _request(self, url: str, path: str, body: dict | None = None,
                 timeout: float | None = None) -> dict | str:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        for _ in range(2):
            conn, reused = self._take(url)
            conn.timeout = timeout or self.timeout
            try:
                conn.request("POST" if data else "GET", path, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read().decode()
            except STALE as exc:
                conn.close()
                if reused:
                    continue  # the server closed it while idle: open a new one once
                raise WorkerUnavailable(f"{url}{path}: {exc}") from None
            except OSError as exc:
                conn.close()
                raise WorkerUnavailable(f"{url}{path}: {exc}") from None
            with self._pool_lock:
                self._idle[url].append(conn)
            if resp.status >= 400:
                raise WorkerUnavailable(f"{url}{path}: HTTP {resp.status}: {raw[:500]}")
            try:
                return json.loads(raw)
            except json.JSONDecodeError:
                return raw
        raise WorkerUnavailable(f"{url}{path}: connection closed twice")


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--small", type=int, default=100, help="GET /v1/models per round")
    p.add_argument("--prompts", type=int, default=4, help="one rank's prompts per step")
    p.add_argument("--n", type=int, default=8)
    a = p.parse_args()

    from benchmarks.serving import serving
    from trainer.config import load_config
    from trainer.policy import load_tokenizer
    from trainer.rollouts import encode_prompt
    from trainer.tasks import build_task

    sets = model_sets(a)
    cfg = load_config(REPO / a.config, sets)
    rc = cfg.rollout
    tokenizer = load_tokenizer(cfg)
    prompts = [encode_prompt(tokenizer, s) for s in build_task(cfg).split("train")[:a.prompts]]
    times: dict[str, dict[str, list[float]]] = {}
    tokens: dict[str, set[int]] = {}
    with tempfile.TemporaryDirectory() as tmp, serving(cfg, Path(tmp)) as (plain, store, _):
        pooled = PooledClient(plain.urls, timeout=rc.request_timeout_s,
                              max_concurrency=rc.max_concurrent_requests,
                              adapter_root=store.root)
        pooled.sync(0, store.path(0))
        sides = {"new connection per request (urllib)": plain, "keep-alive pool": pooled}
        for rnd in range(a.rounds + 1):  # round 0 warms both up and is dropped
            order = list(sides.items()) if rnd % 2 else list(sides.items())[::-1]
            for name, client in order:
                url = client.urls[0]
                t = time.perf_counter()
                for _ in range(a.small):
                    client._request(url, "/v1/models")
                small = (time.perf_counter() - t) / a.small * 1e3
                t = time.perf_counter()
                client.sync(0, store.path(0))
                sync = (time.perf_counter() - t) * 1e3
                t = time.perf_counter()
                groups = client.generate(prompts, n=a.n, max_tokens=rc.max_tokens,
                                         temperature=rc.temperature, top_p=rc.top_p, seed=1234)
                step = time.perf_counter() - t
                if rnd:
                    row = times.setdefault(name, {"small": [], "sync": [], "step": []})
                    row["small"].append(small)
                    row["sync"].append(sync)
                    row["step"].append(step)
                    tokens.setdefault(name, set()).add(
                        sum(len(c.token_ids) for g in groups for c in g))
                print(f"round {rnd} {name}: {small:.2f} ms/request, sync {sync:.1f} ms, "
                      f"step {step:.3f} s", flush=True)
    rows = [{"side": k, **{m: statistics.median(v) for m, v in t.items()},
             "step_tokens": sorted(tokens[k])} for k, t in times.items()]
    base = rows[0]
    print(f"\nKeep-alive ({cfg.model.name_or_path}, one worker; medians of {a.rounds} "
          f"alternating rounds; step = {a.prompts} prompts x {a.n} samples, seeded)")
    print(table(["side", "GET /v1/models ms", "sync ms", "step s", "step tokens",
                 "step vs per-request"],
                [[r["side"], r["small"], r["sync"], r["step"], r["step_tokens"],
                  f"{r['step'] / base['step']:.3f}x"] for r in rows]))
    save(result_tag("keepalive", a), {"config": a.config, "sets": sets, "rounds": a.rounds,
                                      "prompts": a.prompts, "n": a.n, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
