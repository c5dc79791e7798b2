"""RolloutClient: grouped generation and adapter publishing over the workers' HTTP API.

The narrow interface the learner uses: ``generate`` (G completions per token-id prompt),
``publish`` (load adapter version k on every worker, in place, and verify), ``health``.
Prompts are spread round-robin over the workers and sent concurrently; every call has a
timeout. Only public endpoints are used: ``/v1/completions``, ``/v1/load_lora_adapter``,
``/v1/models``, ``/health``.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from rollout.server import WorkerError


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
                 api_key: str | None = None, adapter_name: str = "policy"):
        if not urls:
            raise ValueError("RolloutClient needs at least one worker URL")
        self.urls = list(urls)
        self.timeout = timeout
        self.max_concurrency = max_concurrency
        self.api_key = api_key
        self.adapter_name = adapter_name
        self.version: int | None = None  # adapter version every worker verifiably serves

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
            raise WorkerError(f"{url}{path}: HTTP {exc.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise WorkerError(f"{url}{path}: {exc}") from None
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw

    def _map(self, fn, items: list) -> list:
        with ThreadPoolExecutor(max_workers=max(1, min(len(items), self.max_concurrency))) as ex:
            return list(ex.map(fn, items))

    # ------------------------------------------------------------------ api
    def health(self) -> dict[str, bool]:
        def check(url: str) -> bool:
            try:
                self._request(url, "/health", timeout=10)
                return True
            except WorkerError:
                return False

        return dict(zip(self.urls, self._map(check, self.urls), strict=True))

    def generate(self, prompts: list[list[int]], n: int, max_tokens: int,
                 temperature: float = 1.0, top_p: float = 1.0,
                 seed: int | None = None) -> list[list[Completion]]:
        """prompts: P token-id lists -> P groups of n Completions, under the current adapter."""
        if self.version is None:
            raise WorkerError("generate() before any adapter was published to the workers")
        version = self.version

        def one(i: int) -> list[Completion]:
            url = self.urls[i % len(self.urls)]
            body = {
                "model": self.adapter_name, "prompt": prompts[i], "n": n,
                "max_tokens": max_tokens, "temperature": temperature, "top_p": top_p,
                "logprobs": 0, "return_token_ids": True, "skip_special_tokens": True,
            }
            if seed is not None:
                body["seed"] = seed + i * n
            out = self._request(url, "/v1/completions", body)
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

        return self._map(one, list(range(len(prompts))))

    def served_adapter_path(self, url: str) -> str | None:
        models = self._request(url, "/v1/models", timeout=30)
        for card in models.get("data", []):
            if card.get("id") == self.adapter_name:
                return card.get("root")
        return None

    def publish(self, version: int, path: str | Path) -> None:
        """Load adapter ``version`` from ``path`` on every worker in place, then verify."""
        path = str(Path(path).resolve())
        body = {"lora_name": self.adapter_name, "lora_path": path, "load_inplace": True}
        self._map(lambda url: self._request(url, "/v1/load_lora_adapter", body), self.urls)
        self.verify(version, path)

    def verify(self, version: int, path: str | Path) -> None:
        """Check that every worker reports ``path`` for the policy adapter; then rollouts
        from this client are recorded as produced by ``version``."""
        path = str(Path(path).resolve())
        served = self._map(self.served_adapter_path, self.urls)
        wrong = [f"{u} serves {s}" for u, s in zip(self.urls, served, strict=True) if s != path]
        if wrong:
            raise WorkerError(f"adapter v{version} ({path}) not in place: " + "; ".join(wrong))
        self.version = version
