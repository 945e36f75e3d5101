"""The local cluster behind `busi up --cluster`: the training DAG on Airflow's CeleryExecutor
with two Celery workers, Redis as the broker, PostgreSQL for Airflow's and MLflow's metadata
and an S3 API (moto server) for the DVC remote, MLflow's artifacts and the landing zone, all
on 127.0.0.1, as the Compose file runs them on one Docker host (infra/README.md maps each
process here to its Compose service and Kubernetes object).

Each Celery worker has its own work tree (``<platform>/workers/<name>/workspace``: the
project's stage files, its params and its DVC cache) and ``BUSI_DVC_SYNC=1``, so the tasks of
a DAG run share nothing through the local disk: only the DVC remote (S3), the MLflow server
and the metadata database. Each worker names itself (``BUSI_WORKER_HOSTNAME``, through
Airflow's ``[core] hostname_callable``), so a task instance's ``hostname`` says which worker
ran it.

Settings (read by `busi up --cluster`, never at import), besides those of `busi up`
(``busi.local.up``): ``BUSI_PG_PORT`` (55432), ``BUSI_REDIS_PORT`` (56379),
``BUSI_S3_PORT`` (55000), ``BUSI_CLUSTER_PROFILE`` (``quick``: the profile the workers run
when a DAG run names none), ``BUSI_HEARTBEAT_TIMEOUT`` (60 s: how long the scheduler waits
for a silent task, such as one on a worker that died, before it fails the try and retries).

The processes are `busi up` services (``busi.local.services``, ``busi.local.processes``):
each in its own session, recorded with its pid and start time in ``state.json``, stopped
only by pid (``busi down``). The moto server keeps its objects in memory: `busi down` drops
the bucket; Postgres keeps its data in ``<platform>/postgres``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from busi.errors import BusiError
from busi.local.processes import (
    activate_dags,
    ensure_airflow_db,
    is_ours,
    port_answers,
    port_free,
    raise_if_exited,
    read_state,
    reap,
    start_service,
    state_lock,
    stop_services,
    wait_ready,
    without_pids,
    write_state,
)
from busi.local.services import (
    HOST,
    Service,
    Settings,
    airflow_services,
    int_setting,
    mlflow_service,
    platform_airflow_env,
    running_services,
    settings_from_env,
    venv_executable,
)
from busi.local.up import print_summary

WORKERS = ("worker-1", "worker-2")
BUCKET = "busi"
PG_USER = "busi"
DATABASES = ("airflow", "mlflow")
DEFAULT_PORTS = {"BUSI_PG_PORT": 55432, "BUSI_REDIS_PORT": 56379, "BUSI_S3_PORT": 55000}
# Every port of the cluster (to pick free ones in tests and benchmarks).
PORT_SETTINGS = ("BUSI_MLFLOW_PORT", "BUSI_AIRFLOW_PORT", *DEFAULT_PORTS)
DEFAULT_PROFILE = "quick"
DEFAULT_HEARTBEAT_TIMEOUT = 60
# Test keys for the moto server: it accepts any; a real S3/MinIO takes them from the shell.
S3_TEST_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


# --------------------------------------------------------------------------- pure core


@dataclass(frozen=True)
class Cluster:
    platform: Settings
    pg_port: int
    redis_port: int
    s3_port: int
    password: str
    profile: str = DEFAULT_PROFILE
    heartbeat_timeout: int = DEFAULT_HEARTBEAT_TIMEOUT

    @property
    def state_dir(self) -> Path:
        return self.platform.state_dir

    @property
    def pg_data(self) -> Path:
        return self.state_dir / "postgres" / "data"

    @property
    def s3_endpoint(self) -> str:
        return f"http://{HOST}:{self.s3_port}"

    @property
    def broker_url(self) -> str:
        return f"redis://{HOST}:{self.redis_port}/0"

    def db_uri(self, db: str) -> str:
        return f"postgresql+psycopg2://{PG_USER}:{self.password}@{HOST}:{self.pg_port}/{db}"

    def workspace(self, worker: str) -> Path:
        return self.state_dir / "workers" / worker / "workspace"


def worker_hostname() -> str:
    """Airflow's ``[core] hostname_callable`` on the cluster's workers: the worker's own
    name (``BUSI_WORKER_HOSTNAME``), which the task instances record as their hostname."""
    name = os.environ.get("BUSI_WORKER_HOSTNAME")
    if name:
        return name
    from airflow.sdk.api.client import _get_fqdn

    return _get_fqdn()


def cluster_from_env(
    project: Path, environ: Mapping[str, str] | None = None, password: str = ""
) -> Cluster:
    """The cluster's settings (``password``: Postgres's, see ``load``)."""
    environ = os.environ if environ is None else environ
    base = settings_from_env(project, environ)
    ports = {
        name: int_setting(environ, name, default, 1, 65535)
        for name, default in DEFAULT_PORTS.items()
    }
    used = [base.mlflow_port, base.airflow_port, *ports.values()]
    if len(set(used)) != len(used):
        raise BusiError(f"the cluster's ports must differ: {used}")
    cluster = Cluster(
        platform=base,
        pg_port=ports["BUSI_PG_PORT"],
        redis_port=ports["BUSI_REDIS_PORT"],
        s3_port=ports["BUSI_S3_PORT"],
        password=password,
        profile=environ.get("BUSI_CLUSTER_PROFILE") or DEFAULT_PROFILE,
        heartbeat_timeout=int_setting(
            environ, "BUSI_HEARTBEAT_TIMEOUT", DEFAULT_HEARTBEAT_TIMEOUT, 10, 3600
        ),
    )
    if cluster.profile == "default":
        raise BusiError(
            "BUSI_CLUSTER_PROFILE=default: the cluster's workers run profiles in work trees "
            "of their own; the default profile runs in the project checkout itself"
        )
    return replace(
        cluster,
        platform=replace(
            base,
            backend_uri=cluster.db_uri("mlflow"),
            artifacts=f"s3://{BUCKET}/mlflow",
            parallelism=len(WORKERS),
        ),
    )


def shared_env(cluster: Cluster, base: Mapping[str, str]) -> dict[str, str]:
    """What every process of the cluster sees: the S3 endpoint and keys, the DVC remote,
    the landing zone and the profile."""
    return {
        **S3_TEST_KEYS,
        "AWS_DEFAULT_REGION": "us-east-1",
        **base,
        "BUSI_S3_ENDPOINT_URL": cluster.s3_endpoint,
        "BUSI_DVC_REMOTE": f"s3://{BUCKET}/dvc",
        "BUSI_LANDING": f"s3://{BUCKET}/landing",
        "BUSI_PROFILE": cluster.profile,
        "BUSI_TRACKING": "on",
        "DVC_NO_ANALYTICS": "1",
    }


def cluster_airflow_env(cluster: Cluster, base: Mapping[str, str]) -> dict[str, str]:
    """Airflow's settings on the cluster: CeleryExecutor, Redis broker, results and metadata
    in Postgres, a short heartbeat timeout so a lost worker's task is retried soon."""
    env = platform_airflow_env(cluster.platform, shared_env(cluster, base))
    return env | {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": cluster.db_uri("airflow"),
        "AIRFLOW__CELERY__BROKER_URL": cluster.broker_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + cluster.db_uri("airflow"),
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(cluster.heartbeat_timeout),
    }


def worker_env(cluster: Cluster, worker: str, airflow: Mapping[str, str]) -> dict[str, str]:
    """A Celery worker's environment: its own work tree, DVC sync on, its own name."""
    return {
        **airflow,
        "BUSI_WORKSPACE": str(cluster.workspace(worker)),
        "BUSI_DVC_SYNC": "1",
        "BUSI_WORKER_HOSTNAME": worker,
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "busi.local.cluster.worker_hostname",
        # A step fails within seconds when MLflow is down (Airflow retries it), instead of
        # waiting minutes in the client's own retries.
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    }


def _as_postgres_user() -> list[str]:
    """initdb and postgres refuse to run as root: run them as the 'postgres' user."""
    if os.geteuid() != 0:
        return []
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]


def pg_bin() -> Path:
    """The folder of initdb/postgres: on PATH, else the newest /usr/lib/postgresql/<v>/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: p.parts)
    if not versions:
        raise BusiError(
            "PostgreSQL server binaries (initdb, postgres) not found: "
            "`apt-get install postgresql` (part of `make setup` as root)"
        )
    return versions[-1].parent


def redis_bin() -> str:
    found = shutil.which("redis-server")
    if not found:
        raise BusiError(
            "redis-server not found: `make setup` installs Debian's redis-server as root "
            "(or `apt-get install redis-server`)"
        )
    return found


def services(cluster: Cluster, base: Mapping[str, str] | None = None) -> list[Service]:
    """Every process of the cluster, in start order."""
    base = os.environ if base is None else base
    logs = cluster.state_dir / "logs"
    shared = shared_env(cluster, base)
    airflow_env = cluster_airflow_env(cluster, base)
    pg = [
        *_as_postgres_user(),
        str(pg_bin() / "postgres"),
        "-D",
        str(cluster.pg_data),
        "-h",
        HOST,
        "-p",
        str(cluster.pg_port),
        "-k",
        str(cluster.pg_data.parent),
        "-c",
        "max_connections=100",
    ]
    redis = [redis_bin(), "--bind", HOST, "--port", str(cluster.redis_port)]
    redis += ["--dir", str(cluster.state_dir / "redis"), "--save", "", "--appendonly", "no"]
    moto = [venv_executable("moto_server", airflow_env), "-H", HOST]
    found = [
        Service("postgres", pg, dict(shared), logs / "postgres.log"),
        Service("redis", redis, dict(shared), logs / "redis.log"),
        Service(
            "s3",
            [*moto, "-p", str(cluster.s3_port)],
            dict(shared),
            logs / "s3.log",
            health_url=f"{cluster.s3_endpoint}/",
        ),
        mlflow_service(cluster.platform, shared),
        *airflow_services(cluster.platform, airflow_env),
    ]
    airflow = venv_executable("airflow", airflow_env)
    for worker in WORKERS:
        argv = [airflow, "celery", "worker", "--celery-hostname", f"{worker}@%h"]
        argv += ["--concurrency", "1", "--skip-serve-logs", "--without-gossip"]
        env = worker_env(cluster, worker, airflow_env)
        found.append(Service(f"airflow-{worker}", argv, env, logs / f"airflow-{worker}.log"))
    return found


# --------------------------------------------------------------------------- processes


def _password(cluster: Cluster) -> str:
    """Postgres's password, made once per platform folder and kept there (0600)."""
    path = cluster.state_dir / "postgres" / "password"
    if path.is_file():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(16)
    path.write_text(password + "\n")
    path.chmod(0o600)
    return password


def init_postgres(cluster: Cluster) -> None:
    """`initdb` in the platform folder (once), as the postgres user when run as root."""
    if (cluster.pg_data / "PG_VERSION").is_file():
        return
    folder = cluster.pg_data.parent
    pwfile = folder / "initdb-password"
    pwfile.write_text(cluster.password + "\n")
    if os.geteuid() == 0:
        import pwd

        user = pwd.getpwnam("postgres")
        for path in (folder, pwfile):
            os.chown(path, user.pw_uid, user.pw_gid)
        # The postgres user must reach its folder through the platform folder.
        for parent in (cluster.state_dir, *cluster.state_dir.parents):
            if parent.stat().st_mode & 0o011 != 0o011:
                raise BusiError(
                    f"{parent} is not searchable by the 'postgres' user that runs PostgreSQL "
                    "(root may not): put BUSI_PLATFORM_DIR in a folder others may enter"
                )
    argv = [*_as_postgres_user(), str(pg_bin() / "initdb"), "-D", str(cluster.pg_data)]
    argv += ["-U", PG_USER, "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8"]
    proc = subprocess.run([*argv, "--no-locale"], capture_output=True, text=True)
    pwfile.unlink()
    if proc.returncode != 0:
        raise BusiError(f"initdb failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")


def _wait_postgres(cluster: Cluster, timeout: float) -> None:
    import psycopg2

    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = psycopg2.connect(
                host=HOST,
                port=cluster.pg_port,
                user=PG_USER,
                password=cluster.password,
                dbname="postgres",
                connect_timeout=3,
            )
            break
        except psycopg2.OperationalError as exc:
            if time.monotonic() > deadline:
                raise BusiError(f"PostgreSQL did not accept connections: {exc}") from None
            time.sleep(0.5)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database")
            present = {row[0] for row in cur.fetchall()}
            for db in DATABASES:
                if db not in present:
                    cur.execute(f"CREATE DATABASE {db}")
    finally:
        conn.close()


def _wait_port(port: int, name: str, started: dict, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not port_answers(port):
        raise_if_exited(started)
        if time.monotonic() > deadline:
            raise BusiError(f"{name} did not listen on {HOST}:{port} within {timeout:.0f} s")
        time.sleep(0.3)


def up(cluster: Cluster, timeout: float = 300.0, out=print) -> dict:
    """Start the cluster (stopping what an earlier one left); returns its state."""
    with state_lock(cluster.state_dir):
        state = read_state(cluster.state_dir)
        leftovers = running_services(state)
        if leftovers:
            out(f"stopping what was running ({', '.join(leftovers)}) before starting the cluster")
            stop_services(leftovers)
            write_state(cluster.state_dir, without_pids(state))
        ports = {
            "mlflow": cluster.platform.mlflow_port,
            "airflow": cluster.platform.airflow_port,
            "postgres": cluster.pg_port,
            "redis": cluster.redis_port,
            "s3": cluster.s3_port,
        }
        busy = [f"{name} {port}" for name, port in ports.items() if not port_free(port)]
        if busy:
            raise BusiError(
                f"port(s) in use on {HOST}: {', '.join(busy)}; set BUSI_MLFLOW_PORT, "
                "BUSI_AIRFLOW_PORT, BUSI_PG_PORT, BUSI_REDIS_PORT or BUSI_S3_PORT"
            )
        return _start(cluster, ports, timeout, out)


def _start(cluster: Cluster, ports: dict, timeout: float, out) -> dict:
    began = time.monotonic()
    settings = cluster.platform
    for folder in (settings.log_dir, cluster.state_dir / "redis"):
        folder.mkdir(parents=True, exist_ok=True)
    password_existed = settings.password_file.exists()
    state = {
        "kind": "cluster",
        "project": str(settings.project),
        "state_dir": str(cluster.state_dir),
        "airflow_home": str(settings.airflow_home),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "ports": ports,
        "urls": {"mlflow": settings.tracking_uri, "airflow": settings.airflow_url},
        "tracking_uri": settings.tracking_uri,
        "s3_endpoint": cluster.s3_endpoint,
        "broker_url": cluster.broker_url,
        "profile": cluster.profile,
        "workers": {w: str(cluster.workspace(w)) for w in WORKERS},
        "password_file": str(settings.password_file),
        "log_dir": str(settings.log_dir),
        "landing": f"s3://{BUCKET}/landing",
        "services": {},
    }
    started: dict = {}
    defined = {svc.name: svc for svc in services(cluster)}

    def launch(name: str) -> None:
        proc, record = start_service(defined[name], settings.project)
        started[name] = (defined[name], proc)
        state["services"][name] = record
        write_state(cluster.state_dir, state)

    try:
        init_postgres(cluster)
        launch("postgres")
        launch("redis")
        launch("s3")
        _wait_port(cluster.pg_port, "postgres", started, timeout)
        _wait_postgres(cluster, timeout)
        wait_ready({"s3": started["s3"]}, timeout)
        _wait_port(cluster.redis_port, "redis", started, timeout)
        from busi.storage import ensure_bucket

        ensure_bucket(f"s3://{BUCKET}/", client=s3_client(cluster))
        launch("mlflow")
        out(f"migrating the Airflow database (Postgres, {HOST}:{cluster.pg_port}) ...")
        env = defined["airflow-scheduler"].env
        ensure_airflow_db(env, settings.log_dir / "airflow-db-migrate.log")
        for worker in WORKERS:  # each worker's work tree before the worker itself
            prepare_worker(cluster, worker)
        for name in defined:
            if name.startswith("airflow-"):
                launch(name)
        wait_ready(started, timeout)
    except BaseException as exc:
        stop_services(running_services(state))
        reap(proc for _, proc in started.values())
        write_state(cluster.state_dir, without_pids(state))
        if isinstance(exc, BusiError):
            raise BusiError(f"{exc}\n(stopped what had started: {', '.join(started)})") from None
        raise
    if settings.password_file.exists():
        settings.password_file.chmod(0o600)
    out("waiting for Airflow to parse the project's DAGs ...")
    try:
        state["dags"] = activate_dags(settings)
    except (OSError, ValueError, KeyError) as exc:
        out(f"could not list or unpause the DAGs through {settings.airflow_url}/api/v2 ({exc})")
    state["ready_seconds"] = round(time.monotonic() - began, 1)
    write_state(cluster.state_dir, state)
    out(f"cluster up in {state['ready_seconds']} s")
    password = None
    if not password_existed and settings.password_file.exists():
        password = json.loads(settings.password_file.read_text()).get("admin")
    print_summary(state, out, password=password)
    out(f"S3 (moto): {cluster.s3_endpoint}  bucket {BUCKET}: dvc/, mlflow/, landing/")
    out(f"Celery broker: {cluster.broker_url}; workers: {', '.join(WORKERS)}")
    return state


def s3_client(cluster: Cluster, environ: Mapping[str, str] | None = None):
    """A boto3 S3 client of the cluster's endpoint, with the keys of its processes."""
    import boto3

    env = shared_env(cluster, os.environ if environ is None else environ)
    return boto3.client(
        "s3",
        endpoint_url=cluster.s3_endpoint,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )


def prepare_worker(cluster: Cluster, worker: str) -> Path:
    """The worker's work tree: the project's stage files and params of the cluster's
    profile, its own DVC project and cache (what a checkout on another machine holds)."""
    from busi.orchestration.workspace import prepare_workspace

    return prepare_workspace(cluster.platform.project, cluster.profile, cluster.workspace(worker))


def load(project: Path, environ: Mapping[str, str] | None = None) -> Cluster:
    """The cluster as configured, with its Postgres password (made on first use)."""
    return cluster_from_env(project, environ, _password(cluster_from_env(project, environ)))


def restart(cluster: Cluster, name: str) -> dict:
    """Start one service of a running cluster again (a worker or MLflow that was stopped);
    returns its new record."""
    defined = {svc.name: svc for svc in services(cluster)}
    if name not in defined:
        raise BusiError(f"no service {name!r}; the cluster's are {', '.join(defined)}")
    with state_lock(cluster.state_dir):
        state = read_state(cluster.state_dir) or {}
        old = state.get("services", {}).get(name)
        if old and old.get("pid") and is_ours(old):
            raise BusiError(f"{name} is running (pid {old['pid']})")
        proc, record = start_service(defined[name], cluster.platform.project)
        state.setdefault("services", {})[name] = record
        write_state(cluster.state_dir, state)
    wait_ready({name: (defined[name], proc)}, 180)
    return record
