"""The shipped embedded models: their manifest, the check that a checkout holds them, rebuilds.

Owns ``models/embedded.json`` and the two folders it describes, ``models/tiny-qwen2`` (the
random-init Qwen2-architecture model, ``launch/embedded/tiny_model.py``) and ``models/tiny-qwen2-fmt``
(its format warm start, ``trainer/tasks/stock/warmstart.py``). Both are committed: training
them follows the CPU's kernels (an AVX-512 box and an AVX2 box gave different random inits
and different warm-start weights from the same seed), so a per-machine build made the demo's
result a property of the machine. Every machine now starts from the same bytes.

- ``check`` (``make embedded``, before the demo and the tests): every shipped file is there
  with the SHA-256 the manifest records, else one line naming the file and exit 2; where the
  sources a model was built from (its recipe) changed since, one note saying so: the shipped
  weights stay what every machine uses until someone rebuilds them on purpose.
- ``rebuild NAME`` (``make tiny-model``, ``make warmstart``): runs the model's recipe on this
  machine and records the new hashes, the recipe's hash, the command, the versions and the
  CPU in the manifest: a change to commit deliberately, with the demo's numbers re-measured.

Standard library only at import: the Makefile runs ``check`` before every demo and test.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "models" / "embedded.json"
# what the tokenizer and the warm start read: the builder, the prompt and answer text, the
# series and the bundled prices they are rendered from
TOKEN_TEXT = ("launch/embedded/tiny_model.py", "trainer/tasks/stock/answer.py",
              "trainer/tasks/stock/prompt.py", "trainer/tasks/stock/warm_answers.py",
              "trainer/tasks/stock/synthetic.py", "trainer/tasks/stock/task.py",
              "trainer/tasks/stock/series.py", "trainer/tasks/stock/sources.py",
              "trainer/tasks/stock/data.py", "data/bundled/ohlcv.csv.gz")


@dataclass(frozen=True)
class Embedded:
    """One shipped model: its folder under models/, the sources its build reads, and the
    command (run from the repository root with the venv's python) that builds it."""

    name: str
    recipe: tuple[str, ...]
    command: tuple[str, ...]

    @property
    def folder(self) -> Path:
        return REPO / "models" / self.name


MODELS = {m.name: m for m in (
    Embedded("tiny-qwen2", TOKEN_TEXT,
             ("-m", "launch.cli", "tiny-model", "--out", "models/tiny-qwen2")),
    # the warm start reads the built model too: a rebuilt tiny-qwen2 changes its recipe hash
    Embedded("tiny-qwen2-fmt", (*TOKEN_TEXT, "trainer/tasks/stock/warmstart.py",
                                "models/tiny-qwen2/model.safetensors"),
             ("-m", "launch.cli", "warmstart", "--base", "models/tiny-qwen2",
              "--out", "models/tiny-qwen2-fmt")),
)}


class EmbeddedError(Exception):
    """One line: which shipped file is missing or differs, and what to do."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def recipe_hash(model: Embedded) -> str:
    """One hash over the recipe's files (path and bytes) and the build command."""
    h = hashlib.sha256(" ".join(model.command).encode())
    for rel in model.recipe:
        h.update(rel.encode() + b"\0" + (REPO / rel).read_bytes())
    return h.hexdigest()


def read_manifest(path: Path = MANIFEST) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise EmbeddedError(f"{path.relative_to(REPO)}: cannot read the embedded models' "
                            f"manifest ({e}); `git checkout models/` restores it") from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise EmbeddedError(f"{path.relative_to(REPO)}: not a manifest (no 'models' object)")
    return data


def verify(model: Embedded, entry: dict) -> list[str]:
    """Raise on the first shipped file that is missing or differs; return notes (the recipe
    changed since the build)."""
    files = entry.get("files") or {}
    if not files:
        raise EmbeddedError(f"models/embedded.json: {model.name} lists no files")
    for rel, want in sorted(files.items()):
        path = model.folder / rel
        shown = path.relative_to(REPO)
        if not path.is_file():
            raise EmbeddedError(f"{shown} is missing: `git checkout models/` restores the "
                                f"shipped file")
        if sha256(path) != want:
            raise EmbeddedError(
                f"{shown} differs from the shipped one (sha256 in models/embedded.json): "
                f"`git checkout models/` restores it; `make {_target(model)}` rebuilds it on "
                f"purpose and records the new hash")
    if entry.get("recipe") != recipe_hash(model):
        return [f"note: models/{model.name} was built before its recipe last changed "
                f"({', '.join(model.recipe)}); every machine still uses the shipped weights. "
                f"`make {_target(model)}` rebuilds them on purpose."]
    return []


def _target(model: Embedded) -> str:
    return "tiny-model" if model.name == "tiny-qwen2" else "warmstart"


def check(manifest: Path = MANIFEST) -> list[str]:
    data = read_manifest(manifest)
    notes = []
    for name, model in MODELS.items():
        if name not in data["models"]:
            raise EmbeddedError(f"models/embedded.json: no entry for {name}")
        notes += verify(model, data["models"][name])
    return notes


def cpu_summary() -> str:
    """The CPU model and the vector extensions that change float kernels."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines()
                 if ln.startswith("model name")), platform.machine())
    flags = set(next((ln.split(":", 1)[1].split() for ln in info.splitlines()
                      if ln.startswith("flags")), []))
    return f"{name} ({', '.join(f for f in ('avx2', 'avx512f', 'amx_bf16') if f in flags)})"


def record(model: Embedded, manifest: Path = MANIFEST) -> dict:
    """Write ``model``'s entry from the files now in its folder."""
    import importlib.metadata as md

    files = {p.relative_to(model.folder).as_posix(): sha256(p)
             for p in sorted(model.folder.rglob("*")) if p.is_file()}
    entry = {"files": files, "recipe": recipe_hash(model),
             "command": "python " + " ".join(model.command),
             "built_on": cpu_summary(),
             "versions": {p: md.version(p) for p in ("torch", "transformers", "tokenizers")}}
    data = read_manifest(manifest) if manifest.is_file() else {"models": {}}
    data["models"][model.name] = entry
    manifest.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return entry


def rebuild(model: Embedded) -> None:
    """Build ``model`` on this machine from its recipe and record it."""
    import shutil

    if model.folder.exists():
        shutil.rmtree(model.folder)  # no stale file may survive into the manifest
    done = subprocess.run([sys.executable, *model.command], cwd=REPO, check=False)
    if done.returncode:
        raise EmbeddedError(f"building {model.name} failed (exit {done.returncode})")
    entry = record(model)
    size = sum((model.folder / f).stat().st_size for f in entry["files"])
    print(f"embedded: rebuilt models/{model.name} ({size / 2**20:.1f} MiB) on "
          f"{entry['built_on']} and recorded it in models/embedded.json; commit both, and "
          f"re-measure the demo (make bench-robustness, BENCHMARKS section 12) and re-record "
          f"tests/trainer/recipe_replay/ (its README)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launch.embedded.manifest",
                                description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="the shipped embedded models are in place, unchanged")
    b = sub.add_parser("rebuild", help="build one on this machine and record it")
    b.add_argument("name", choices=sorted(MODELS))
    a = p.parse_args(argv)
    try:
        if a.command == "check":
            for note in check():
                print(note)
        else:
            rebuild(MODELS[a.name])
    except EmbeddedError as e:
        print(f"embedded: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
