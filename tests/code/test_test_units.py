"""How `make test` splits the suite between pytest-xdist workers (tests/conftest.py)."""

from __future__ import annotations

import re
import subprocess
import sys
from types import SimpleNamespace

import pytest

from tests.conftest import (
    CHAMPION_UNIT,
    LONGEST_FIRST,
    REPO_ROOT,
    SMOKE_DVC_FILES,
    SMOKE_DVC_UNIT,
    WORKTREE_UNIT,
    check_units,
    longest_units_first,
    unit_of,
)


def _item(nodeid: str, *fixtures: str):
    return SimpleNamespace(nodeid=nodeid, fixturenames=list(fixtures))


def test_files_that_must_share_a_worker_are_one_unit():
    assert unit_of("tests/code/test_serve_model.py") == CHAMPION_UNIT  # smoke_champion
    assert unit_of("tests/code/test_app.py") == CHAMPION_UNIT
    assert unit_of("tests/code/test_smoke_chain.py") == SMOKE_DVC_UNIT  # dvc in the workspace
    assert unit_of("tests/code/test_stress_test_models.py") == SMOKE_DVC_UNIT
    assert unit_of("tests/code/test_model_compat.py") == WORKTREE_UNIT  # git worktree
    assert unit_of("tests/code/test_reproduce.py") == WORKTREE_UNIT
    # the smoke run alone is shared through a file lock: its other users are free
    assert unit_of("tests/model/test_behaviour.py") == "tests/model/test_behaviour.py"
    assert unit_of("tests/dags/test_cluster.py") == "tests/dags/test_cluster.py"


# How a test file runs DVC; and the files that run it only in workspaces of their own.
_RUNS_DVC = re.compile(r'"-m", "dvc"|\brun_dvc\(|\bDvc\(|^\s*(?:from|import) dvc\b', re.M)
DVC_IN_OWN_WORKSPACES = {"tests/code/test_reproduce.py": "a git + DVC project of its own"}
THIS_FILE = "tests/code/test_test_units.py"  # names both in its patterns


def test_every_file_that_runs_dvc_beside_the_smoke_run_shares_its_unit():
    """DVC locks its project: files that run DVC and use the smoke run are one unit, so that
    two workers never run DVC in the smoke workspace at once (a new one must be added to
    SMOKE_DVC_FILES, or to DVC_IN_OWN_WORKSPACES when its DVC runs elsewhere)."""
    files = sorted((REPO_ROOT / "tests").rglob("test_*.py"))
    both = {
        path.relative_to(REPO_ROOT).as_posix()
        for path in files
        if "smoke_run" in (text := path.read_text()) and _RUNS_DVC.search(text)
    }
    assert "tests/code/test_smoke_chain.py" in both  # the pattern finds what it should
    for path in sorted(both - set(DVC_IN_OWN_WORKSPACES) - {THIS_FILE}):
        assert path in SMOKE_DVC_FILES, f"{path}: add it to SMOKE_DVC_FILES (tests/conftest.py)"
    assert set(SMOKE_DVC_FILES) <= both, "a file in SMOKE_DVC_FILES no longer runs DVC"


def test_the_long_units_come_first_and_the_rest_keep_their_order():
    items = [
        _item("tests/code/test_metrics.py::test_a"),
        _item("tests/code/test_app.py::test_b"),
        _item("tests/dags/test_cluster.py::test_c"),
        _item("tests/code/test_config.py::test_d"),
        _item("tests/dags/test_dags_end_to_end.py::test_e"),
        _item("tests/code/test_metrics.py::test_f"),
    ]
    order = [item.nodeid.rsplit("_", 1)[-1] for item in longest_units_first(items)]
    assert order == ["b", "c", "e", "a", "d", "f"]
    # the smoke run's trainer and the cluster start the session, the reproduction (which
    # needs the smoke run) comes next
    assert LONGEST_FIRST[:4] == (
        CHAMPION_UNIT,
        "tests/dags/test_cluster.py",
        WORKTREE_UNIT,
        "tests/dags/test_dags_end_to_end.py",
    )


def test_a_champion_user_outside_its_unit_stops_the_session():
    check_units([_item("tests/code/test_app.py::t", "smoke_champion")])  # named: fine
    check_units([_item("tests/code/test_metrics.py::t", "smoke_run")])  # the run is shared
    with pytest.raises(pytest.UsageError, match=r"test_metrics\.py"):
        check_units([_item("tests/code/test_metrics.py::t", "tmp_path", "smoke_champion")])


def test_the_scheduler_splits_by_unit():
    from tests.conftest import _UnitScheduling

    def config(dist: str):
        options = {"dist": dist, "tx": ["2*popen"]}
        return SimpleNamespace(
            getoption=options.get, getvalue=options.get, option=SimpleNamespace()
        )

    loadfile = config("loadfile")
    scheduler = _UnitScheduling().pytest_xdist_make_scheduler(loadfile, None)
    assert scheduler._split_scope("tests/code/test_app.py::test_x") == CHAMPION_UNIT
    assert scheduler._split_scope("tests/code/test_model_card.py::C::t") == CHAMPION_UNIT
    assert scheduler._split_scope("tests/code/test_reproduce.py::t[a]") == WORKTREE_UNIT
    assert scheduler._split_scope("tests/code/test_metrics.py::t") == "tests/code/test_metrics.py"
    assert loadfile.option.loadscopereorder is False  # longest_units_first's order stands
    assert _UnitScheduling().pytest_xdist_make_scheduler(config("load"), None) is None


@pytest.mark.slow
def test_two_workers_keep_a_unit_on_one_worker():
    """The unit tier of three files of the champion's unit and four other files on two
    workers: the champion's files run on one worker, and both workers get work. Plain
    loadfile happened to put them on one worker too when tried, so this checks the path end
    to end; ``test_the_scheduler_splits_by_unit`` pins the scheduler itself."""
    together = [
        "tests/code/test_app.py",
        "tests/code/test_model_card.py",
        "tests/code/test_serve_model.py",
    ]
    others = [
        "tests/code/test_config.py",
        "tests/code/test_split_data.py",
        "tests/code/test_metrics.py",
        "tests/code/test_drift.py",
    ]
    options = ["-n", "2", "--dist", "loadfile", "-v", "-p", "no:cacheprovider"]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", *options, "-m", "not integration", *others, *together],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ran = re.findall(r"\[(gw\d)\][^\n]*? PASSED (tests/\S+?)::", proc.stdout)
    assert ran, proc.stdout[-3000:]
    workers_of: dict[str, set] = {}
    for worker, path in ran:
        workers_of.setdefault(path, set()).add(worker)
    assert set(workers_of) == set(together + others), workers_of
    assert len(set().union(*(workers_of[path] for path in together))) == 1, workers_of
    assert {worker for worker, _ in ran} == {"gw0", "gw1"}


_BUILD = """
import sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from tests.conftest import built_once

folder = Path(sys.argv[1])

def build():
    with open(folder / "builds", "a") as f:
        f.write("x")
    time.sleep(1.5)  # long enough for the other process to ask meanwhile
    if sys.argv[2] == "crashed":
        raise RuntimeError("the build crashed")
    assert sys.argv[2] == "ok", "the build broke"
    return {{"path": folder / "made"}}

print(built_once(folder, "thing", build)["path"])
"""


FAILURES = {
    "broken": "AssertionError: the build broke",
    "crashed": "RuntimeError: the build crashed",
}


@pytest.mark.parametrize("outcome", ["ok", *FAILURES])
def test_two_processes_build_the_shared_thing_once(tmp_path, outcome):
    script = _BUILD.format(root=str(REPO_ROOT))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path), outcome],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [(p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in procs]
    assert (tmp_path / "builds").read_text() == "x"  # built by one of them only
    if outcome == "ok":
        assert [r[0] for r in results] == [0, 0], results
        assert {r[1].strip() for r in results} == {str(tmp_path / "made")}
    else:
        assert all(r[0] != 0 for r in results), results
        stderr = "".join(r[2] for r in results)
        assert FAILURES[outcome] in stderr.splitlines()  # the builder's own traceback
        assert f"failed in another pytest-xdist worker: {FAILURES[outcome]}" in stderr
