"""The GPU machine's carry and the gpu profile's vLLM range: benchmarks/gpu_carry.py's split and
join on small files (pieces, batches, manifest, a corrupt or missing piece), its install
commands; launch/install/setup_profile.py's VLLM=X pins and steps; launch/install/gpu/wheels.py's minimal set
(the file each checked torch maps to, and its errors). Nothing is installed or downloaded."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest

from launch.install import setup_profile as sp
from launch.install.gpu import wheels as gw
from launch.install.setup_profile import SetupError

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = REPO / "pyproject.toml"
sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_carry as gc  # noqa: E402


def files(root: Path, sizes: dict[str, int]) -> Path:
    root.mkdir(parents=True)
    for name, size in sizes.items():
        (root / name).write_bytes(os.urandom(size))
    return root


def test_split_then_join_rebuilds_every_file(tmp_path):
    src = files(tmp_path / "src", {"a.whl": 2_500_000, "b.whl": 10, "c.tar.gz": 1_048_576,
                                   "empty.whl": 0})
    m = gc.split(src, tmp_path / "out", piece_mib=1, batch_mib=2)
    by = {e["name"]: e for e in m["files"]}
    assert [p["size"] for p in by["a.whl"]["pieces"]] == [1_048_576, 1_048_576, 402_848]
    assert by["c.tar.gz"]["pieces"][0]["size"] == 1_048_576 and by["empty.whl"]["pieces"] == []
    for folder in (tmp_path / "out").glob("b*"):  # no batch over what one transfer carries
        assert sum(p.stat().st_size for p in folder.iterdir()) <= 2 * gc.MiB
    assert m["batches"] == len(list((tmp_path / "out").glob("b*"))) == 2
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["files"][0]["sha256"] == hashlib.sha256(
        (src / "a.whl").read_bytes()).hexdigest()
    # there: every batch folder carried into one place, joined and checked
    joined = gc.join(tmp_path / "out" / "manifest.json", tmp_path / "out", tmp_path / "dest")
    assert sorted(p.name for p in joined) == sorted(by)
    for p in joined:
        assert p.read_bytes() == (src / p.name).read_bytes()
    assert gc.join(tmp_path / "out" / "manifest.json", tmp_path / "out", tmp_path / "dest")


def test_a_corrupt_or_missing_piece_is_one_line(tmp_path):
    src = files(tmp_path / "src", {"a.whl": 3000})
    gc.split(src, tmp_path / "out", piece_mib=0.001, batch_mib=0.002)
    manifest = tmp_path / "out" / "manifest.json"
    piece = next((tmp_path / "out").glob("b*/a.whl.part001"))
    piece.write_bytes(b"x" + piece.read_bytes()[1:])
    with pytest.raises(gc.CarryError, match="piece a.whl.part001 differs from the manifest"):
        gc.join(manifest, tmp_path / "out", tmp_path / "dest")
    piece.unlink()
    with pytest.raises(gc.CarryError, match=r"piece a.whl.part001 \(batch b\d+\) is missing"):
        gc.join(manifest, tmp_path / "out", tmp_path / "dest")
    assert not list((tmp_path / "dest").iterdir())  # nothing half-joined is left
    with pytest.raises(gc.CarryError, match="no files to split"):
        gc.split(tmp_path / "nothing", tmp_path / "o2")
    assert gc.main(["join", str(tmp_path / "none.json"), str(tmp_path), str(tmp_path)]) == 2


def test_install_is_no_deps_in_a_venv_that_sees_the_image(tmp_path):
    dest = files(tmp_path / "d", {"vllm-0.26.0-x.whl": 1, "deepspeed-0.19.8.tar.gz": 1})
    cmds = gc.install_commands(dest, tmp_path / "venv")
    assert cmds[0][1:] == ["-m", "venv", "--system-site-packages", str(tmp_path / "venv")]
    assert all("--no-deps" in c and "--no-index" in c for c in cmds[1:])
    assert cmds[2][-2:] == ["--no-build-isolation", str(dest / "deepspeed-0.19.8.tar.gz")]
    assert cmds[-1][-3:] == ["--no-build-isolation", "-e", str(gc.REPO)]


# ---- the gpu profile's vLLM range (launch/install/setup_profile.py)
def test_vllm_picks_its_own_torch_and_the_extra_stays_the_default():
    extra = sp.gpu_pins(PYPROJECT)
    assert sp.pin(extra, "vllm", "gpu") == max(sp.VLLM_RANGE, key=lambda v: v.split("."))
    old = sp.gpu_pins(PYPROJECT, "0.26.0")
    assert sp.pin(old, "vllm", "x") == "0.26.0" and sp.pin(old, "torch", "x") == "2.11.0"
    assert sp.pin(old, "flashinfer-python", "x") == "0.6.14"
    assert sp.pin(old, "deepspeed", "x") == sp.pin(extra, "deepspeed", "x")
    with pytest.raises(SetupError, match=r"VLLM=0.30.0: not a checked release \(checked: "):
        sp.gpu_pins(PYPROJECT, "0.30.0")


def test_install_steps_with_vllm_state_its_pins(tmp_path, capsys):
    venv = tmp_path / ".venv"
    steps = [s.argv for s in sp.install_steps("gpu", venv, PYPROJECT, vllm="0.26.0")]
    assert steps[-2][-1] == "torch==2.11.0"
    i = steps[-1].index("-e")
    assert steps[-1][i + 1] == ".[dev]" and "vllm==0.26.0" in steps[-1][i + 2:]
    default = [s.argv for s in sp.install_steps("gpu", venv, PYPROJECT)]
    assert default[-1][-2:] == ["-e", ".[gpu,dev]"]
    sp.install("cpu", "PROFILE=cpu", venv, PYPROJECT, None, True, vllm="0.26.0")
    out = capsys.readouterr().out
    assert "VLLM=0.26.0 is for the gpu profile" in out and "vllm==0.26.0" not in out


def test_gpu_requirements_follow_vllm(tmp_path):
    import io
    import tarfile

    info = b"Metadata-Version: 2.4\nName: deepspeed\nVersion: 0.19.8\nRequires-Dist: hjson\n\n"
    sdist = tmp_path / "deepspeed-0.19.8.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        member = tarfile.TarInfo("deepspeed-0.19.8/PKG-INFO")
        member.size = len(info)
        tar.addfile(member, io.BytesIO(info))
    reqs = gw.gpu_requirements(PYPROJECT, sdist, "0.26.0")
    assert "vllm==0.26.0" in reqs and "torch==2.11.0" in reqs


# ---- the minimal worker set (launch/install/gpu/)
def test_each_minimal_set_is_exact_pins_for_its_torch(tmp_path):
    path = gw.min_file(PYPROJECT, "2.11.0")
    assert path.name == "vllm-0.26.0-min.txt"
    pins = [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
    assert "vllm==0.26.0" in pins and all("==" in p for p in pins)
    names = {sp.req_name(p) for p in pins}
    assert not names & {"torch", "numpy", "numba", "torchvision", "torchaudio", "torchcodec"}
    with pytest.raises(SetupError, match="TORCH=2.99.0: no minimal wheel set for it"):
        gw.min_file(PYPROJECT, "2.99.0")
    bad = tmp_path / "bad.txt"
    bad.write_text("vllm>=0.26\n")
    with pytest.raises(SetupError, match="'vllm>=0.26' is not an exact pin"):
        gw.download_listed(tmp_path, bad, "3.12", tmp_path / "w")
