"""A smoke or quick run is its own world: with the real data imported into the project and
``BUSI_SOURCE`` pointing at it (a user's shell after ``make run``), it still trains on and
records only its own synthetic data."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest
import yaml

from busi.data.versions import recorded_version
from busi.errors import BusiError
from busi.orchestration.workspace import prepare_workspace, resolve_source
from tests.conftest import FOREIGN_PER_CLASS, REPO_ROOT


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


def _md5s(folder: Path) -> set[str]:
    images = (f for f in folder.rglob("*.png") if "_mask" not in f.name)
    return {hashlib.md5(f.read_bytes()).hexdigest() for f in images}


@pytest.mark.slow
def test_a_smoke_run_beside_the_real_data_uses_and_records_only_its_own(smoke_run):
    """The suite's smoke run ran with BUSI_SOURCE at other data (conftest's smoke_run; in CI
    the project's real data is imported beside it too): it trained on the smoke profile's
    synthetic data only, recorded that version in every MLflow run and left the project's
    state as it was."""
    from mlflow import MlflowClient

    workspace = smoke_run["workspace"]
    foreign = smoke_run["foreign_source"]
    assert smoke_run["env"]["BUSI_SOURCE"] == str(foreign)

    # The images it ingested are the profile's synthetic ones, none of BUSI_SOURCE's.
    per_class = yaml.safe_load((REPO_ROOT / "profiles" / "smoke.yaml").read_text())
    per_class = per_class["synthetic"]["n_per_class"]
    assert per_class != FOREIGN_PER_CLASS
    manifest = pd.read_csv(workspace / "data" / "manifest.csv")
    assert len(manifest) == 3 * per_class
    ingested = _md5s(workspace / "data" / "busi")
    assert ingested, "no images in the smoke workspace's data/busi"
    assert not ingested & _md5s(foreign), "the smoke run ingested images of BUSI_SOURCE"

    # Every run of the pipeline records that one data version.
    version = recorded_version(workspace / "data.dvc")
    assert version
    client = MlflowClient(smoke_run["tracking_uri"])
    runs = client.search_runs([client.get_experiment_by_name("busi-pipeline").experiment_id])
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    assert len(runs) == 1 + len(stages), [r.info.run_name for r in runs]  # parent + steps
    recorded = {r.info.run_name: r.data.tags.get("data_version") for r in runs}
    assert set(recorded.values()) == {version}, recorded

    # And the project's own state (its data.dvc, data/, models/, MLflow store) is as it was.
    assert smoke_run["project_after"] == smoke_run["project_before"]
