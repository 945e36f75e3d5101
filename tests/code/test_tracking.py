"""The code version recorded on every run: a commit, '-dirty' only for changed code."""

from __future__ import annotations

import subprocess

from components.tracking import git_commit


def _git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def test_dirty_means_changed_code_not_pipeline_outputs(tmp_path):
    _git(tmp_path, "init", "-q")
    for name in ("dvc.lock", "code.py", "metrics/evaluation.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("v1\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "one")
    clean = git_commit(tmp_path)
    assert clean and not clean.endswith("-dirty")
    # What a pipeline run rewrites does not make the code dirty ...
    (tmp_path / "dvc.lock").write_text("v2\n")
    (tmp_path / "metrics/evaluation.json").write_text("v2\n")
    assert git_commit(tmp_path) == clean
    # ... a code change does.
    (tmp_path / "code.py").write_text("v2\n")
    assert git_commit(tmp_path) == f"{clean}-dirty"


def test_outside_a_repository_there_is_no_commit(tmp_path):
    assert git_commit(tmp_path) is None
