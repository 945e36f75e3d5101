"""The commit to reproduce, checked out (detached) in a git worktree that is removed
afterwards."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from busi.errors import BusiError


def _git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise BusiError(f"`git {' '.join(args)}` failed in {repo}: {proc.stderr.strip()}")
    return proc


def require_commit(project: Path, commit: str) -> None:
    if _git(project, "cat-file", "-e", f"{commit}^{{commit}}", check=False).returncode != 0:
        raise BusiError(
            f"commit {commit} is not in the repository at {project}: fetch it "
            "(`git fetch --all`) or run reproduce in a clone that has it"
        )


def _remove_worktree(project: Path, path: Path) -> None:
    _git(project, "worktree", "remove", "--force", "--force", str(path), check=False)
    if path.exists():  # git could not: it is ours all the same
        shutil.rmtree(path)
    _git(project, "worktree", "prune", check=False)


@contextlib.contextmanager
def worktree(project: Path, commit: str, path: Path) -> Iterator[Path]:
    """The commit checked out (detached) at ``path``; removed, and pruned, afterwards."""
    _git(project, "worktree", "prune", check=False)  # forget worktrees whose folder is gone
    listed = _git(project, "worktree", "list", "--porcelain").stdout.splitlines()
    if f"worktree {path}" in listed:  # the leftover of an interrupted reproduction
        _remove_worktree(project, path)
    elif path.exists():
        raise BusiError(
            f"{path} exists and is not a worktree of {project}: choose another --workspace "
            "or remove that folder"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    _git(project, "worktree", "add", "--detach", str(path), commit)
    try:
        yield path
    finally:
        _remove_worktree(project, path)
