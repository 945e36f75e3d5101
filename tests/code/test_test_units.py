"""How `make test` splits the suite between two pytest-xdist workers (tests/conftest.py)."""

from __future__ import annotations

import re
import subprocess
import sys
from types import SimpleNamespace

import pytest

from tests.conftest import (
    LONGEST_FIRST,
    REPO_ROOT,
    SMOKE_UNIT,
    check_units,
    longest_units_first,
    unit_of,
)


def _item(nodeid: str, *fixtures: str):
    return SimpleNamespace(nodeid=nodeid, fixturenames=list(fixtures))


def test_files_using_the_smoke_chain_or_a_worktree_are_one_unit():
    assert unit_of("tests/code/test_smoke_chain.py") == SMOKE_UNIT  # smoke_run
    assert unit_of("tests/code/test_serve_model.py") == SMOKE_UNIT  # smoke_champion
    assert unit_of("tests/model/test_behaviour.py") == SMOKE_UNIT
    assert unit_of("tests/code/test_model_compat.py") == SMOKE_UNIT  # git worktree
    assert unit_of("tests/dags/test_cluster.py") == "tests/dags/test_cluster.py"
    assert unit_of("tests/code/test_metrics.py") == "tests/code/test_metrics.py"


def test_the_long_units_come_first_and_the_rest_keep_their_order():
    items = [
        _item("tests/code/test_metrics.py::test_a"),
        _item("tests/dags/test_cluster.py::test_b"),
        _item("tests/code/test_smoke_chain.py::test_c"),
        _item("tests/code/test_config.py::test_d"),
        _item("tests/dags/test_dags_end_to_end.py::test_e"),
        _item("tests/code/test_metrics.py::test_f"),
    ]
    order = [item.nodeid.rsplit("_", 1)[-1] for item in longest_units_first(items)]
    assert order == ["c", "b", "e", "a", "d", "f"]
    assert LONGEST_FIRST[0] == SMOKE_UNIT


def test_a_smoke_user_outside_the_smoke_unit_stops_the_session():
    check_units([_item("tests/code/test_smoke_chain.py::t", "smoke_run")])  # named: fine
    with pytest.raises(pytest.UsageError, match=r"test_metrics\.py"):
        check_units([_item("tests/code/test_metrics.py::t", "tmp_path", "smoke_champion")])


@pytest.mark.slow
def test_two_workers_keep_a_unit_on_one_worker():
    """The unit tier of three smoke-unit files and three others, on two workers: each smoke-unit
    test runs on the same worker, and both workers get work."""
    smoke = [
        "tests/code/test_reproduce.py",
        "tests/code/test_drift.py",
        "tests/code/test_evaluate_external.py",
    ]
    others = [
        "tests/code/test_config.py",
        "tests/code/test_split_data.py",
        "tests/code/test_metrics.py",
    ]
    options = [
        "-n",
        "2",
        "--dist",
        "loadfile",
        "-v",
        "-p",
        "no:cacheprovider",
        "-m",
        "not integration",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", *options, *others, *smoke],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ran = re.findall(r"\[(gw\d)\][^\n]*? PASSED (tests/\S+?)::", proc.stdout)
    assert ran, proc.stdout[-3000:]
    workers_of = {}
    for worker, path in ran:
        workers_of.setdefault(path, set()).add(worker)
    assert set(workers_of) == set(smoke + others), workers_of
    assert len(set().union(*(workers_of[path] for path in smoke))) == 1, workers_of
    assert {worker for worker, _ in ran} == {"gw0", "gw1"}
