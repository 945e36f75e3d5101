"""Each assert in the tests checks one thing, so that a failure says which part failed: no
``assert a and b`` (issue 14)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO_ROOT


def joined_asserts(files) -> list[str]:
    """``file:line`` of every assert whose condition joins parts with ``and``."""
    found = []
    for path in files:
        for node in ast.walk(ast.parse(Path(path).read_text(), str(path))):
            if not isinstance(node, ast.Assert):
                continue
            if isinstance(node.test, ast.BoolOp) and isinstance(node.test.op, ast.And):
                found.append(f"{path}:{node.lineno}")
    return found


def test_no_assert_in_the_tests_joins_conditions_with_and():
    assert joined_asserts(sorted((REPO_ROOT / "tests").rglob("*.py"))) == []


def test_the_check_finds_a_joined_assert_and_leaves_or_alone(tmp_path):
    path = tmp_path / "test_x.py"
    path.write_text("assert a or b\nassert a\nassert a and b, 'why'\nx = a and b\n")
    assert joined_asserts([path]) == [f"{path}:3"]
