"""Session fixtures shared by integration modules: the uninterrupted reference run, and a
short two-stage demo (its runs' adapters are what eval, predict, serve and export use)."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.integration.helpers import REFERENCE_SETS, REPO, cli_command, demo_command


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, warm_model):
    """(run folder, launcher output) of a 4-step Stage I run with REFERENCE_SETS: the
    end-to-end checks read it, and a killed-and-resumed run must reproduce it."""
    root = tmp_path_factory.mktemp("reference")
    proc = subprocess.run(cli_command(root, "ref", *REFERENCE_SETS), cwd=REPO,
                          capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    out = proc.stdout + proc.stderr
    (root / "ref.log").write_text(out)
    assert proc.returncode == 0, out[-4000:]
    return root / "ref", out


@pytest.fixture(scope="session")
def demo(tmp_path_factory, warm_model):
    root = tmp_path_factory.mktemp("demo")
    proc = subprocess.run(demo_command(root), cwd=REPO, capture_output=True, text=True,
                          timeout=1500)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    return root / "d", proc.stdout
