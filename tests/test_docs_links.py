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
