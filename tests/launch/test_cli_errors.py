"""User errors through `stonk` end in one `error:` line and exit code 2, and every `--help`
answers without importing torch (issue 23's list; the data command's errors:
tests/launch/test_data_cli.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from launch.cli import main
from tests.conftest import REPO

SUBCOMMANDS = ("stage1", "stage2", "slurm", "eval", "predict", "serve", "export", "workers",
               "data", "plan", "demo", "tiny-model", "warmstart")


@pytest.mark.parametrize("cmd", SUBCOMMANDS)
def test_help_answers_without_importing_torch(cmd):
    code = (f"import sys\nfrom launch.cli import main\ntry:\n    main([{cmd!r}, '--help'])\n"
            "except SystemExit as e:\n    assert e.code == 0, e.code\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "usage:" in out.stdout and out.stdout.strip().splitlines()[-1] == "False"


def test_stage2_from_a_run_without_a_gate_result_is_one_line(tmp_path, capsys):
    stage1 = tmp_path / "stage1-run"
    (stage1 / "checkpoints" / "best" / "adapter").mkdir(parents=True)
    (stage1 / "config.yaml").write_text((REPO / "configs/demo/stage1.yaml").read_text())
    code = main(["stage2", "--config", "configs/demo/stage2.yaml", "--stage1-run",
                 str(stage1), "--set", f"run.output_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.startswith(f"error: {stage1 / 'gate.json'}: no gate result")
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("cmd", ["stage1", "workers"])
def test_workers_off_loopback_without_the_api_key_is_one_line(cmd, monkeypatch, capsys):
    monkeypatch.delenv("STONK_API_KEY", raising=False)
    code = main([cmd, "--config", "configs/demo/stage1.yaml", "--set", "rollout.host=0.0.0.0"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith("error: rollout.api_key_env: workers serve other hosts here")
    assert "export STONK_API_KEY=" in err


def test_eval_on_data_it_cannot_read_is_one_line(fake_run, tmp_path, capsys):
    code = main(["eval", "--run", str(fake_run), "--set", "data.source=local",
                 "--set", f"data.path={tmp_path / 'missing.csv'}"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: {tmp_path / 'missing.csv'}: no such file")


@pytest.mark.integration
def test_eval_whose_worker_dies_starting_is_one_line(fake_run, warm_model):
    """A real vLLM worker that exits at once (an argument it does not know)."""
    (fake_run / "checkpoints/step_000002/adapter/adapter_config.json").write_text(json.dumps(
        {"base_model_name_or_path": str(warm_model)}))
    out = subprocess.run(
        [sys.executable, "-m", "launch.cli", "eval", "--run", str(fake_run),
         "--set", "rollout.extra_args=[--no-such-vllm-flag]", "--set", "rollout.base_port=8440"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert len(errors) == 1 and "exited with code" in errors[0] and "while starting" in errors[0]


def test_serve_off_loopback_without_the_api_key_is_one_line(fake_run, capsys, monkeypatch):
    monkeypatch.delenv("STONK_API_KEY", raising=False)
    code = main(["serve", "--run", str(fake_run), "--host", "0.0.0.0"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --host 0.0.0.0: a server other hosts can "
                                        "reach needs an API key: export STONK_API_KEY")
    assert len(err.strip().splitlines()) == 1


def test_export_refuses_an_existing_folder_and_a_run_without_checkpoints(fake_run, tmp_path,
                                                                          capsys):
    (tmp_path / "out").mkdir()
    code = main(["export", "--run", str(fake_run), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err == f"error: --out {tmp_path / 'out'}: exists; remove it or " \
                                "choose another folder\n"
    (fake_run / "checkpoints" / "LATEST").unlink()
    code = main(["export", "--run", str(fake_run)])
    err = capsys.readouterr().err
    assert code == 2 and err == f"error: {fake_run}: no checkpoint yet (checkpoints/LATEST " \
                                "missing)\n"


def test_eval_without_split_evaluates_test():
    """`stonk eval --run RUN` alone evaluated no split list at all (a TypeError from deep in
    the evaluation, after the worker had started); its help says test is the default."""
    import argparse

    from launch.offline.commands import add_parsers, eval_splits

    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers())
    assert eval_splits(parser.parse_args(["eval", "--run", "r"])) == ["test"]
    assert eval_splits(parser.parse_args(["eval", "--run", "r", "--split", "val", "--split",
                                          "test"])) == ["val", "test"]
