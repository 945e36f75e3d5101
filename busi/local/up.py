"""The local platform behind `busi up` / `busi down`: an MLflow tracking server and Airflow 3
(api-server, scheduler, dag-processor, triggerer), all on 127.0.0.1, started in their own
sessions so they outlive the command and stop as process groups.

Settings (read by `busi up`, never at import):

- ``BUSI_MLFLOW_PORT`` (5000), ``BUSI_AIRFLOW_PORT`` (8080): the two UI ports on 127.0.0.1.
- ``BUSI_MLFLOW_BACKEND_URI`` (``sqlite:///<project>/mlflow.db``) and ``BUSI_MLFLOW_ARTIFACTS``
  (``<project>/mlartifacts``): the project's local store, so runs logged before `up` show.
  ``postgresql+psycopg2://...`` and ``s3://bucket/prefix`` move them to Postgres and S3
  (the bucket is created if missing; the endpoint is ``MLFLOW_S3_ENDPOINT_URL``, else
  ``BUSI_S3_ENDPOINT_URL``); the server proxies the artifacts, so clients need no S3 keys.
- ``BUSI_AIRFLOW_DB_URI`` (SQLite in the Airflow home): Airflow's metadata database, e.g.
  ``postgresql+psycopg2://user:password@host:5432/airflow``.
- ``BUSI_AIRFLOW_PARALLELISM`` (2): task slots of the LocalExecutor (one worker process each).
- ``BUSI_PLATFORM_DIR`` (``<project>/.platform``): ``state.json``, ``logs/``, the Airflow home.
- ``BUSI_LANDING`` (``<project>/landing``): the landing zone the ``busi_new_data`` DAG
  watches; `busi up` creates a local one, so the DAG finds it.

Once Airflow is ready, `busi up` waits until the project's DAG files are parsed, unpauses
their DAGs (Airflow creates DAGs paused unless told otherwise, and an older metadata
database may hold them paused), and prints which are active and where new data goes.

Airflow's components run as separate processes rather than `airflow standalone` because
standalone's scheduler and triggerer serve task logs on 0.0.0.0:8793/8794; here they run with
``--skip-serve-logs`` (the api-server reads the log files directly: same machine).
The processes this module stops are only those recorded in ``state.json`` whose pid and start
time still match (Linux ``/proc``), so a reused pid is never signalled.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

from busi.errors import BusiError
from busi.local.processes import (
    activate_dags,
    ensure_airflow_db,
    healthy_state,
    is_ours,
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
    STATE_FILE,
    Service,
    Settings,
    airflow_services,
    dag_lines,
    mlflow_service,
    platform_airflow_env,
    platform_dir,
    running_services,
    settings_from_env,
)
from busi.storage import ensure_bucket, s3_endpoint


def up(settings: Settings, timeout: float = 180.0, out=print) -> dict:
    """Start the platform (or report it is already up); returns its state."""
    with state_lock(settings.state_dir):
        state = read_state(settings.state_dir)
        if healthy_state(state):
            out(f"already up (state: {settings.state_dir / STATE_FILE})")
            print_summary(state, out, password=None)
            return state
        leftovers = running_services(state)
        if leftovers:
            alive = ", ".join(sorted(n for n, r in leftovers.items() if is_ours(r)))
            if alive:
                out(f"the platform was partly running ({alive}); restarting it")
            else:
                out("the processes recorded in state.json are gone; starting afresh")
            stop_services(leftovers)
            write_state(settings.state_dir, without_pids(state))
        for port, var, what in (
            (settings.mlflow_port, "BUSI_MLFLOW_PORT", "MLflow"),
            (settings.airflow_port, "BUSI_AIRFLOW_PORT", "Airflow"),
        ):
            if not port_free(port):
                raise BusiError(
                    f"port {port} on {HOST} (for {what}) is in use by another program; "
                    f"set {var} to a free port, e.g. `{var}={port + 1} busi up`"
                )
        return _start(settings, timeout, out)


def _start(settings: Settings, timeout: float, out) -> dict:
    began = time.monotonic()
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    password_existed = settings.password_file.exists()
    env = platform_airflow_env(settings)
    state = {
        "project": str(settings.project),
        "state_dir": str(settings.state_dir),
        "airflow_home": str(settings.airflow_home),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "ports": {"mlflow": settings.mlflow_port, "airflow": settings.airflow_port},
        "urls": {"mlflow": settings.tracking_uri, "airflow": settings.airflow_url},
        "tracking_uri": settings.tracking_uri,
        "mlflow_backend_uri": settings.backend_uri,
        "mlflow_artifacts": settings.artifacts,
        "parallelism": settings.parallelism,
        "password_file": str(settings.password_file),
        "log_dir": str(settings.log_dir),
        "services": {},
    }
    started: dict[str, tuple[Service, subprocess.Popen]] = {}

    def launch(service: Service) -> None:
        proc, record = start_service(service, settings.project)
        started[service.name] = (service, proc)
        state["services"][service.name] = record
        write_state(settings.state_dir, state)

    try:
        if settings.artifacts.startswith("s3://"):
            ensure_bucket(settings.artifacts, s3_endpoint())
        # MLflow boots while Airflow's database is migrated.
        launch(mlflow_service(settings, os.environ))
        out(f"migrating the Airflow database in {settings.airflow_home} ...")
        ensure_airflow_db(env, settings.log_dir / "airflow-db-migrate.log")
        raise_if_exited(started)
        for service in airflow_services(settings, env):
            launch(service)
        wait_ready(started, timeout)
    except BaseException as exc:
        stop_services(running_services(state))
        reap(proc for _, proc in started.values())
        write_state(settings.state_dir, without_pids(state))
        if isinstance(exc, BusiError):
            names = ", ".join(started) or "nothing"
            raise BusiError(f"{exc}\n(stopped what had started: {names})") from None
        raise
    password = None
    if settings.password_file.exists():
        settings.password_file.chmod(0o600)
        if not password_existed:
            password = json.loads(settings.password_file.read_text()).get("admin")
    state["landing"] = _landing(settings)
    out("waiting for Airflow to parse the project's DAGs ...")
    try:
        state["dags"] = activate_dags(settings)
    except (OSError, ValueError, KeyError) as exc:  # the platform runs; say what to do by hand
        out(
            f"could not list or unpause the DAGs through {settings.airflow_url}/api/v2 ({exc}); "
            "unpause busi_new_data and busi_training in the Airflow UI"
        )
    state["ready_seconds"] = round(time.monotonic() - began, 1)
    write_state(settings.state_dir, state)
    out(f"up in {state['ready_seconds']} s")
    print_summary(state, out, password=password)
    return state


def print_summary(state: dict, out, password: str | None) -> None:
    urls = state["urls"]
    out(f"MLflow UI:  {urls['mlflow']}   (MLFLOW_TRACKING_URI={state['tracking_uri']})")
    out(f"Airflow UI: {urls['airflow']}   (user: admin)")
    if password:
        out(f"Airflow admin password (shown once; kept in {state['password_file']}): {password}")
    else:
        out(f"Airflow admin password: in {state['password_file']}")
    out(f"logs:       {state['log_dir']}")
    dags = state.get("dags") or {}
    for line in dag_lines(dags.get("dags", []), dags.get("errors", []), state.get("landing", "?")):
        out(line)
    if dags.get("unparsed"):
        out(
            f"not parsed yet: {', '.join(dags['unparsed'])}; their DAGs are created active "
            f"when parsed (see {state['log_dir']}/airflow-dag-processor.log)"
        )
    out("stop with:  busi down   (or make down)")


def _landing(settings: Settings) -> str:
    """The landing zone the new-data DAG watches (the tasks inherit the environment of
    `busi up`); a local one is created, so the DAG does not fail on a missing folder."""
    from busi.orchestration.workspace import landing_zone

    landing = landing_zone(settings.project)
    if "://" not in landing:
        Path(landing).mkdir(parents=True, exist_ok=True)
    return landing


def down(state_dir: Path, timeout: float = 30.0, out=print) -> bool:
    """Stop what `up` started; False when nothing was running."""
    with state_lock(state_dir):
        state = read_state(state_dir)
        services = running_services(state)
        if not services:
            out("not running")
            return False
        began = time.monotonic()
        killed = stop_services(services, timeout)
        write_state(state_dir, without_pids(state))
        busy = []
        for port in state.get("ports", {}).values():
            end = time.monotonic() + 10
            while not port_free(int(port)) and time.monotonic() < end:
                time.sleep(0.2)
            if not port_free(int(port)):
                busy.append(int(port))
        note = f" (needed SIGKILL: {', '.join(killed)})" if killed else ""
        out(f"stopped {', '.join(services)} in {time.monotonic() - began:.1f} s{note}")
        if busy:
            raise BusiError(
                f"stopped, but port(s) {busy} on {HOST} are still in use by another program"
            )
        return True


def _project_default() -> Path:
    from busi.tracking import PROJECT_ROOT

    return PROJECT_ROOT


def _parser(command: str, timeout: float) -> argparse.ArgumentParser:
    from busi.cli import parser_for

    parser = parser_for(command)
    parser.add_argument(
        "--project",
        type=Path,
        default=None,
        help="the project whose dags/ and MLflow store to serve (default: this checkout)",
    )
    parser.add_argument(
        "--timeout", type=float, default=timeout, help=f"seconds to wait (default {timeout:g})"
    )
    return parser


def main_up(argv: list[str] | None = None) -> int:
    parser = _parser("up", 180.0)
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="CeleryExecutor with two workers, Redis, Postgres and S3 (busi/local/cluster.py)",
    )
    args = parser.parse_args(argv)
    if args.cluster:
        from busi.local import cluster

        cluster.up(cluster.load(args.project or _project_default()), timeout=max(args.timeout, 300))
        return 0
    up(settings_from_env(args.project or _project_default()), timeout=args.timeout)
    return 0


def main_down(argv: list[str] | None = None) -> int:
    args = _parser("down", 30.0).parse_args(argv)
    project = Path(args.project or _project_default()).resolve()
    down(platform_dir(project), timeout=args.timeout)
    return 0
