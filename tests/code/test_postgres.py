"""Postgres as the metadata store of Airflow and the backend store of MLflow, chosen by the
settings alone (BUSI_AIRFLOW_DB_URI, BUSI_MLFLOW_BACKEND_URI), against a throwaway
PostgreSQL server: both migrate, a DAG run and a registered model version land in Postgres."""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from components import platform as plat
from tests.conftest import free_port, started_service

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
USER = "busi"
DATABASES = ("airflow", "mlflow")


def _pg_bin() -> Path | None:
    """The folder of initdb/pg_ctl: on PATH, else the newest /usr/lib/postgresql/<v>/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    return Path(candidates[-1]).parent if candidates else None


class Postgres:
    """A PostgreSQL server of our own: data and unix socket in a temporary folder, TCP on
    127.0.0.1 only, password authentication."""

    def __init__(self, bin_dir: Path, base: Path, port: int, run_as: tuple[int, int] | None):
        self.bin_dir, self.base, self.port, self.run_as = bin_dir, base, port, run_as
        self.password = secrets.token_urlsafe(16)  # made per run, never written in the tree
        self.data, self.socket_dir = base / "data", base / "socket"

    def _run(self, *argv: str, **kwargs) -> subprocess.CompletedProcess:
        user = {"user": self.run_as[0], "group": self.run_as[1]} if self.run_as else {}
        proc = subprocess.run(
            argv, capture_output=True, text=True, cwd=self.base, **user, **kwargs, timeout=120
        )
        assert proc.returncode == 0, f"{argv[0]} failed: {proc.stdout}\n{proc.stderr}"
        return proc

    def start(self) -> None:
        self.socket_dir.mkdir()
        pwfile = self.base / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self.run_as:
            for path in (self.base, self.socket_dir, pwfile):
                os.chown(path, *self.run_as)
        self._run(
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            USER,
            "--auth=scram-sha-256",
            f"--pwfile={pwfile}",
            "-E",
            "UTF8",
            "--no-locale",
        )
        pwfile.unlink()
        options = (
            f"-h 127.0.0.1 -p {self.port} -k {self.socket_dir} "
            "-c fsync=off -c full_page_writes=off -c max_connections=60"
        )
        self._run(
            str(self.bin_dir / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.base / "server.log"),
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop")

    def uri(self, db: str, driver: str = "postgresql") -> str:
        return f"{driver}://{USER}:{self.password}@127.0.0.1:{self.port}/{db}"

    def connect(self, db: str):
        import psycopg2

        return psycopg2.connect(
            host="127.0.0.1", port=self.port, user=USER, password=self.password, dbname=db
        )


@pytest.fixture(scope="session")
def postgres() -> Postgres:
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in "
            "/usr/lib/postgresql/*/bin: install postgresql to run these tests"
        )
    run_as = None
    if os.geteuid() == 0:  # initdb refuses to run as root
        import pwd

        try:
            entry = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user for initdb to run as")
        run_as = (entry.pw_uid, entry.pw_gid)
    # Not under pytest's tmp folder: that one is private to root, the server user can't enter.
    base = Path(tempfile.mkdtemp(prefix="busi-pg-"))
    server = Postgres(bin_dir, base, free_port(), run_as)
    try:
        server.start()
        conn = server.connect("postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            for db in DATABASES:
                cur.execute(f"CREATE DATABASE {db}")
        conn.close()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def _rows(server: Postgres, db: str, sql: str, *args) -> list[tuple]:
    conn = server.connect(db)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()
    finally:
        conn.close()


def test_airflow_migrates_and_a_dag_run_records_into_postgres(postgres, dvc_project, tmp_path):
    home, landing = tmp_path / "airflow", tmp_path / "landing"
    landing.mkdir()
    base = {
        **os.environ,
        "BUSI_AIRFLOW_DB_URI": postgres.uri("airflow", "postgresql+psycopg2"),
    }
    env = plat.airflow_env(home, REPO, "http://127.0.0.1:9", base=base)
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    # The DAGs of this project, run against a scratch project with an empty landing zone.
    env |= {
        "BUSI_PROJECT_DIR": str(dvc_project),
        "BUSI_LANDING": str(landing),
        "BUSI_PROFILE": "default",
    }
    env.pop("BUSI_WORKSPACE", None)
    plat.ensure_airflow_db(env, tmp_path / "migrate.log")
    assert _rows(postgres, "airflow", "SELECT count(*) FROM alembic_version")[0][0] == 1

    proc = subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "dags", "test", "busi_new_data"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    runs = _rows(postgres, "airflow", "SELECT state FROM dag_run WHERE dag_id = 'busi_new_data'")
    assert runs == [("success",)]
    tasks = _rows(
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

    settings = plat.settings_from_env(
        tmp_path,
        {
            "BUSI_PLATFORM_DIR": str(tmp_path / "platform"),
            "BUSI_MLFLOW_PORT": str(free_port()),
            # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the lock has psycopg2.
            "BUSI_MLFLOW_BACKEND_URI": postgres.uri("mlflow", "postgresql+psycopg2"),
            "BUSI_MLFLOW_ARTIFACTS": str(tmp_path / "artifacts"),
        },
    )
    service = plat.mlflow_service(settings, dict(os.environ))
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
    assert _rows(postgres, "mlflow", "SELECT run_uuid FROM runs") == [(run.info.run_id,)]
    assert _rows(postgres, "mlflow", "SELECT name, version FROM model_versions") == [
        ("busi-postgres-model", 1)
    ]
    assert not (tmp_path / "mlflow.db").exists()
