"""RolloutClient: grouped generation and adapter publishing over the workers' HTTP API.

The narrow interface the learner uses: ``generate`` (G completions per token-id prompt),
``sync`` (every live worker serves adapter version k, loading it where needed), ``health``.
Prompts are spread round-robin over the live workers and sent concurrently. Only public
endpoints are used: ``/v1/completions``, ``/v1/load_lora_adapter``, ``/v1/models``,
``/health``.

Faults. Every call has a timeout. A request that fails for a worker-side reason (connection
refused or reset, timeout, HTTP 5xx) marks that worker down for this client and is retried
on another live worker, up to ``retries`` times; with per-request seeds the retry samples the
same completions. ``sync`` (called between steps) health-checks every worker: a down worker
that answers again (the launcher's supervisor restarted it) is loaded with the current
adapter, verified, and used again. When no worker is live the client waits up to
``wait_for_workers_s`` for one to come back, and gives up at once when the supervisor's status
file says every worker failed for good. Adapters are only loaded from ``adapter_root`` (the
run's adapter store) when one is given.
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from rollout.server import WorkerError

# Sampling fields the learner's math depends on, stated in every request besides temperature
# and top_p: the learner scores the plain softmax at the rollout temperature, so nothing may
# truncate or reshape what the workers sample from. A field a request leaves out, vLLM fills
# from the model's generation_config.json (Qwen2.5-Instruct: top_k 20, top_p 0.8,
# temperature 0.7, repetition penalty 1.1); the workers also start with
# ``--generation-config vllm`` (rollout/server.py), so neither path lets them in.
PLAIN_SAMPLING = {"top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0,
                  "presence_penalty": 0.0, "frequency_penalty": 0.0}


REFUSALS = 3  # rounds (2 s apart) of every worker refusing the adapter before stopping


def sampling_fields(temperature: float, top_p: float) -> dict[str, float]:
    """Every sampling field of a completion request: temperature 0 is greedy decoding."""
    return {"temperature": temperature, "top_p": top_p, **PLAIN_SAMPLING}


class WorkerUnavailable(WorkerError):
    """The worker did not answer (refused, reset, timed out) or failed server-side (5xx)."""


class NoWorkersError(WorkerError):
    """No worker is live and none came back in time (or the supervisor gave up on all)."""


@dataclass
class Completion:
    """One sampled completion. token_ids/logprobs have equal length (the sampled tokens)."""

    token_ids: list[int]
    logprobs: list[float]
    text: str
    finish_reason: str
    adapter_version: int
    worker: str


class RolloutClient:
    def __init__(self, urls: list[str], timeout: float = 300.0, max_concurrency: int = 64,
                 api_key: str | None = None, adapter_name: str = "policy", retries: int = 0,
                 adapter_root: str | Path | None = None, status_path: str | Path | None = None,
                 wait_for_workers_s: float = 0.0, health_timeout: float = 10.0):
        if not urls:
            raise ValueError("RolloutClient needs at least one worker URL")
        self.urls = list(urls)
        self.timeout = timeout
        self.max_concurrency = max_concurrency
        self.api_key = api_key
        self.adapter_name = adapter_name
        self.retries = retries
        self.adapter_root = Path(adapter_root).resolve() if adapter_root else None
        self.status_path = Path(status_path) if status_path else None
        self.wait_for_workers_s = wait_for_workers_s
        self.health_timeout = health_timeout
        self.version: int | None = None  # adapter version every live worker verifiably serves
        self.path: str | None = None  # ... and its folder
        self.down: set[str] = set()
        self.faults: Counter[str] = Counter()  # request_retries, worker_down, worker_back
        # healthy workers whose last load of the current adapter failed: url -> the error
        self.refused: dict[str, str] = {}
        self._lock = threading.Lock()
        self._revive_lock = threading.Lock()

    # ------------------------------------------------------------------ http
    def _request(self, url: str, path: str, body: dict | None = None,
                 timeout: float | None = None) -> dict | str:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{url}{path}", data=data, method="POST" if data else "GET")
        req.add_header("Content-Type", "application/json")
        if self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                raw = resp.read().decode()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:500]
            # 5xx: the server failed; 404: it does not serve our adapter (a restarted worker
            # before its adapter is loaded). Both are worth retrying elsewhere.
            kind = WorkerUnavailable if exc.code >= 500 or exc.code == 404 else WorkerError
            raise kind(f"{url}{path}: HTTP {exc.code}: {detail}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise WorkerUnavailable(f"{url}{path}: {exc}") from None
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw

    def _map(self, fn, items: list) -> list:
        with ThreadPoolExecutor(max_workers=max(1, min(len(items), self.max_concurrency))) as ex:
            return list(ex.map(fn, items))

    # ------------------------------------------------------------------ liveness
    def live(self) -> list[str]:
        with self._lock:
            return [u for u in self.urls if u not in self.down]

    def _mark_down(self, url: str, reason: str) -> None:
        with self._lock:
            if url in self.down:
                return
            self.down.add(url)
            self.faults["worker_down"] += 1
        print(f"[rollout] worker {url} is down ({reason[:200]}); using the others",
              file=sys.stderr, flush=True)

    def _healthy(self, url: str) -> bool:
        try:
            self._request(url, "/health", timeout=self.health_timeout)
            return True
        except WorkerError:
            return False

    def _supervisor_gave_up(self) -> bool:
        """True when the launcher's supervisor says every worker failed for good."""
        if self.status_path is None or not self.status_path.is_file():
            return False
        try:
            states = json.loads(self.status_path.read_text())["workers"]
        except (OSError, ValueError, KeyError):
            return False
        return all(states.get(u, {}).get("state") == "failed" for u in self.urls)

    def _revive(self, url: str) -> bool:
        """A healthy worker serving the current adapter (loaded here if needed) is live."""
        if not self._healthy(url):
            self.refused.pop(url, None)
            return False
        try:
            if self.path is not None and self.served_adapter_path(url) != self.path:
                self._load(url, self.path, self.version)
                if self.served_adapter_path(url) != self.path:
                    raise WorkerError(f"{url} does not list {self.path} after loading it")
        except WorkerError as exc:
            self.refused[url] = str(exc)
            return False
        with self._lock:
            self.refused.pop(url, None)
            back = url in self.down
            self.down.discard(url)
            if back:
                self.faults["worker_back"] += 1
        if back:
            print(f"[rollout] worker {url} is back, serving adapter v{self.version}",
                  file=sys.stderr, flush=True)
        return True

    def _await_live(self) -> list[str]:
        """Live workers, waiting up to ``wait_for_workers_s`` for one to come back. Workers
        that answer but refuse the current adapter ``REFUSALS`` rounds in a row are no
        restart away from serving it: that stops at once, with the worker's error."""
        with self._revive_lock:
            live = self.live()
            deadline = time.monotonic() + self.wait_for_workers_s
            refusals = 0
            while not live:
                for url in self.urls:
                    self._revive(url)
                live = self.live()
                if live:
                    break
                refusals = refusals + 1 if len(self.refused) == len(self.urls) else 0
                if refusals >= REFUSALS:
                    url, why = next(iter(self.refused.items()))
                    raise NoWorkersError(
                        f"every worker answers but none serves adapter v{self.version} "
                        f"({self.path}) after {refusals} tries; {url}: {why[:400]}")
                if self._supervisor_gave_up():
                    raise NoWorkersError(
                        f"all {len(self.urls)} worker(s) are gone and the launcher could not "
                        f"restart them (rollout.max_worker_restarts); see the worker logs")
                if time.monotonic() > deadline:
                    raise NoWorkersError(
                        f"no worker answered for {self.wait_for_workers_s:.0f}s: "
                        f"{', '.join(self.urls)}")
                time.sleep(2.0)
            return live

    # ------------------------------------------------------------------ api
    def health(self) -> dict[str, bool]:
        return dict(zip(self.urls, self._map(self._healthy, self.urls), strict=True))

    def wait_ready(self, timeout: float, poll: float = 1.0) -> bool:
        """Wait, quietly, until every worker answers /health or ``timeout`` passes (the
        launcher may start the learner while the workers still load); True when all answer.
        Nothing is marked down here: the first ``sync`` judges the workers."""
        deadline = time.monotonic() + timeout
        while not all(self.health().values()):
            if time.monotonic() > deadline:
                return False
            time.sleep(poll)
        return True

    def take_faults(self) -> dict[str, int]:
        """Fault counts since the last call: requests retried on another worker, workers
        marked down, workers back in use."""
        with self._lock:
            out = {k: self.faults.get(k, 0) for k in
                   ("request_retries", "worker_down", "worker_back")}
            self.faults.clear()
        return out

    def generate(self, prompts: list[list[int]], n: int, max_tokens: int,
                 temperature: float = 1.0, top_p: float = 1.0,
                 seed: int | None = None) -> list[list[Completion]]:
        """prompts: P token-id lists -> P groups of n Completions, under the current adapter."""
        if self.version is None:
            raise WorkerError("generate() before any adapter was published to the workers")
        version = self.version
        start = self._await_live()

        def body(i: int) -> dict:
            out = {"model": self.version_name(version), "prompt": prompts[i], "n": n,
                   "max_tokens": max_tokens, **sampling_fields(temperature, top_p),
                   "logprobs": 0, "return_token_ids": True, "skip_special_tokens": True}
            if seed is not None:
                out["seed"] = seed + i * n
            return out

        def one(i: int) -> list[Completion]:
            url = start[i % len(start)]
            for attempt in range(self.retries + 1):
                try:
                    return self._group(url, body(i), n, version)
                except WorkerUnavailable as exc:
                    self._mark_down(url, str(exc))
                    if attempt == self.retries:
                        raise WorkerError(f"prompt {i}: failed on {attempt + 1} attempt(s) "
                                          f"(rollout.request_retries={self.retries}): "
                                          f"{exc}") from None
                    with self._lock:
                        self.faults["request_retries"] += 1
                    live = self._await_live()
                    url = live[(i + attempt + 1) % len(live)]
            raise AssertionError("unreachable")  # pragma: no cover

        return self._map(one, list(range(len(prompts))))

    def _group(self, url: str, body: dict, n: int, version: int) -> list[Completion]:
        out = self._request(url, "/v1/completions", body)
        if out.get("model") != body["model"]:  # the adapter that served it, by its name
            raise WorkerError(f"{url}: asked adapter {body['model']}, the response was served "
                              f"by {out.get('model')!r}")
        choices = sorted(out["choices"], key=lambda c: c["index"])
        if len(choices) != n:
            raise WorkerError(f"{url}: asked for n={n} completions, got {len(choices)}")
        group = []
        for c in choices:
            ids = list(c["token_ids"])
            lps = [float(x) for x in c["logprobs"]["token_logprobs"]]
            if len(ids) != len(lps):
                raise WorkerError(f"{url}: {len(ids)} token ids but {len(lps)} logprobs")
            group.append(Completion(ids, lps, c["text"], c.get("finish_reason") or "",
                                    version, url))
        return group

    def version_name(self, version: int) -> str:
        """The name adapter ``version`` is loaded under: one per version, never in place,
        so a response names the version that served it and a worker that kept an older one
        cannot answer for the new name."""
        return f"{self.adapter_name}-v{version}"

    def _policy_cards(self, url: str) -> dict[str, str | None]:
        """This client's adapters the worker holds: name -> path."""
        models = self._request(url, "/v1/models", timeout=30)
        prefix = f"{self.adapter_name}-v"
        return {c["id"]: c.get("root") for c in models.get("data", [])
                if str(c.get("id", "")).startswith(prefix)}

    def served_adapter_path(self, url: str, version: int | None = None) -> str | None:
        """The path the worker serves adapter ``version`` (default: the current one) from,
        None when it does not hold that version."""
        version = self.version if version is None else version
        if version is None:
            return None
        return self._policy_cards(url).get(self.version_name(version))

    def _checked_path(self, path: str | Path) -> str:
        resolved = Path(path).resolve()
        if self.adapter_root is not None and not resolved.is_relative_to(self.adapter_root):
            raise WorkerError(f"refusing to load adapter {resolved}: it is not in the run's "
                              f"adapter store {self.adapter_root}")
        return str(resolved)

    def _unload(self, url: str, name: str) -> None:
        try:
            self._request(url, "/v1/unload_lora_adapter", {"lora_name": name})
        except WorkerError:  # already gone (404); a worker that is down fails verify next
            pass

    def _load(self, url: str, path: str, version: int) -> None:
        """Load ``version`` under its own name, read from disk afresh (a name the worker
        already holds is unloaded first: a resumed run may publish the same number again),
        then unload every other version. Called between steps, when no rank samples."""
        name = self.version_name(version)
        held = self._policy_cards(url)
        if name in held:
            self._unload(url, name)
        self._request(url, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": path})
        for other in held:
            if other != name:
                self._unload(url, other)

    def publish(self, version: int, path: str | Path) -> None:
        """Load adapter ``version`` from ``path`` on every worker, then verify."""
        path = self._checked_path(path)
        self._map(lambda url: self._load(url, path, version), self.urls)
        self.verify(version, path)

    def verify(self, version: int, path: str | Path) -> None:
        """Check that every worker serves ``version`` from ``path``; then rollouts from this
        client are recorded as produced by ``version``."""
        path = str(Path(path).resolve())
        served = self._map(lambda url: self.served_adapter_path(url, version), self.urls)
        wrong = [f"{u} serves {s}" for u, s in zip(self.urls, served, strict=True) if s != path]
        if wrong:
            raise WorkerError(f"adapter v{version} ({path}) not in place: " + "; ".join(wrong))
        self.version, self.path = version, path

    def sync(self, version: int, path: str | Path) -> list[str]:
        """Fault-tolerant publish and health check between steps: every worker that answers
        is made to serve ``path`` (loaded under the version's name where it does not) and
        verified; the others are marked down. Returns the live workers (at least one, waiting
        for a restart if none is live). Afterwards rollouts are recorded as ``version``."""
        self.path = self._checked_path(path)
        self.version = version
        revived = self._map(self._revive, self.urls)
        for url, ok in zip(self.urls, revived, strict=True):
            if not ok:
                self._mark_down(url, "no answer, or does not serve the current adapter")
        return self._await_live()
