"""`make setup`'s installer (launch/install/setup_profile.py): uv by default, bootstrapped by pip and
given pip's own index settings (uv reads no pip.conf), pip where uv cannot be installed, for
offline WHEELS installs and with INSTALLER=pip. pip and uv are fake scripts that log their
arguments; the real install runs in every fresh clone's `make setup` (CI starts from one).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from launch.install import setup_profile as sp
from launch.install.setup_profile import SetupError

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = REPO / "pyproject.toml"
LOCK = str(REPO / "locks" / "cpu.txt")


def fake_exe(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def fake_venv(root: Path, pip_fails_on: str | None = None) -> Path:
    """A .venv whose pip and uv log each call to pip.log / uv.log (uv with the certificate
    bundle it was given), pip failing on ``pip_fails_on``."""
    venv = root / ".venv"
    fake_exe(venv / "bin" / "python", "exit 0")
    fail = f'case "$*" in *{pip_fails_on}*) exit 1;; esac' if pip_fails_on else ""
    fake_exe(venv / "bin" / "pip", f'echo "$*" >> "{root}/pip.log"\n{fail}\nexit 0')
    fake_exe(venv / "bin" / "uv", f'echo "$SSL_CERT_FILE $*" >> "{root}/uv.log"\nexit 0')
    return venv


SETTINGS = {"extra-index-url": ["file:///a/simple", "https://b/simple"],
            "find-links": ["/wheels"], "constraint": ["/etc/c.txt"], "cert": ["/ca.pem"]}


def test_pip_settings_reads_what_pip_config_list_prints(tmp_path):
    python = tmp_path / "python"
    fake_exe(python, "cat <<'EOF'\nglobal.extra-index-url='file:///a/simple https://b/simple'\n"
             "global.timeout='60'\nglobal.find-links='/old'\n:env:.find-links='/wheels'\n"
             "install.constraint='/etc/c.txt'\nglobal.cert='/ca.pem'\nEOF")
    assert sp.pip_settings(str(python)) == SETTINGS  # PIP_* (:env:) over the files; no timeout
    fake_exe(python, "exit 1")
    assert sp.pip_settings(str(python)) == {}


def test_uv_gets_pips_indexes_links_constraints_and_certificate():
    args, env = sp.uv_options(SETTINGS)
    pairs = list(zip(args[::2], args[1::2], strict=True))
    assert ("--index-strategy", "unsafe-best-match") in pairs  # pip's best version of all
    assert [p for p in pairs if p[0] == "--extra-index-url"] == [
        ("--extra-index-url", "file:///a/simple"), ("--extra-index-url", "https://b/simple")]
    assert ("--find-links", "/wheels") in pairs and ("--constraint", "/etc/c.txt") in pairs
    assert env == (("SSL_CERT_FILE", "/ca.pem"),)
    assert "--no-index" in sp.uv_options({"no-index": ["true"]})[0]
    assert sp.uv_options({}) == (["--index-strategy", "unsafe-best-match"], ())


def test_uv_install_bootstraps_uv_with_pip_then_installs_the_locked_profile(tmp_path,
                                                                           monkeypatch):
    monkeypatch.setattr(sp, "pip_settings", lambda: SETTINGS)
    venv = fake_venv(tmp_path)
    sp.install("cpu", "PROFILE=cpu", venv, PYPROJECT, None, dry_run=False)
    pip_log = (tmp_path / "pip.log").read_text().splitlines()
    assert pip_log == [f"install -q -c {LOCK} --upgrade pip wheel setuptools>=70,<80 {sp.UV}"]
    uv_log = (tmp_path / "uv.log").read_text().splitlines()
    head = f"/ca.pem pip install -q --python {venv / 'bin' / 'python'} "
    assert [ln.startswith(head) for ln in uv_log] == [True, True, False]
    assert uv_log[0].endswith(f"-c {LOCK} torch==2.13.0") and "--find-links /wheels" in uv_log[0]
    assert uv_log[1].endswith("--no-build-isolation -e .[cpu,dev]")
    assert uv_log[2].startswith("/ca.pem pip uninstall -q --python") and "torchvision" in uv_log[2]
    assert sp.read_stamp(venv) == ("cpu", True)


def test_pip_does_it_all_where_uv_cannot_be_installed(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sp, "pip_settings", lambda: {})
    venv = fake_venv(tmp_path, pip_fails_on=sp.UV)
    sp.install("cpu", "PROFILE=cpu", venv, PYPROJECT, None, dry_run=False)
    assert "installing with pip instead" in capsys.readouterr().out
    pip_log = (tmp_path / "pip.log").read_text().splitlines()
    assert pip_log[0].endswith(sp.UV) and sp.UV not in pip_log[1]
    assert pip_log[2] == f"install -q -c {LOCK} torch==2.13.0"
    assert pip_log[3].endswith("--no-build-isolation -e .[cpu,dev]")
    assert not (tmp_path / "uv.log").exists() and sp.read_stamp(venv) == ("cpu", True)


def test_installer_pip_and_offline_wheels_never_use_uv(tmp_path):
    venv = fake_venv(tmp_path)
    for kwargs in ({"installer": "pip"}, {"installer": "uv", "wheels": tmp_path}):
        steps = sp.install_steps("cpu", venv, PYPROJECT, settings=SETTINGS, **kwargs)
        assert not any("uv" in Path(s.argv[0]).name or sp.UV in s.argv for s in steps)
    with pytest.raises(SetupError, match="INSTALLER=conda: expected one of uv, pip"):
        sp.install_steps("cpu", venv, PYPROJECT, installer="conda")
