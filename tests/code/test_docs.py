"""The README stays short and true: at most about 200 lines, the two commands, every link to
a file of the project resolving, and the reference in docs/."""

from __future__ import annotations

import re

import pytest

from tests.conftest import REPO_ROOT

PAGES = [
    "README.md",
    *sorted(p.relative_to(REPO_ROOT).as_posix() for p in (REPO_ROOT / "docs").glob("*.md")),
]


def test_the_readme_is_short_and_names_the_two_commands():
    text = (REPO_ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    assert "make run" in text
    assert "make test" in text
    assert "make test" in (REPO_ROOT / ".ci" / "run").read_text()


def test_the_reference_pages_exist():
    names = {p.name for p in (REPO_ROOT / "docs").glob("*.md")}
    wanted = {"data.md", "models.md", "orchestration.md", "registry.md", "serving.md"}
    assert wanted | {"scale-out.md", "reproduce.md", "testing.md"} <= names


@pytest.mark.parametrize("page", PAGES)
def test_every_relative_link_resolves(page):
    path = REPO_ROOT / page
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text())
    local = [link for link in links if "://" not in link]
    missing = [link for link in local if not (path.parent / link).exists()]
    assert not missing, f"{page} links to {missing}"
