"""The local cluster's settings (busi/local/cluster.py), without starting anything."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from busi.errors import BusiError
from busi.local import cluster as cl

REPO = Path(__file__).resolve().parents[2]


def _cluster(tmp_path, **extra) -> cl.Cluster:
    env = {"BUSI_PLATFORM_DIR": str(tmp_path / "platform"), "PATH": "/usr/bin:/bin", **extra}
    return cl.cluster_from_env(REPO, env, password="pw")


def test_celery_settings_point_at_redis_and_postgres(tmp_path):
    cluster = _cluster(tmp_path, BUSI_REDIS_PORT="7001", BUSI_PG_PORT="7002")
    env = cl.cluster_airflow_env(cluster, {"PATH": "/usr/bin"})
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"] == "redis://127.0.0.1:7001/0"
    db = "postgresql+psycopg2://busi:pw@127.0.0.1:7002/airflow"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == db
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == "db+" + db
    assert env["AIRFLOW__CELERY__WORKER_CONCURRENCY"] == "1"
    assert env["BUSI_DVC_REMOTE"] == "s3://busi/dvc"
    assert env["BUSI_LANDING"] == "s3://busi/landing"
    # MLflow on Postgres with proxied S3 artifacts.
    assert cluster.platform.backend_uri.endswith("@127.0.0.1:7002/mlflow")
    assert cluster.platform.artifacts == "s3://busi/mlflow"


def test_each_worker_has_its_own_work_tree_and_name(tmp_path, monkeypatch):
    cluster = _cluster(tmp_path)
    base = cl.cluster_airflow_env(cluster, {"PATH": "/usr/bin"})
    envs = [cl.worker_env(cluster, w, base) for w in cl.WORKERS]
    assert len({e["BUSI_WORKSPACE"] for e in envs}) == len(cl.WORKERS)
    assert all(e["BUSI_DVC_SYNC"] == "1" for e in envs)
    assert [e["BUSI_WORKER_HOSTNAME"] for e in envs] == list(cl.WORKERS)
    callable_path = envs[0]["AIRFLOW__CORE__HOSTNAME_CALLABLE"]
    assert callable_path == "busi.local.cluster.worker_hostname"
    monkeypatch.setenv("BUSI_WORKER_HOSTNAME", "worker-2")
    assert cl.worker_hostname() == "worker-2"


def test_settings_that_cannot_work_are_refused(tmp_path):
    with pytest.raises(BusiError, match="ports must differ"):
        _cluster(tmp_path, BUSI_REDIS_PORT="7000", BUSI_S3_PORT="7000")
    with pytest.raises(BusiError, match="BUSI_CLUSTER_PROFILE=default"):
        _cluster(tmp_path, BUSI_CLUSTER_PROFILE="default")


@pytest.mark.skipif(not shutil.which("redis-server"), reason="redis-server not installed")
def test_every_process_listens_on_localhost_only(tmp_path):
    try:
        services = cl.services(_cluster(tmp_path), {"PATH": str(Path(cl.__file__).parent)})
    except BusiError as exc:  # no PostgreSQL binaries, or no venv tools on PATH
        pytest.skip(str(exc))
    names = [s.name for s in services]
    assert names[:4] == ["postgres", "redis", "s3", "mlflow"]
    assert {"airflow-scheduler", "airflow-worker-1", "airflow-worker-2"} <= set(names)
    for svc in services:
        if svc.name.startswith("airflow-worker"):
            assert "--skip-serve-logs" in svc.argv
            assert svc.argv[svc.argv.index("--concurrency") + 1] == "1"
        elif svc.name in ("postgres", "redis", "s3", "mlflow", "airflow-api-server"):
            assert "127.0.0.1" in svc.argv, svc.argv
