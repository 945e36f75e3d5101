"""The data version on the busi_data Asset event (busi.orchestration.data_event): the newest
event's data.dvc wins, and a work tree of its own takes it and pulls the data to match, so a
merge or a training task on another worker uses the newest version."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from busi.orchestration import data_event as de

T0 = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)


def _event(minutes: int, extra: dict | None):
    return SimpleNamespace(timestamp=T0 + timedelta(minutes=minutes), extra=extra)


def test_the_newest_event_carrying_a_data_dvc_wins():
    events = [
        _event(2, de.event_extra("b", "outs: b\n")),
        _event(5, {}),  # an event made by hand, without the data version
        _event(1, de.event_extra("a", "outs: a\n")),
    ]
    assert de.newest_data_dvc(events) == "outs: b\n"
    as_dicts = [{"timestamp": e.timestamp, "extra": e.extra} for e in events]
    assert de.newest_data_dvc(as_dicts) == "outs: b\n"
    assert de.newest_data_dvc([_event(1, None)]) is None
    assert de.newest_data_dvc([]) is None


def test_writing_the_data_dvc_says_whether_it_changed(tmp_path):
    assert not de.write_data_dvc(tmp_path, None)
    assert de.write_data_dvc(tmp_path, "outs: a\n")
    assert not de.write_data_dvc(tmp_path, "outs: a\n")
    assert de.read_data_dvc(tmp_path) == "outs: a\n"
    # Unchanged: no pull (nothing to run, no remote needed).
    assert not de.pull_if_changed(tmp_path, "outs: a\n", None, None)
    assert not de.take_data_version(tmp_path / "empty", None, None, None)


@pytest.mark.slow
def test_a_stale_work_tree_takes_the_newest_version_and_its_data(tmp_path):
    """Worker a merges a new version; worker b, holding the old data.dvc and the old data,
    takes the event's data.dvc and ends with exactly the new version's files."""
    from busi.data.importer import ingest
    from busi.data.synthetic import make_busi_like
    from busi.data.versions import DATA_DIR, Dvc, recorded_version

    remote = tmp_path / "remote"
    a, b = tmp_path / "a", tmp_path / "b"
    for ws in (a, b):
        ws.mkdir()
        subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=ws, check=True)
    make_busi_like(tmp_path / "source", n_per_class=2)
    ingest(tmp_path / "source", a, str(remote))
    ingest(tmp_path / "source", b, str(remote))
    old = de.read_data_dvc(b)
    assert old == de.read_data_dvc(a)
    # a merges one more image: a new version, pushed.
    extra = a / DATA_DIR / "benign" / "benign (99).png"
    extra.write_bytes((a / DATA_DIR / "benign" / "benign (1).png").read_bytes()[::-1])
    Dvc(a)("commit", "--force", "data.dvc")
    Dvc(a)("push", "data.dvc")
    new = de.read_data_dvc(a)
    assert new != old

    events = [_event(1, de.event_extra(recorded_version(a / "data.dvc"), new))]
    assert de.take_data_version(b, de.newest_data_dvc(events), str(remote), None)
    assert de.read_data_dvc(b) == new
    assert (b / DATA_DIR / "benign" / "benign (99).png").read_bytes() == extra.read_bytes()
    assert Dvc(b)("status", "data.dvc", "--json").stdout.strip() in ("{}", "")
    # Current and present: nothing to pull again.
    assert not de.take_data_version(b, new, str(remote), None)


def test_a_task_takes_the_triggering_event_s_data_dvc_before_its_parent_run(tmp_path, monkeypatch):
    """With DVC sync, the first task of an Asset-triggered run writes the newest event's
    data.dvc before the parent run is made (its data_version tag) and pulls data/busi to
    match; a run triggered by hand, or sync off, leaves the work tree's data.dvc alone."""
    from busi.orchestration import tasks

    (tmp_path / "data.dvc").write_text("outs: old\n")
    seen, pulled = [], []
    monkeypatch.delenv("BUSI_DVC_REMOTE", raising=False)
    monkeypatch.setattr(tasks, "workspace_for", lambda profile: tmp_path)
    monkeypatch.setattr(tasks, "check_params", lambda path: None)  # no params.yaml here
    monkeypatch.setattr(
        tasks,
        "parent_run",
        lambda *args: seen.append((tmp_path / "data.dvc").read_text()) or "parent",
    )
    monkeypatch.setattr("mlflow.MlflowClient", lambda **kwargs: None)
    monkeypatch.setattr(tasks, "restore_run_state", lambda *args: [])
    monkeypatch.setattr(tasks, "save_run_state", lambda *args: [])
    monkeypatch.setattr(tasks, "step_commands", lambda *a: ([], [sys.executable, "-c", ""], []))
    monkeypatch.setattr(de, "_pull", lambda ws, remote, endpoint: pulled.append(ws))
    events = [
        _event(1, de.event_extra("a", "outs: a\n")),
        _event(2, de.event_extra("b", "outs: b\n")),
    ]

    monkeypatch.setenv("BUSI_DVC_SYNC", "0")
    tasks.run_step("validate_data", "asset__1", "busi_training", "quick", events)
    monkeypatch.setenv("BUSI_DVC_SYNC", "1")
    tasks.run_step("validate_data", "manual__1", "busi_training", "quick", ())
    assert seen == ["outs: old\n", "outs: old\n"]
    assert pulled == []
    tasks.run_step("validate_data", "asset__1", "busi_training", "quick", events)
    assert seen[-1] == "outs: b\n"
    assert pulled == [tmp_path]
    tasks.run_step("split_data", "asset__1", "busi_training", "quick", events)
    assert pulled == [tmp_path]  # already at that version: nothing to pull
