"""The shipped embedded models (launch/embedded/manifest.py, models/embedded.json): a checkout holds
exactly the recorded bytes, a changed or missing file is one line naming it, a changed recipe
is a note, and a rebuild records what it built."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys

import pytest

from launch.embedded import manifest as embedded
from launch.embedded.manifest import EmbeddedError
from tests.conftest import REPO


def test_the_checkout_holds_the_shipped_weights_byte_for_byte():
    """Every file the manifest lists, hashed here independently: a model rebuilt on this
    machine (or a half-copied checkout) fails this test until its manifest is recorded."""
    manifest = json.loads((REPO / "models" / "embedded.json").read_text())["models"]
    assert set(manifest) == {"tiny-qwen2", "tiny-qwen2-fmt"}
    for name, entry in manifest.items():
        assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(entry["files"])
        for rel, want in entry["files"].items():
            got = hashlib.sha256((REPO / "models" / name / rel).read_bytes()).hexdigest()
            assert got == want, f"models/{name}/{rel}"
    # and the folders hold nothing the manifest does not (an extra file would be unshipped)
    for name, entry in manifest.items():
        held = {p.relative_to(REPO / "models" / name).as_posix()
                for p in (REPO / "models" / name).rglob("*") if p.is_file()}
        assert held == set(entry["files"]), name


def test_the_shipped_files_are_tracked_by_git():
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout (an unpacked archive)")
    listed = subprocess.run(["git", "ls-files", "models"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout.split()
    manifest = json.loads((REPO / "models" / "embedded.json").read_text())["models"]
    want = {f"models/{n}/{f}" for n, e in manifest.items() for f in e["files"]}
    assert want | {"models/embedded.json"} <= set(listed)


@pytest.fixture
def shipped_copy(tmp_path, monkeypatch):
    """The manifest and the two folders copied, with embedded.REPO pointing there."""
    shipped = ("models/embedded.json", *(f"models/{n}" for n in embedded.MODELS))
    for rel in (*shipped, *sorted({r for m in embedded.MODELS.values() for r in m.recipe
                                   if not r.startswith("models/")})):
        src, dst = REPO / rel, tmp_path / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    monkeypatch.setattr(embedded, "REPO", tmp_path)
    return tmp_path


def test_check_passes_on_the_shipped_files_and_names_a_changed_one(shipped_copy):
    manifest = shipped_copy / "models" / "embedded.json"
    assert embedded.check(manifest) == []
    weights = shipped_copy / "models" / "tiny-qwen2-fmt" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    weights.write_bytes(bytes(data))
    with pytest.raises(EmbeddedError, match=r"^models/tiny-qwen2-fmt/model.safetensors differs "
                                            r"from the shipped one .*git checkout models/"):
        embedded.check(manifest)
    weights.unlink()
    with pytest.raises(EmbeddedError, match=r"model.safetensors is missing"):
        embedded.check(manifest)


def test_a_changed_recipe_is_a_note_and_the_weights_stay(shipped_copy):
    prompt = shipped_copy / "trainer" / "tasks" / "stock" / "prompt.py"
    prompt.write_text(prompt.read_text() + "\n# changed\n")
    notes = embedded.check(shipped_copy / "models" / "embedded.json")
    assert len(notes) == 2 and all("built before its recipe last changed" in n for n in notes)
    assert "make tiny-model" in notes[0] and "make warmstart" in notes[1]


def test_a_broken_manifest_is_one_line(shipped_copy):
    manifest = shipped_copy / "models" / "embedded.json"
    manifest.write_text("{")
    with pytest.raises(EmbeddedError, match="cannot read the embedded models' manifest"):
        embedded.check(manifest)
    manifest.write_text(json.dumps({"models": {"tiny-qwen2": {"files": {}}}}))
    with pytest.raises(EmbeddedError, match="tiny-qwen2 lists no files"):
        embedded.check(manifest)


def test_record_lists_what_the_folder_holds_with_the_machine(shipped_copy):
    model = embedded.MODELS["tiny-qwen2"]
    (model.folder / "extra.txt").write_text("x")
    manifest = shipped_copy / "models" / "embedded.json"
    entry = embedded.record(model, manifest)
    assert entry["files"]["extra.txt"] == hashlib.sha256(b"x").hexdigest()
    assert entry["recipe"] == embedded.recipe_hash(model) and entry["versions"]["torch"]
    assert json.loads(manifest.read_text())["models"]["tiny-qwen2"] == entry
    assert embedded.check(manifest) == []


def test_make_embedded_is_quiet_when_everything_is_shipped():
    done = subprocess.run([sys.executable, "-m", "launch.embedded.manifest", "check"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("", "")  # no recipe note either
