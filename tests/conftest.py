"""Shared fixtures: synthetic BUSI-like corpora and a scratch DVC project."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from components.synthetic import make_busi_like

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def corpus(tmp_path: Path) -> tuple[Path, list]:
    """A clean synthetic corpus: 12 images per class, one with two masks, some RGB."""
    root = tmp_path / "busi"
    written = make_busi_like(root, n_per_class=12, seed=1)
    return root, written


def run_dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, f"dvc {args} failed: {proc.stderr}"
    return proc


@pytest.fixture
def dvc_project(tmp_path: Path) -> Path:
    """An empty git + DVC project with this repo's params.yaml and dvc.yaml."""
    repo = tmp_path / "project"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    run_dvc(repo, "init", "-q")
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(REPO_ROOT / name, repo / name)
    return repo
