"""Postgres as the metadata store of Airflow and the backend store of MLflow, chosen by the
settings alone (BUSI_AIRFLOW_DB_URI, BUSI_MLFLOW_BACKEND_URI), against a throwaway
PostgreSQL server: both migrate, a DAG run and a registered model version land in Postgres."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from busi.local.processes import ensure_airflow_db
from busi.local.services import airflow_env, mlflow_service, settings_from_env
from tests.conftest import free_port, pg_rows, started_service

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def test_airflow_migrates_and_a_dag_run_records_into_postgres(postgres, dvc_project, tmp_path):
    home, landing = tmp_path / "airflow", tmp_path / "landing"
    landing.mkdir()
    base = {
        **os.environ,
        "BUSI_AIRFLOW_DB_URI": postgres.uri("airflow", "postgresql+psycopg2"),
    }
    env = airflow_env(home, REPO, "http://127.0.0.1:9", base=base)
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    # The DAGs of this project, run against a scratch project with an empty landing zone.
    env |= {
        "BUSI_PROJECT_DIR": str(dvc_project),
        "BUSI_LANDING": str(landing),
        "BUSI_PROFILE": "default",
    }
    env.pop("BUSI_WORKSPACE", None)
    ensure_airflow_db(env, tmp_path / "migrate.log")
    assert pg_rows(postgres, "airflow", "SELECT count(*) FROM alembic_version")[0][0] == 1

    proc = subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "dags", "test", "busi_new_data"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    runs = pg_rows(postgres, "airflow", "SELECT state FROM dag_run WHERE dag_id = 'busi_new_data'")
    assert runs == [("success",)]
    tasks = pg_rows(
        postgres,
        "airflow",
        "SELECT task_id, state FROM task_instance WHERE dag_id = %s",
        "busi_new_data",
    )
    # Nothing landed: the task is skipped, so no data Asset event and no training.
    assert tasks == [("ingest_batch", "skipped")]
    assert not (home / "airflow.db").exists(), "Airflow fell back to SQLite"


def test_mlflow_server_on_postgres_keeps_runs_and_model_versions(postgres, tmp_path):
    import mlflow

    settings = settings_from_env(
        tmp_path,
        {
            "BUSI_PLATFORM_DIR": str(tmp_path / "platform"),
            "BUSI_MLFLOW_PORT": str(free_port()),
            # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the lock has psycopg2.
            "BUSI_MLFLOW_BACKEND_URI": postgres.uri("mlflow", "postgresql+psycopg2"),
            "BUSI_MLFLOW_ARTIFACTS": str(tmp_path / "artifacts"),
        },
    )
    service = mlflow_service(settings, dict(os.environ))
    with started_service(service, tmp_path, timeout=180):
        client = mlflow.MlflowClient(tracking_uri=settings.tracking_uri)
        experiment = client.create_experiment("busi-postgres")
        run = client.create_run(experiment, tags={"step": "train_unet"})
        client.log_param(run.info.run_id, "epochs", "3")
        client.log_metric(run.info.run_id, "val_dice", 0.61)
        client.set_terminated(run.info.run_id)
        client.create_registered_model("busi-postgres-model")
        version = client.create_model_version(
            "busi-postgres-model", f"runs:/{run.info.run_id}/model", run_id=run.info.run_id
        )
        client.set_registered_model_alias("busi-postgres-model", "champion", version.version)

        back = client.get_run(run.info.run_id)
        assert back.data.params == {"epochs": "3"}
        assert back.data.metrics == {"val_dice": 0.61}
        champion = client.get_model_version_by_alias("busi-postgres-model", "champion")
        assert (str(champion.version), champion.run_id) == ("1", run.info.run_id)

    # It is all in Postgres, not in a SQLite file beside the project.
    assert pg_rows(postgres, "mlflow", "SELECT run_uuid FROM runs") == [(run.info.run_id,)]
    assert pg_rows(postgres, "mlflow", "SELECT name, version FROM model_versions") == [
        ("busi-postgres-model", 1)
    ]
    assert not (tmp_path / "mlflow.db").exists()
