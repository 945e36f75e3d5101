"""How `make test` splits the suite over pytest-xdist workers (tests/conftest.py): one unit
of work per test file, one unit for every file that uses the smoke chain or adds git
worktrees, the longest units first."""

from __future__ import annotations

from dataclasses import dataclass

from tests.conftest import SMOKE_GROUP, longest_first, xdist_groups


@dataclass
class Item:
    nodeid: str
    fixturenames: tuple[str, ...] = ()


ITEMS = [
    Item("tests/code/test_a.py::test_unit"),
    Item("tests/code/test_b.py::test_unit"),
    Item("tests/code/test_b.py::test_chain", ("tmp_path", "smoke_run")),
    Item("tests/code/test_c.py::test_page", ("smoke_champion",)),
    Item("tests/code/test_model_compat.py::test_old"),
    Item("tests/dags/test_cluster.py::test_run"),
    Item("tests/dags/test_dags_end_to_end.py::test_dag"),
]


def test_a_file_is_one_unit_and_the_smoke_chain_s_users_share_one():
    groups = xdist_groups(ITEMS)
    assert groups == {
        "tests/code/test_a.py": "tests/code/test_a.py",
        # one of its tests uses the smoke chain: the whole file goes with it
        "tests/code/test_b.py": SMOKE_GROUP,
        "tests/code/test_c.py": SMOKE_GROUP,
        "tests/code/test_model_compat.py": SMOKE_GROUP,  # adds a git worktree
        "tests/dags/test_cluster.py": "tests/dags/test_cluster.py",
        "tests/dags/test_dags_end_to_end.py": "tests/dags/test_dags_end_to_end.py",
    }


def test_the_longest_units_come_first_and_the_rest_keeps_its_order():
    ordered = [item.nodeid for item in longest_first(ITEMS, xdist_groups(ITEMS))]
    assert ordered == [
        "tests/code/test_b.py::test_unit",
        "tests/code/test_b.py::test_chain",
        "tests/code/test_c.py::test_page",
        "tests/code/test_model_compat.py::test_old",
        "tests/dags/test_cluster.py::test_run",
        "tests/dags/test_dags_end_to_end.py::test_dag",
        "tests/code/test_a.py::test_unit",
    ]
