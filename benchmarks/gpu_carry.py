"""Carry a wheel set to a GPU machine that takes at most 64 MiB of files per transfer, and run it.

Owns the four steps of issue 35's item 3 (docs/gpu.md, "Carrying vLLM to the GPU machine"):
- ``split SRC OUT``: here; every file of SRC cut into pieces of at most ``--piece-mib``, grouped
  into batch folders ``OUT/bNN`` of at most ``--batch-mib`` (one batch per transfer call),
  and ``OUT/manifest.json``: each original file's size and sha256, and its pieces' too.
- ``join MANIFEST PIECES DEST``: there; every file rebuilt from its pieces (found in PIECES or
  its batch folders) and checked against the manifest; one line names the first mismatch.
- ``install DEST``: there; ``--no-deps`` into ``.venv`` (made with ``--system-site-packages``
  so the image's torch, numpy and numba are used), refusing any change to those three; the
  project itself editable; the venv stamped as the gpu profile so ``make gpu-check`` installs
  nothing more.
- ``run MANIFEST PIECES DEST``: join, install, then ``make gpu-check``, as one command.

Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from launch.embedded.manifest import sha256  # noqa: E402  (standard library only, as this script)

MiB = 2**20
KEEP = ("torch", "numpy", "numba")  # the image's: an install that changes one is refused


class CarryError(Exception):
    """A one-line reason to stop (exit code 2)."""


def split(src: Path, out: Path, piece_mib: float = 48, batch_mib: float = 48) -> dict:
    """Pieces of every file of ``src`` in batch folders of ``out``, and the manifest."""
    files = sorted(p for p in src.iterdir() if p.is_file()) if src.is_dir() else []
    if not files:
        raise CarryError(f"{src}: no files to split")
    piece, batch_cap = int(piece_mib * MiB), int(batch_mib * MiB)
    if piece > batch_cap:
        raise CarryError(f"--piece-mib {piece_mib} is larger than --batch-mib {batch_mib}")
    out.mkdir(parents=True, exist_ok=True)
    batch, used, entries = 1, 0, []
    for path in files:
        entry = {"name": path.name, "size": path.stat().st_size, "sha256": sha256(path),
                 "pieces": []}
        with open(path, "rb") as f:
            index = 0
            while data := f.read(piece):
                if used + len(data) > batch_cap:  # this batch is full: the next transfer's
                    batch, used = batch + 1, 0
                name = f"{path.name}.part{index:03d}"
                folder = out / f"b{batch:02d}"
                folder.mkdir(exist_ok=True)
                (folder / name).write_bytes(data)
                entry["pieces"].append({"name": name, "batch": f"b{batch:02d}",
                                        "size": len(data),
                                        "sha256": hashlib.sha256(data).hexdigest()})
                used += len(data)
                index += 1
        if entry["size"] == 0:
            entry["pieces"] = []  # an empty file is rebuilt from nothing
        entries.append(entry)
    manifest = {"piece_mib": piece_mib, "batch_mib": batch_mib, "batches": batch,
                "total_bytes": sum(e["size"] for e in entries), "files": entries}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def find_piece(pieces: Path, piece: dict) -> Path:
    for where in (pieces / piece["batch"] / piece["name"], pieces / piece["name"]):
        if where.is_file():
            return where
    raise CarryError(f"piece {piece['name']} (batch {piece['batch']}) is missing from {pieces}")


def join(manifest_path: Path, pieces: Path, dest: Path) -> list[Path]:
    """Every file of the manifest rebuilt in ``dest`` and checked, piece by piece and whole."""
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as e:
        raise CarryError(f"{manifest_path}: cannot read the manifest ({e})") from None
    dest.mkdir(parents=True, exist_ok=True)
    done = []
    for entry in manifest["files"]:
        target = dest / entry["name"]
        if target.is_file() and target.stat().st_size == entry["size"] \
                and sha256(target) == entry["sha256"]:
            done.append(target)  # joined by an earlier call
            continue
        tmp = target.with_name(target.name + ".joining")
        try:
            with open(tmp, "wb") as f:
                for piece in entry["pieces"]:
                    data = find_piece(pieces, piece).read_bytes()
                    if len(data) != piece["size"] or \
                            hashlib.sha256(data).hexdigest() != piece["sha256"]:
                        raise CarryError(f"piece {piece['name']} differs from the manifest "
                                         f"(size or sha256): carry it again")
                    f.write(data)
        except CarryError:
            tmp.unlink()  # nothing half-joined stays
            raise
        if tmp.stat().st_size != entry["size"] or sha256(tmp) != entry["sha256"]:
            tmp.unlink()
            raise CarryError(f"{entry['name']}: the joined file differs from the manifest")
        tmp.replace(target)
        done.append(target)
    print(f"gpu-carry: {len(done)} files joined and verified in {dest} "
          f"({manifest['total_bytes'] / MiB:.0f} MiB)", flush=True)
    return done


def versions(python: str, names=KEEP) -> dict[str, str | None]:
    code = ("import importlib.metadata as m, json, sys\nout = {}\nfor n in sys.argv[1:]:\n"
            "    try: out[n] = m.version(n)\n    except m.PackageNotFoundError: out[n] = None\n"
            "print(json.dumps(out))")
    done = subprocess.run([python, "-c", code, *names], capture_output=True, text=True)
    if done.returncode:
        raise CarryError(f"{python} cannot read package versions: {done.stderr.strip()[-200:]}")
    return json.loads(done.stdout)


def install_commands(dest: Path, venv: Path, python: str = "python3") -> list[list[str]]:
    """The commands that install ``dest``'s wheels and sdists --no-deps into ``venv``."""
    wheels = sorted(str(p) for p in dest.glob("*.whl"))
    sdists = sorted(str(p) for p in dest.glob("*.tar.gz"))
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--no-index"]
    cmds = [] if (venv / "bin" / "python").exists() else [
        [python, "-m", "venv", "--system-site-packages", str(venv)]]
    if wheels:
        cmds.append([*pip, *wheels])
    if sdists:  # deepspeed: its build imports the image's torch
        cmds.append([*pip, "--no-build-isolation", *sdists])
    cmds.append([*pip, "--no-build-isolation", "-e", str(REPO)])
    return cmds


def install(dest: Path, venv: Path) -> None:
    if not any(dest.glob("*.whl")):
        raise CarryError(f"{dest}: no wheels to install (join first)")
    before = versions("python3")
    if before["torch"] is None:
        raise CarryError("the image's python3 has no torch: this carry is for a machine with it")
    for cmd in install_commands(dest, venv):
        print("gpu-carry:", " ".join(cmd[:8]), "..." if len(cmd) > 8 else "", flush=True)
        if subprocess.run(cmd).returncode:
            raise CarryError(f"`{' '.join(cmd[:8])} ...` failed (see above)")
    after = versions(str(venv / "bin" / "python"))
    changed = [f"{n} {before[n]} -> {after[n]}" for n in KEEP if before[n] != after[n]]
    if changed:
        raise CarryError(f"the install changed the image's {', '.join(changed)}")
    check = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import numpy, numba, vllm; print(numpy.__version__, "
                            "numba.__version__, vllm.__version__)"],
                           capture_output=True, text=True)
    print(f"gpu-carry: numpy, numba, vllm import: {check.stdout.strip() or check.stderr[-300:]}",
          flush=True)
    if check.returncode:  # a set that does not import is no gpu profile: say so, stamp nothing
        raise CarryError("the carried set does not import (above); add the missing wheels")
    sys.path.insert(0, str(REPO / "launch" / "install"))
    from setup_profile import write_stamp  # the venv is the gpu profile: make setup is a no-op

    write_stamp(venv, "gpu", done=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("split")
    s.add_argument("src", type=Path)
    s.add_argument("out", type=Path)
    s.add_argument("--piece-mib", type=float, default=48)
    s.add_argument("--batch-mib", type=float, default=48, help="what one transfer may carry")
    for name in ("join", "run"):
        j = sub.add_parser(name)
        j.add_argument("manifest", type=Path)
        j.add_argument("pieces", type=Path)
        j.add_argument("dest", type=Path)
        j.add_argument("--venv", type=Path, default=REPO / ".venv")
        j.add_argument("--args", default="", help="run: ARGS for make gpu-check")
    i = sub.add_parser("install")
    i.add_argument("dest", type=Path)
    i.add_argument("--venv", type=Path, default=REPO / ".venv")
    a = ap.parse_args(argv)
    try:
        if a.command == "split":
            m = split(a.src, a.out, a.piece_mib, a.batch_mib)
            print(f"gpu-carry: {len(m['files'])} files, {m['total_bytes'] / MiB:.0f} MiB in "
                  f"{m['batches']} batches of <= {a.batch_mib:g} MiB under {a.out}; "
                  f"manifest {a.out / 'manifest.json'}")
        elif a.command == "install":
            install(a.dest, a.venv)
        else:
            join(a.manifest, a.pieces, a.dest)
            if a.command == "run":
                install(a.dest, a.venv)
                cmd = ["make", "gpu-check", "PROFILE=gpu"] + ([f"ARGS={a.args}"] if a.args else [])
                print("gpu-carry:", " ".join(cmd), flush=True)
                return subprocess.run(cmd, cwd=REPO).returncode
    except CarryError as e:
        print(f"gpu-carry: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
