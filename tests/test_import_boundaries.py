"""The packages' layering, read from every import statement (module level and inside
functions): `common` imports none of ours; `rollout/` knows nothing of the trainer, the
launcher or stocks; the generic trainer (`trainer/` outside `trainer/tasks/`) imports no
task's code (tasks reach it through `trainer/tasks/__init__.py`'s registry) and nothing from
`launch/`."""

from __future__ import annotations

import ast

import pytest

from tests.conftest import REPO


def _imports(path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def _files(folder: str, skip: str | None = None):
    return [p for p in sorted((REPO / folder).rglob("*.py"))
            if skip is None or skip not in p.relative_to(REPO).parts]


RULES = [
    ("common", None, ("trainer", "rollout", "launch")),
    ("rollout", None, ("trainer", "launch")),
    ("trainer", "tasks", ("launch", "trainer.tasks.stock")),
]


@pytest.mark.parametrize("folder,skip,forbidden", RULES, ids=[r[0] for r in RULES])
def test_layering(folder, skip, forbidden):
    bad = [f"{p.relative_to(REPO)} imports {name}" for p in _files(folder, skip)
           for name in _imports(p)
           if any(name == f or name.startswith(f + ".") for f in forbidden)]
    assert not bad, "\n".join(bad)


def test_the_rule_sees_imports_inside_functions(tmp_path):
    probe = tmp_path / "m.py"
    probe.write_text("def f():\n    from trainer.tasks.stock.report import write_report\n")
    assert _imports(probe) == ["trainer.tasks.stock.report"]
