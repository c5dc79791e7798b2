"""README.md and docs/*.md: every relative link resolves from the file that holds it (the
README's depth moved into docs/, where a link written as from the repository root breaks)."""

from __future__ import annotations

import re

import pytest

from tests.conftest import REPO

LINK = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")
FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(doc):
    targets = [m.group(1) for m in LINK.finditer(doc.read_text())
               if not m.group(1).startswith(("http://", "https://", "mailto:"))]
    missing = [t for t in targets if not (doc.parent / t).exists()]
    assert not missing, f"{doc.name}: links to missing files: {missing}"


def test_the_readme_stays_short_and_starts_with_the_two_commands():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 120
    block = text.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    assert [line.split()[:2] for line in block] == [["make", "demo"], ["make", "test"]]


def test_the_readme_layout_names_every_top_level_folder():
    """The layout table against the tree: every folder git tracks at the top is named, and
    every folder named exists (models/ once built)."""
    import subprocess

    text = (REPO / "README.md").read_text()
    table = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    first_cells = [row.split("|")[1] for row in table.splitlines() if row.startswith("| `")]
    named = {n for cell in first_cells for n in re.findall(r"`([\w.-]+)/", cell)}
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.splitlines()
    folders = {p.split("/", 1)[0] for p in tracked if "/" in p and not p.startswith(".")}
    assert folders - named == set(), "folders the README's layout does not name"
    assert {n for n in named if not (REPO / n).is_dir() and n != "models"} == set()
