"""The DAGs end to end on the quick_oof profile (smoke data, 3 epochs, fold U-Nets), through Airflow
(`airflow dags test`) against a real MLflow server process: new data lands, is validated
and versioned, the Asset event queues the training DAG, and the training DAG trains,
registers and promotes."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from busi.data.synthetic import synth_pair
from busi.orchestration.dag_settings import TRAINING_STEPS as STEPS

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
# The wiring is under test, not the models: the smoke profile with 3 training epochs, and
# the defaults' fold U-Nets and out-of-fold crops (which the smoke run leaves out).
PROFILE = "quick_oof"


@pytest.fixture(scope="module")
def platform(tmp_path_factory, mlflow_server):
    """A fresh Airflow home and a smoke workspace holding the synthetic data."""
    from busi.data.importer import ingest
    from busi.orchestration.workspace import prepare_workspace, synthetic_source

    base = tmp_path_factory.mktemp("airflow-e2e")
    ws = prepare_workspace(REPO, PROFILE, base / "workspace")
    source = synthetic_source(REPO, PROFILE, ws)
    ingest(source, ws, str(base / "dvc-remote"))
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(base / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "MLFLOW_TRACKING_URI": mlflow_server,
        "BUSI_PROJECT_DIR": str(REPO),
        "BUSI_PROFILE": PROFILE,
        "BUSI_WORKSPACE": str(ws),
        "BUSI_LANDING": str(base / "landing"),
        "BUSI_TRACKING": "on",
        "DVC_NO_ANALYTICS": "1",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    env.pop("BUSI_PARENT_RUN_ID", None)
    airflow(env, "db", "migrate")
    airflow(env, "dags", "reserialize")
    for dag_id in ("busi_new_data", "busi_training"):
        airflow(env, "dags", "unpause", dag_id)
    return {"base": base, "ws": ws, "env": env, "uri": mlflow_server}


def airflow(env, *args, timeout=1200) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"airflow {args}: {proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def land_batch(landing: Path, name: str, seed: int = 7) -> None:
    """Two good images (benign with its mask, normal) and two bad files."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for cls, number in (("benign", 1), ("normal", 1)):
        folder = landing / name / cls
        folder.mkdir(parents=True, exist_ok=True)
        image, masks = synth_pair(rng, cls, 96, 112)
        Image.fromarray(image).save(folder / f"{cls} ({number}).png")
        for mask in masks:
            Image.fromarray(mask.astype("uint8") * 255).save(folder / f"{cls} ({number})_mask.png")
    (landing / name / "malignant").mkdir(parents=True, exist_ok=True)
    (landing / name / "malignant" / "malignant (1).png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    (landing / name / "benign" / "notes.txt").write_text("not an image")
    (landing / name / "_READY").write_text("")


def airflow_db(env) -> sqlite3.Connection:
    return sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db")


def test_new_data_is_versioned_and_queues_training(platform):
    env, ws = platform["env"], platform["ws"]
    before = (ws / "data.dvc").read_text()
    land_batch(Path(env["BUSI_LANDING"]), "batch-001")
    airflow(env, "dags", "test", "busi_new_data")
    assert (ws / "data.dvc").read_text() != before, "no new data version"
    quarantine = Path(env["BUSI_LANDING"]) / "_quarantine" / "batch-001"
    assert quarantine.is_dir()
    assert (quarantine / "report.json").is_file()
    with airflow_db(env) as db:
        events = db.execute(
            "SELECT count(*) FROM asset_event e JOIN asset a ON a.id = e.asset_id "
            "WHERE a.name = 'busi_data'"
        ).fetchone()[0]
        queued = db.execute(
            "SELECT count(*) FROM asset_dag_run_queue WHERE target_dag_id = 'busi_training'"
        ).fetchone()[0]
    assert events == 1
    assert queued == 1, "the Asset event did not queue busi_training"


def test_nothing_new_is_skipped_without_an_asset_event(platform):
    env = platform["env"]
    airflow(env, "dags", "test", "busi_new_data")
    with airflow_db(env) as db:
        events = db.execute("SELECT count(*) FROM asset_event").fetchone()[0]
        # Each run's result is in XCom, the skipped one's too (what a held batch shows).
        results = db.execute(
            "SELECT value FROM xcom WHERE dag_id = 'busi_new_data' AND key = 'ingest_result'"
        ).fetchall()
    assert events == 1
    assert len(results) == 2
    assert all("new_version" in str(value) for (value,) in results)


def test_new_data_on_an_s3_prefix_is_versioned_too(platform, moto_server, tmp_path, monkeypatch):
    """The same DAG watching an S3 landing zone (a moto server): the batch is merged, its
    bad files quarantined in the bucket, and a second Asset event queues training."""
    import boto3

    env = {
        **platform["env"],
        "BUSI_LANDING": "s3://clinic/incoming",
        "BUSI_S3_ENDPOINT_URL": moto_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(key, env[key])
    ws = platform["ws"]
    before = (ws / "data.dvc").read_text()
    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    s3.create_bucket(Bucket="clinic")
    land_batch(tmp_path, "batch-s3", seed=11)  # other images: the same ones are duplicates
    for path in sorted(p for p in tmp_path.rglob("*") if p.is_file()):
        s3.upload_file(str(path), "clinic", f"incoming/{path.relative_to(tmp_path).as_posix()}")
    airflow(env, "dags", "test", "busi_new_data")
    assert (ws / "data.dvc").read_text() != before, "no new data version from S3"
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="clinic")["Contents"]}
    assert "incoming/_quarantine/batch-s3/report.json" in keys
    assert not any(k.startswith("incoming/batch-s3/") for k in keys), "the batch stayed"
    with airflow_db(env) as db:
        events = db.execute("SELECT count(*) FROM asset_event").fetchone()[0]
    assert events == 2


def test_training_dag_trains_registers_and_promotes(platform):
    from mlflow import MlflowClient

    env, uri = platform["env"], platform["uri"]
    proc = airflow(env, "dags", "test", "busi_training")
    with airflow_db(env) as db:
        states = dict(
            db.execute(
                "SELECT task_id, state FROM task_instance WHERE dag_id = 'busi_training'"
            ).fetchall()
        )
    assert states == dict.fromkeys(STEPS, "success"), proc.stdout[-2000:]

    c = MlflowClient(tracking_uri=uri, registry_uri=uri)
    for name in ("busi-unet", "busi-classifier", "busi-pipeline"):
        champion = c.get_model_version_by_alias(name, "champion")
        assert champion.version == "1"
        assert c.get_model_version_by_alias(name, "challenger").version == "1"
    tags = c.get_model_version("busi-pipeline", "1").tags
    assert {"metric.macro_f1", "data_version", "git_commit", "test_split_md5"} <= set(tags)

    # The run tree: one parent for the DAG run, one nested run per step, all finished.
    parents = c.search_runs(
        [e.experiment_id for e in c.search_experiments()],
        filter_string="tags.kind = 'pipeline' and tags.airflow_dag_id = 'busi_training'",
    )
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert "accuracy" in parent.data.metrics
    children = c.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    assert sorted(r.data.tags["step"] for r in children) == sorted(STEPS)
    assert {r.info.status for r in children} == {"FINISHED"}
    # The defaults' fold U-Nets were trained and cropped the train split (quick_oof)
    step = {r.data.tags["step"]: r for r in children}
    assert step["train_unet_folds"].data.metrics["folds"] == 2
    assert step["crop_rois"].data.params["train_segmenter"] == "out_of_fold"
    platform["parent_run_id"] = parent.info.run_id


def test_rerunning_a_step_adds_no_run_and_no_version(platform):
    """What an Airflow retry of register_model does: the same models, the same DAG run."""
    from mlflow import MlflowClient

    from busi.orchestration.tasks import run_step

    env, uri = platform["env"], platform["uri"]
    c = MlflowClient(tracking_uri=uri, registry_uri=uri)
    parent = platform["parent_run_id"]
    airflow_run_id = c.get_run(parent).data.tags["airflow_run_id"]
    runs_before = len(c.search_runs([c.get_run(parent).info.experiment_id]))
    old = dict(os.environ)
    os.environ.update(env)
    try:
        run_step("register_model", airflow_run_id, "busi_training", PROFILE)
    finally:
        os.environ.clear()
        os.environ.update(old)
    assert len(c.search_model_versions("name='busi-pipeline'")) == 1
    assert len(c.search_runs([c.get_run(parent).info.experiment_id])) == runs_before
    assert json.loads(json.dumps(c.get_run(parent).data.tags))["airflow_run_id"] == airflow_run_id
