"""Atomic, versioned adapter publishing."""

import pytest

from rollout.adapter_store import AdapterStore


def _write(payload: str):
    def write(d):
        (d / "adapter_model.safetensors").write_text(payload)
    return write


def test_publish_makes_complete_versions_visible(tmp_path):
    store = AdapterStore(tmp_path / "a")
    p0 = store.publish(0, _write("zero"))
    p1 = store.publish(1, _write("one"))
    assert store.versions() == [0, 1] and store.latest() == 1
    assert (p1 / "adapter_model.safetensors").read_text() == "one"
    assert (p0 / "stonk_version.json").is_file()
    with pytest.raises(FileExistsError):
        store.publish(1, _write("again"))


def test_failed_write_leaves_no_partial_version(tmp_path):
    store = AdapterStore(tmp_path / "a")
    store.publish(0, _write("zero"))

    def boom(d):
        (d / "adapter_model.safetensors").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        store.publish(1, boom)
    assert store.versions() == [0] and store.latest() == 0
    assert [p.name for p in (tmp_path / "a").iterdir() if p.name.startswith(".tmp")] == []


def test_prune_keeps_newest(tmp_path):
    store = AdapterStore(tmp_path / "a")
    for v in range(5):
        store.publish(v, _write(str(v)))
    assert store.prune(2, 4) == [0, 1, 2]
    assert store.versions() == [3, 4]


def test_prune_never_removes_the_version_just_published(tmp_path):
    """A store that still holds higher versions from an earlier attempt (v2, v3) and now
    publishes v0: v0 stays (keeping the highest numbers had removed it, and the worker that
    re-read it died on FileNotFoundError); the leftovers go."""
    store = AdapterStore(tmp_path / "a")
    for v in (2, 3):
        store.publish(v, _write(str(v)))
    store.publish(0, _write("new"))
    assert store.prune(3, 0) == [2, 3]
    assert store.versions() == [0]
    store.publish(1, _write("new1"))
    assert store.prune(3, 1) == [] and store.versions() == [0, 1]
