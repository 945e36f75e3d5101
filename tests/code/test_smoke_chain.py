"""The whole chain on the smoke profile: every stage runs through `dvc repro`, a second
`dvc repro` runs nothing, and MLflow holds the run tree with the models."""

from __future__ import annotations

import subprocess
import sys

import pytest

from busi.orchestration.dag_settings import DVC_STAGES

pytestmark = pytest.mark.slow

STEPS = list(DVC_STAGES)


def test_every_stage_ran_and_wrote_its_outputs(smoke_run):
    ws = smoke_run["workspace"]
    for path in (
        "data.dvc",
        "dvc.lock",
        "data/manifest.csv",
        "data/splits.csv",
        "data/prepared/train.tfrecord",
        "models/unet.keras",
        "data/rois/test.npz",
        "models/classifier.keras",
        "metrics/evaluation.json",
        "plots/evaluation/overlays.png",
        "plots/evaluation/confusion_matrix.png",
        "plots/train_unet.csv",
        "plots/train_classifier.csv",
    ):
        assert (ws / path).exists(), f"{path} missing"
    headline = smoke_run["evaluation"]["headline"]
    assert set(headline) >= {
        "lesion_dice",
        "normal_false_lesion_rate",
        "accuracy",
        "macro_f1",
        "malignant_auc",
        "ece",
        "pixel_accuracy",
    }
    assert 0 <= headline["accuracy"] <= 1


def test_a_second_repro_runs_nothing(smoke_run):
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "repro"],
        cwd=smoke_run["workspace"],
        env=smoke_run["env"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Running stage" not in proc.stdout
    status = subprocess.run(
        [sys.executable, "-m", "dvc", "status"],
        cwd=smoke_run["workspace"],
        env=smoke_run["env"],
        capture_output=True,
        text=True,
    )
    assert "up to date" in status.stdout.lower(), status.stdout


def test_smoke_never_touches_the_project_outputs(smoke_run):
    assert smoke_run["project_after"] == smoke_run["project_before"]
    assert smoke_run["project_before"], "nothing of the project was watched"


def test_mlflow_holds_the_run_tree_with_lineage_and_models(smoke_run):
    from mlflow import MlflowClient

    client = MlflowClient(smoke_run["tracking_uri"])
    experiment = client.get_experiment_by_name("busi-pipeline")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("kind") == "pipeline"]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["step"] for r in children) == sorted(STEPS)
    for run in [parent, *children]:
        assert run.data.tags.get("data_version", "").endswith(".dir")
        assert run.data.tags.get("profile") == "smoke"
    assert "dvc_lock_md5" in parent.data.tags
    assert "lesion_dice" in parent.data.metrics
    by_step = {r.data.tags["step"]: r for r in children}
    unet_history = client.get_metric_history(by_step["train_unet"].info.run_id, "val_lesion_dice")
    assert len(unet_history) >= 2  # per-epoch curves
    models = client.search_logged_models(experiment_ids=[experiment.experiment_id])
    names = {m.name for m in models}
    assert {"unet", "classifier"} <= names
    unet = next(m for m in models if m.name == "unet")
    assert unet.source_run_id == by_step["train_unet"].info.run_id
