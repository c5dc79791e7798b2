"""docs/config-reference.md is generated from trainer/config/sections.py and must be current; every
field carries a meaning there."""

from __future__ import annotations

import dataclasses
import typing

from launch import config_reference
from trainer.config import StageConfig


def test_the_committed_reference_is_current():
    assert config_reference.main(["--check"]) == 0, (
        "docs/config-reference.md is stale: run `python -m launch.config_reference`")


def test_every_field_has_a_meaning_and_a_stale_file_is_caught(tmp_path, monkeypatch):
    comments = config_reference.field_comments(config_reference.SOURCE.read_text())
    for name, cls in typing.get_type_hints(StageConfig).items():
        for f in dataclasses.fields(cls) if dataclasses.is_dataclass(cls) else []:
            assert comments.get((cls.__name__, f.name)), f"{name}.{f.name}"
    stale = tmp_path / "ref.md"
    stale.write_text(config_reference.render().replace("| `steps` |", "| `stepz` |"))
    monkeypatch.setattr(config_reference, "OUT", stale)
    monkeypatch.setattr(config_reference, "REPO", tmp_path)
    assert config_reference.main(["--check"]) == 1


def test_comment_parsing_reads_above_inline_and_shared_blocks():
    source = '''
class A:
    # the first
    # of two lines
    a: int = 1  # and inline
    b: int = 2

    c: int = 3  # own
    d: int = 4
'''
    got = config_reference.field_comments(source)
    assert got == {("A", "a"): "the first of two lines and inline", ("A", "b"): "see `a`",
                   ("A", "c"): "own", ("A", "d"): ""}
