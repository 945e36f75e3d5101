"""Tasks on different workers, on the scaled-out settings (issue: scale-out): the training
steps of one DAG run alternate between two workspaces that share nothing but the DVC
remote (S3 on a moto server) and an MLflow server whose backend store is PostgreSQL and
whose artifacts go to S3, as pods on different nodes would. Each task pulls what it lacks,
pushes what it made, and hands dvc.lock and the uncached outputs on through the DAG run's
MLflow parent run."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
import yaml

from busi.local.services import mlflow_service, settings_from_env
from busi.orchestration.dag_settings import DVC_STAGES, TRAINING_STEPS
from busi.orchestration.run_state import RUN_STATE
from tests.conftest import free_port, pg_rows, started_service

# Where the local Celery cluster can run (Redis and setpriv present), test_cluster.py covers
# this through the real scheduler: tasks on two workers with work trees of their own, sharing
# only S3, MLflow on Postgres and Airflow's database. This hand-driven form stands in for it
# where the cluster cannot run; running both would spend 4 min of `make test` on the same check.
CLUSTER_RUNS_HERE = bool(shutil.which("redis-server") and shutil.which("setpriv"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CLUSTER_RUNS_HERE,
        reason="test_cluster.py runs this on two real Celery workers here (Redis found)",
    ),
]

REPO = Path(__file__).resolve().parents[2]
# The wiring is under test, not the models: the smoke profile with 3 training epochs.
PROFILE = "quick"


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_a_dag_run_alternating_between_two_workers_on_s3_and_postgres(
    tmp_path, postgres, moto_server, monkeypatch
):
    import boto3

    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "BUSI_S3_ENDPOINT_URL": moto_server,
        "BUSI_PROJECT_DIR": str(REPO),
        "BUSI_PROFILE": PROFILE,
        "BUSI_TRACKING": "on",
        "BUSI_DVC_SYNC": "1",
        "BUSI_DVC_REMOTE": "s3://busi/dvc",
        "DVC_NO_ANALYTICS": "1",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("BUSI_PARENT_RUN_ID", raising=False)
    s3 = boto3.client("s3", endpoint_url=moto_server)
    s3.create_bucket(Bucket="busi")
    postgres.create_database("mlflow_workers")
    settings = settings_from_env(
        tmp_path,
        {
            "BUSI_PLATFORM_DIR": str(tmp_path / "platform"),
            "BUSI_MLFLOW_PORT": str(free_port()),
            "BUSI_MLFLOW_BACKEND_URI": postgres.uri("mlflow_workers", "postgresql+psycopg2"),
            "BUSI_MLFLOW_ARTIFACTS": "s3://busi/mlflow",
        },
    )
    with started_service(mlflow_service(settings, dict(os.environ)), tmp_path, timeout=180):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", settings.tracking_uri)
        _two_workers(tmp_path, s3, settings.tracking_uri, moto_server, monkeypatch)
    # The runs and the model versions are in Postgres, the artifacts in the bucket.
    assert pg_rows(postgres, "mlflow_workers", "SELECT count(*) FROM runs")[0][0] >= 10
    versions = pg_rows(postgres, "mlflow_workers", "SELECT name FROM model_versions")
    assert {name for (name,) in versions} == {"busi-unet", "busi-classifier", "busi-pipeline"}
    assert s3.list_objects_v2(Bucket="busi", Prefix="mlflow/")["KeyCount"] > 10


def _two_workers(tmp_path, s3, mlflow_uri: str, moto_server: str, monkeypatch) -> None:
    import mlflow

    from busi.data.importer import ingest
    from busi.orchestration.tasks import run_step
    from busi.orchestration.workspace import prepare_workspace, synthetic_source

    workers = [prepare_workspace(REPO, PROFILE, tmp_path / name) for name in ("a", "b")]
    ingest(synthetic_source(REPO, PROFILE, workers[0]), workers[0], "s3://busi/dvc", moto_server)
    # What git would carry to the other worker: the data version, not the data.
    shutil.copy(workers[0] / "data.dvc", workers[1] / "data.dvc")
    assert not (workers[1] / "data" / "busi").exists()

    run_id = "manual__two-workers"
    ran_on = {}
    for i, step in enumerate(TRAINING_STEPS):
        ws = workers[i % 2]
        monkeypatch.setenv("BUSI_WORKSPACE", str(ws))
        out = run_step(step, run_id, "busi_training", PROFILE)
        assert Path(out["workspace"]) == ws
        ran_on[step] = ws

    a, b = workers
    # train_unet ran on b; crop_rois on a used that very model, pulled from S3.
    assert ran_on["train_unet"] == b
    assert ran_on["crop_rois"] == a
    assert md5(a / "models/unet.keras") == md5(b / "models/unet.keras")
    # train_classifier ran on b; evaluate_models on a scored it.
    assert md5(a / "models/classifier.keras") == md5(b / "models/classifier.keras")
    # register_model ran on b with the evaluation that a made (carried by the parent run).
    assert (b / "metrics/evaluation.json").read_text() == (
        a / "metrics/evaluation.json"
    ).read_text()
    objects = s3.list_objects_v2(Bucket="busi", Prefix="dvc/")["KeyCount"]
    assert objects > 10

    client = mlflow.MlflowClient(mlflow_uri)
    (parent,) = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.airflow_run_id = '{run_id}' and tags.kind = 'pipeline'",
    )
    assert parent.info.status == "FINISHED"
    state = Path(client.download_artifacts(parent.info.run_id, RUN_STATE, str(tmp_path / "s")))
    lock = yaml.safe_load((state / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(DVC_STAGES)
    assert (state / "data.dvc").read_text() == (a / "data.dvc").read_text()
    champion = client.get_model_version_by_alias("busi-pipeline", "champion")
    assert champion.tags["pipeline_run_id"] == parent.info.run_id
