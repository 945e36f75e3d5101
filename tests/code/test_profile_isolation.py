"""A smoke or quick run is its own world: with the real data imported into the project and
``BUSI_SOURCE`` pointing at it (a user's shell after ``make run``), it still trains on and
records only its own synthetic data."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from busi.data.synthetic import make_busi_like
from busi.data.versions import recorded_version
from busi.errors import BusiError
from busi.orchestration.workspace import prepare_workspace, resolve_source
from components.reproduce import DEFAULT_TOLERANCE
from tests.conftest import REPO_ROOT


def test_a_synthetic_profile_ignores_busi_source(tmp_path, monkeypatch):
    monkeypatch.setenv("BUSI_SOURCE", str(tmp_path / "the-real-data"))
    ws = prepare_workspace(REPO_ROOT, "smoke", tmp_path / "ws")
    source = resolve_source(REPO_ROOT, "smoke", ws, None)
    assert source == tmp_path / "ws.source"
    assert (source / "benign").is_dir()


def test_a_synthetic_profile_refuses_an_explicit_source(tmp_path):
    ws = prepare_workspace(REPO_ROOT, "quick", tmp_path / "ws")
    with pytest.raises(BusiError, match=r"makes its own synthetic data.*drop --source"):
        resolve_source(REPO_ROOT, "quick", ws, tmp_path / "busi")


def test_the_default_profile_takes_busi_source_or_says_what_to_set(tmp_path, monkeypatch):
    monkeypatch.delenv("BUSI_SOURCE", raising=False)
    with pytest.raises(BusiError, match="pass --source or set BUSI_SOURCE"):
        resolve_source(REPO_ROOT, "default", REPO_ROOT, None)
    monkeypatch.setenv("BUSI_SOURCE", str(tmp_path / "busi"))
    assert resolve_source(REPO_ROOT, "default", REPO_ROOT, None) == tmp_path / "busi"
    given = tmp_path / "other"
    assert resolve_source(REPO_ROOT, "default", REPO_ROOT, given) == given


def _project_with_real_data(tmp_path: Path, env: dict) -> tuple[Path, Path, str]:
    """A copy of this project whose data/busi holds 'real' data imported by `busi
    ingest-data`, as `make run` leaves it; returns (project, the data's folder, version)."""
    project = tmp_path / "project"
    subprocess.run(["git", "clone", "-q", str(REPO_ROOT), str(project)], check=True)
    # The settings of this checkout, committed or not, as the baseline smoke run had them.
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(REPO_ROOT / name, project / name)
    shutil.rmtree(project / "profiles")
    shutil.copytree(REPO_ROOT / "profiles", project / "profiles")
    real = tmp_path / "Dataset_BUSI_with_GT"
    make_busi_like(real, n_per_class=14, seed=5)
    cmd = [sys.executable, "-m", "components", "ingest-data", str(real)]
    cmd += ["--remote", str(tmp_path / "remote")]
    proc = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    version = recorded_version(project / "data.dvc")
    assert version
    assert (project / "data" / "busi" / "benign").is_dir()
    return project, real, version


@pytest.mark.slow
def test_a_smoke_run_beside_the_real_data_uses_and_records_only_its_own(smoke_run, tmp_path):
    from mlflow import MlflowClient

    env = {k: v for k, v in smoke_run["env"].items() if k != "MLFLOW_TRACKING_URI"}
    project, real, real_version = _project_with_real_data(tmp_path, env)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env |= {"BUSI_SOURCE": str(real), "MLFLOW_TRACKING_URI": uri}
    workspace = tmp_path / "smoke" / "workspace"
    cmd = [sys.executable, "-m", "components", "run-pipeline", "--profile", "smoke"]
    cmd += ["--workspace", str(workspace), "--project", str(project)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    baseline = smoke_run["workspace"]
    synthetic_version = recorded_version(baseline / "data.dvc")
    assert synthetic_version != real_version
    assert recorded_version(workspace / "data.dvc") == synthetic_version
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("busi-pipeline").experiment_id])
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    assert len(runs) == 1 + len(stages), [r.info.run_name for r in runs]  # parent + steps
    recorded = {r.info.run_name: r.data.tags.get("data_version") for r in runs}
    assert set(recorded.values()) == {synthetic_version}, recorded

    # The same figures as the suite's smoke run, which had no real data beside it.
    figures = json.loads((workspace / "metrics" / "evaluation.json").read_text())["headline"]
    expected = smoke_run["evaluation"]["headline"]
    for name in ("lesion_dice", "normal_false_lesion_rate", "accuracy", "macro_f1"):
        assert figures[name] == pytest.approx(expected[name], abs=DEFAULT_TOLERANCE), name
    # And the project's real-data state is as it was.
    assert recorded_version(project / "data.dvc") == real_version
