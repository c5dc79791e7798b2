"""The packages' layering, read from every import statement (module level and inside
functions, relative ones resolved to absolute names): `common` imports none of ours;
`rollout/` knows nothing of the trainer, the launcher or stocks; the generic trainer
(`trainer/` outside `trainer/tasks/`) imports no task's code (tasks reach it through
`trainer/tasks/registry.py`) and nothing from `launch/`; no task imports another's code."""

from __future__ import annotations

import ast
import importlib.util

import pytest

from tests.conftest import REPO


def _package(path) -> str:
    """The package a file's relative imports start from: its folder's dotted name."""
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1])


def _imports(path, package: str | None = None) -> list[str]:
    """Every module a file may import, relative imports resolved against ``package`` (the
    file's own by default). ``from m import a`` gives m and m.a, since a may be a submodule."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module
            if node.level:
                base = _package(path) if package is None else package
                module = importlib.util.resolve_name("." * node.level + (module or ""), base)
            names += [module] + [f"{module}.{a.name}" for a in node.names if a.name != "*"]
    return names


def _violations(path, forbidden, package: str | None = None) -> list[str]:
    return [name for name in _imports(path, package)
            if any(name == f or name.startswith(f + ".") for f in forbidden)]


def _files(folder: str, skip: str | None = None):
    return [p for p in sorted((REPO / folder).rglob("*.py"))
            if skip is None or skip not in p.relative_to(REPO).parts]


RULES = [
    ("common", None, ("trainer", "rollout", "launch")),
    ("rollout", None, ("trainer", "launch")),
    # the GRPO core reaches task code (a task, the decision machinery a task contributes)
    # only through trainer/tasks/registry.py
    ("trainer", "tasks", ("launch", "trainer.tasks.stock", "trainer.tasks.prompts",
                          "trainer.tasks.decisions", "trainer.tasks.decision_marks")),
    # a task reaches others only through the registry: neither imports the other
    ("trainer/tasks/stock", None, ("launch", "trainer.tasks.prompts")),
    ("trainer/tasks/prompts", None, ("launch", "trainer.tasks.stock")),
]


@pytest.mark.parametrize("folder,skip,forbidden", RULES, ids=[r[0] for r in RULES])
def test_layering(folder, skip, forbidden):
    bad = [f"{p.relative_to(REPO)} imports {name}" for p in _files(folder, skip)
           for name in _violations(p, forbidden)]
    assert not bad, "\n".join(bad)


def test_the_rule_sees_imports_inside_functions(tmp_path):
    probe = tmp_path / "m.py"
    probe.write_text("def f():\n    from trainer.tasks.stock.report import write_report\n")
    assert "trainer.tasks.stock.report" in _imports(probe)


def test_relative_imports_resolve_against_the_files_package(tmp_path):
    probe = tmp_path / "m.py"
    probe.write_text("from . import dist\nfrom ..tasks.stock import report\n")
    assert _imports(probe, package="trainer.loop") == [
        "trainer.loop", "trainer.loop.dist", "trainer.tasks.stock", "trainer.tasks.stock.report"]
    assert _package(REPO / "trainer" / "config" / "fields.py") == "trainer.config"
    assert _package(REPO / "trainer" / "config" / "__init__.py") == "trainer.config"


def test_a_relative_import_across_a_boundary_is_caught(tmp_path):
    probe = tmp_path / "m.py"
    probe.write_text("from .. import config\nfrom ..tasks import stock\n")
    forbidden = next(r[2] for r in RULES if r[0] == "trainer")
    assert _violations(probe, forbidden, package="trainer.loop") == ["trainer.tasks.stock"]


OURS = ("common", "rollout", "trainer", "launch")


def _private_uses(path) -> list[str]:
    """Another module's private names a file reaches: ``from ours.m import _x`` and
    ``m._x`` where ``m`` is one of our modules imported under that name."""
    tree = ast.parse(path.read_text(), filename=str(path))
    bound, bad = {}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in OURS and a.asname:
                    bound[a.asname] = a.name
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module \
                and node.module.split(".")[0] in OURS:
            for a in node.names:
                if a.name.startswith("_") and not a.name.startswith("__"):
                    bad.append(f"{node.module}.{a.name}")
                bound[a.asname or a.name] = f"{node.module}.{a.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id in bound and node.attr.startswith("_") \
                and not node.attr.startswith("__"):
            bad.append(f"{bound[node.value.id]}.{node.attr}")
    return bad


@pytest.mark.parametrize("folder", OURS)
def test_no_module_reaches_another_modules_private_names(folder):
    bad = [f"{p.relative_to(REPO)} uses {name}" for p in _files(folder)
           for name in _private_uses(p)]
    assert not bad, "\n".join(bad)


def test_the_private_rule_sees_both_forms(tmp_path):
    probe = tmp_path / "m.py"
    probe.write_text("from launch.run import runner as r\nfrom trainer.grpo import _x\n"
                     "def f():\n    return r._start(), r.start()\n")
    assert sorted(_private_uses(probe)) == ["launch.run.runner._start", "trainer.grpo._x"]
