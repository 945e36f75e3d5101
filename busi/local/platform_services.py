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
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from busi.errors import BusiError
from busi.storage import ensure_bucket, s3_endpoint

HOST = "127.0.0.1"
DEFAULT_MLFLOW_PORT = 5000
DEFAULT_AIRFLOW_PORT = 8080
DEFAULT_PARALLELISM = 2
STATE_FILE = "state.json"
PASSWORD_FILE = "simple_auth_manager_passwords.json.generated"
AIRFLOW_HEALTH_PATH = "/api/v2/monitor/health"
# How long `busi up` waits for the DAG processor to parse the project's DAG files.
DAG_PARSE_SECONDS = 120.0
# The Airflow components the api-server's health endpoint reports on.
AIRFLOW_COMPONENTS = ("metadatabase", "scheduler", "triggerer", "dag_processor")


# --------------------------------------------------------------------------- pure core


@dataclass(frozen=True)
class Settings:
    project: Path
    state_dir: Path
    mlflow_port: int = DEFAULT_MLFLOW_PORT
    airflow_port: int = DEFAULT_AIRFLOW_PORT
    backend_uri: str = ""
    artifacts: str = ""
    parallelism: int = DEFAULT_PARALLELISM

    @property
    def airflow_home(self) -> Path:
        return self.state_dir / "airflow"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def tracking_uri(self) -> str:
        return f"http://{HOST}:{self.mlflow_port}"

    @property
    def airflow_url(self) -> str:
        return f"http://{HOST}:{self.airflow_port}"

    @property
    def password_file(self) -> Path:
        return self.airflow_home / PASSWORD_FILE


@dataclass(frozen=True)
class Service:
    """One process of the platform: how to start it and how to tell it is ready."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    health_url: str | None = None
    # Given the body of a 200 answer from health_url: is the service ready?
    ready: Callable[[bytes], bool] = field(default=lambda body: True, compare=False)


def platform_dir(project: Path, environ: Mapping[str, str] | None = None) -> Path:
    """Where the platform keeps its state, logs and Airflow home."""
    environ = os.environ if environ is None else environ
    override = environ.get("BUSI_PLATFORM_DIR")
    return Path(override).expanduser().resolve() if override else Path(project) / ".platform"


def _int_setting(environ: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = environ.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise BusiError(f"{name}={raw!r} is not a whole number from {low} to {high}")
    return value


def settings_from_env(project: Path, environ: Mapping[str, str] | None = None) -> Settings:
    environ = os.environ if environ is None else environ
    project = Path(project).resolve()
    settings = Settings(
        project=project,
        state_dir=platform_dir(project, environ),
        mlflow_port=_int_setting(environ, "BUSI_MLFLOW_PORT", DEFAULT_MLFLOW_PORT, 1, 65535),
        airflow_port=_int_setting(environ, "BUSI_AIRFLOW_PORT", DEFAULT_AIRFLOW_PORT, 1, 65535),
        backend_uri=environ.get("BUSI_MLFLOW_BACKEND_URI") or f"sqlite:///{project / 'mlflow.db'}",
        artifacts=environ.get("BUSI_MLFLOW_ARTIFACTS") or str(project / "mlartifacts"),
        parallelism=_int_setting(environ, "BUSI_AIRFLOW_PARALLELISM", DEFAULT_PARALLELISM, 1, 64),
    )
    if settings.mlflow_port == settings.airflow_port:
        raise BusiError(
            f"BUSI_MLFLOW_PORT and BUSI_AIRFLOW_PORT are both {settings.mlflow_port}: "
            "give them different ports"
        )
    return settings


def venv_bin() -> Path:
    """The bin folder of the Python running this code (the project's venv)."""
    return Path(sys.executable).parent


def airflow_env(
    home: Path,
    project: Path,
    tracking_uri: str,
    *,
    api_port: int = DEFAULT_AIRFLOW_PORT,
    parallelism: int = DEFAULT_PARALLELISM,
    base: Mapping[str, str] | None = None,
    bin_dir: Path | None = None,
) -> dict[str, str]:
    """The environment for any airflow command against this platform's Airflow (``base``,
    default ``os.environ``, plus the platform's settings). Tasks inherit it from the
    scheduler, so they see MLFLOW_TRACKING_URI, BUSI_PROJECT_DIR and the venv first on PATH."""
    base = os.environ if base is None else base
    bin_dir = venv_bin() if bin_dir is None else bin_dir
    home, project = Path(home), Path(project)
    api_url = f"http://{HOST}:{api_port}"
    path = base.get("PATH", os.defpath)
    return {
        **base,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(project / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": str(parallelism),
        # Tasks talk to the api-server's execution API; its default is localhost:8080.
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api_url}/execution/",
        "AIRFLOW__API__HOST": HOST,
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API__WORKERS": "1",
        # Simple auth manager with authentication on: the admin password is generated by
        # Airflow into the file below, never fixed here.
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / PASSWORD_FILE),
        # The scheduler's health server would listen on 0.0.0.0:8974.
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": HOST,
        # Two cores: one parsing process; new DAG files show within 30 s, not 5 minutes.
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "MLFLOW_TRACKING_URI": tracking_uri,
        "BUSI_PROJECT_DIR": str(project),
        "DVC_NO_ANALYTICS": "1",
        "PATH": f"{bin_dir}{os.pathsep}{path}" if path else str(bin_dir),
    } | (
        {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": base["BUSI_AIRFLOW_DB_URI"]}
        if base.get("BUSI_AIRFLOW_DB_URI")
        else {}
    )


def _executable(name: str, env: Mapping[str, str]) -> str:
    found = shutil.which(name, path=env.get("PATH"))
    if not found:
        raise BusiError(f"'{name}' is not on PATH ({venv_bin()} first): run `make setup`")
    return found


def mlflow_command(settings: Settings, mlflow: str = "mlflow") -> list[str]:
    return [
        mlflow,
        "server",
        "--host",
        HOST,
        "--port",
        str(settings.mlflow_port),
        "--workers",
        "1",
        "--backend-store-uri",
        settings.backend_uri,
        "--artifacts-destination",
        settings.artifacts,
    ]


def airflow_health_ready(body: bytes) -> bool:
    """True when the api-server reports every component healthy."""
    try:
        payload = json.loads(body)
    except ValueError:
        return False
    return all(
        isinstance(payload.get(name), dict) and payload[name].get("status") == "healthy"
        for name in AIRFLOW_COMPONENTS
    )


def platform_airflow_env(settings: Settings, base: Mapping[str, str] | None = None) -> dict:
    return airflow_env(
        settings.airflow_home,
        settings.project,
        settings.tracking_uri,
        api_port=settings.airflow_port,
        parallelism=settings.parallelism,
        base=base,
    )


def mlflow_service(settings: Settings, base: Mapping[str, str]) -> Service:
    env = {
        # MLflow's GenAI job runner (scorers, trace jobs: seven huey worker processes, about
        # 1.6 GB) serves nothing this pipeline uses; set the variable to turn it back on.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        **base,
        "PATH": f"{venv_bin()}{os.pathsep}{base.get('PATH', os.defpath)}",
    }
    if settings.artifacts.startswith("s3://") and s3_endpoint(base):
        env["MLFLOW_S3_ENDPOINT_URL"] = s3_endpoint(base)  # one endpoint setting for both
    return Service(
        name="mlflow",
        argv=mlflow_command(settings, _executable("mlflow", env)),
        env=env,
        log=settings.log_dir / "mlflow.log",
        health_url=f"{settings.tracking_uri}/health",
    )


def airflow_services(settings: Settings, env: dict[str, str]) -> list[Service]:
    airflow = _executable("airflow", env)
    logs = settings.log_dir
    return [
        Service(
            "airflow-api-server",
            [airflow, "api-server", "--host", HOST, "--port", str(settings.airflow_port)],
            env,
            logs / "airflow-api-server.log",
            health_url=f"{settings.airflow_url}{AIRFLOW_HEALTH_PATH}",
            ready=airflow_health_ready,
        ),
        Service(
            "airflow-scheduler",
            [airflow, "scheduler", "--skip-serve-logs"],
            env,
            logs / "airflow-scheduler.log",
        ),
        Service(
            "airflow-dag-processor",
            [airflow, "dag-processor"],
            env,
            logs / "airflow-dag-processor.log",
        ),
        Service(
            "airflow-triggerer",
            [airflow, "triggerer", "--skip-serve-logs"],
            env,
            logs / "airflow-triggerer.log",
        ),
    ]


@dataclass(frozen=True)
class ProcStat:
    pid: int
    state: str
    pgrp: int
    session: int
    start_time: int  # clock ticks since boot: with the pid, names one process for good


def dag_files(dags_folder: Path) -> list[str]:
    """The files of a DAG folder Airflow parses (its safe mode: ``.py`` files that mention
    both "airflow" and "dag"), relative to the folder."""
    found = []
    for path in sorted(Path(dags_folder).rglob("*.py")):
        text = path.read_text(errors="replace").lower()
        if "airflow" in text and "dag" in text:
            found.append(path.relative_to(dags_folder).as_posix())
    return found


def unparsed(files: list[str], dags: list[dict], errors: list[dict]) -> list[str]:
    """The DAG files that Airflow has neither DAGs nor an import error for yet (``dags`` and
    ``errors`` as the REST API lists them)."""
    seen = {d.get("relative_fileloc") for d in dags} | {e.get("filename") for e in errors}
    return [f for f in files if f not in seen]


def project_dags(files: list[str], dags: list[dict]) -> list[dict]:
    """The DAGs defined in the project's files (a shared metadata database may hold others)."""
    return [d for d in dags if d.get("relative_fileloc") in files and not d.get("is_stale")]


def dag_lines(dags: list[dict], errors: list[dict], landing: str) -> list[str]:
    """What `busi up` says about the DAGs and the landing zone."""
    lines = ["DAGs active (unpaused: the scheduler runs them, nothing to switch on in the UI):"]
    for d in sorted(dags, key=lambda d: d["dag_id"]):
        # A timedelta schedule has no description, only a summary such as "0:05:00".
        summary = d.get("timetable_summary")
        when = d.get("timetable_description") or (f"every {summary}" if summary else "by hand")
        lines.append(f"  {d['dag_id']:<16} {when}")
    if not dags:
        lines.append("  (none yet)")
    for e in errors:
        last = (e.get("stack_trace") or "").strip().splitlines()[-1:] or ["?"]
        lines.append(f"  {e.get('filename')}: import error: {last[0]}")
    return [
        *lines,
        f"landing zone: {landing}",
        "  new data: a batch folder there (<batch>/<class>/<name>.png with <name>_mask.png),",
        "  then an empty <batch>/_READY: busi_new_data merges it within 5 minutes, and the new",
        "  data version starts busi_training (README, 'New data')",
    ]


def parse_proc_stat(text: str) -> ProcStat:
    """Parse /proc/<pid>/stat; the command name (in parentheses) may hold spaces or ')'."""
    pid, _, rest = text.partition(" (")
    fields = rest.rsplit(")", 1)[1].split()
    return ProcStat(int(pid), fields[0], int(fields[2]), int(fields[3]), int(fields[19]))


def parse_state(text: str, path: Path) -> dict:
    try:
        state = json.loads(text)
    except ValueError:
        state = None
    if not isinstance(state, dict) or not isinstance(state.get("services", {}), dict):
        raise BusiError(
            f"{path} is not a platform state file; check for leftover airflow/mlflow processes "
            "(ps aux | grep -E 'airflow|mlflow'), stop them, then remove the file"
        )
    return state


def running_services(state: dict | None) -> dict[str, dict]:
    """The services the state records with a pid."""
    services = (state or {}).get("services", {})
    return {name: rec for name, rec in services.items() if rec.get("pid")}


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------- processes


def read_state(state_dir: Path) -> dict | None:
    """The platform's state.json, or None when there is none."""
    path = Path(state_dir) / STATE_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return parse_state(text, path)


def write_state(state_dir: Path, state: dict) -> None:
    path = Path(state_dir) / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(path)


def proc_stat(pid: int) -> ProcStat | None:
    try:
        return parse_proc_stat(Path(f"/proc/{pid}/stat").read_text())
    except (OSError, ValueError, IndexError):
        return None


def _alive(stat: ProcStat | None) -> bool:
    return stat is not None and stat.state not in ("Z", "X")


def is_ours(record: dict) -> bool:
    """The recorded process is alive and is the very one started (same start time)."""
    stat = proc_stat(int(record["pid"]))
    return _alive(stat) and stat.start_time == record.get("start_time")


def session_members(record: dict) -> list[int]:
    """Live pids in the session a recorded service leads. The session id is the leader's pid,
    which the kernel does not hand out again while the session has members; if a process now
    holds that pid with another start time, the session is not ours."""
    sid = int(record["pid"])
    leader = proc_stat(sid)
    if _alive(leader) and leader.start_time != record.get("start_time"):
        return []
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = proc_stat(int(entry.name))
            if _alive(stat) and stat.session == sid:
                members.append(stat.pid)
    return members


def port_free(port: int) -> bool:
    """Nothing listens on (or holds) 127.0.0.1:port. SO_REUSEADDR as the servers use, so the
    TIME_WAIT connections of a server just stopped do not count."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def port_answers(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((HOST, port)) == 0


def _http_get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.read() if resp.status == 200 else None
    except OSError:
        return None


def airflow_token(url: str, password: str) -> str:
    """A JWT for Airflow's REST API at ``url`` (the simple auth manager's admin)."""
    request = urllib.request.Request(
        f"{url}/auth/token",
        data=json.dumps({"username": "admin", "password": password}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.load(resp)["access_token"]


def airflow_api(url: str, token: str, method: str, path: str, body: dict | None = None) -> dict:
    """One JSON call to Airflow's REST API (``/api/v2`` + ``path``) at ``url``."""
    request = urllib.request.Request(
        f"{url}/api/v2{path}",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.load(resp)


def activate_dags(settings: Settings, timeout: float = DAG_PARSE_SECONDS) -> dict:
    """Wait until Airflow has parsed the project's DAG files, unpause their DAGs, and return
    {"dags": [...], "errors": [...], "unparsed": [...]} as the REST API lists them."""
    url = settings.airflow_url
    token = airflow_token(url, json.loads(settings.password_file.read_text())["admin"])
    files = dag_files(settings.project / "dags")
    deadline = time.monotonic() + timeout
    while True:
        dags = airflow_api(url, token, "GET", "/dags?limit=1000")["dags"]
        errors = airflow_api(url, token, "GET", "/importErrors?limit=1000")["import_errors"]
        missing = unparsed(files, dags, errors)
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(1)
    active = []
    for dag in project_dags(files, dags):
        if dag["is_paused"]:  # created before the DAGs said otherwise, or paused by hand
            airflow_api(url, token, "PATCH", f"/dags/{dag['dag_id']}", {"is_paused": False})
        keys = ("dag_id", "relative_fileloc", "timetable_description", "timetable_summary")
        active.append({k: dag.get(k) for k in keys} | {"is_paused": False})
    errors = [
        {"filename": e["filename"], "stack_trace": e.get("stack_trace")}
        for e in errors
        if e.get("filename") in files
    ]
    return {"dags": active, "errors": errors, "unparsed": missing}


def ensure_airflow_db(env: Mapping[str, str], log: Path | None = None) -> None:
    """Create or upgrade Airflow's metadata database (`airflow db migrate`, idempotent)."""
    home = Path(env["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [_executable("airflow", env), "db", "migrate"],
        env=dict(env),
        capture_output=True,
        text=True,
    )
    output = proc.stdout + proc.stderr
    if log is not None:
        log.write_text(output)
    if proc.returncode != 0:
        tail = "\n".join(output.splitlines()[-30:])
        raise BusiError(f"`airflow db migrate` in {home} failed ({proc.returncode}):\n{tail}")


def start_service(service: Service, cwd: Path) -> tuple[subprocess.Popen, dict]:
    service.log.parent.mkdir(parents=True, exist_ok=True)
    with service.log.open("ab") as log:
        proc = subprocess.Popen(
            service.argv,
            env=service.env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    stat = proc_stat(proc.pid)
    record = {
        "pid": proc.pid,
        "start_time": stat.start_time if stat else None,
        "log": str(service.log),
        "argv": service.argv,
    }
    return proc, record


def raise_if_exited(started: dict[str, tuple[Service, subprocess.Popen]]) -> None:
    for name, (svc, proc) in started.items():
        if proc.poll() is not None:
            raise BusiError(
                f"{name} exited with code {proc.returncode} while starting; "
                f"last lines of {svc.log}:\n{log_tail(svc.log)}"
            )


def wait_ready(started: dict[str, tuple[Service, subprocess.Popen]], timeout: float) -> None:
    """Until every service with a health URL answers ready and none has exited."""
    pending = {name for name, (svc, _) in started.items() if svc.health_url}
    deadline = time.monotonic() + timeout
    while True:
        raise_if_exited(started)
        for name in sorted(pending):
            svc = started[name][0]
            body = _http_get(svc.health_url)
            if body is not None and svc.ready(body):
                pending.discard(name)
        if not pending:
            return
        if time.monotonic() > deadline:
            name = sorted(pending)[0]
            svc = started[name][0]
            raise BusiError(
                f"{name} was not ready at {svc.health_url} within {timeout:.0f} s; "
                f"last lines of {svc.log}:\n{log_tail(svc.log)}"
            )
        time.sleep(0.5)


def stop_services(services: dict[str, dict], timeout: float = 30.0) -> list[str]:
    """SIGTERM the recorded services' process groups, SIGKILL what is left after timeout.
    Returns the names that needed SIGKILL. Processes not started by `up` are left alone."""
    members = {name: session_members(rec) for name, rec in services.items()}
    for pids in members.values():
        _signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_any_alive(p) for p in members.values()):
        time.sleep(0.2)
    killed = [name for name, pids in members.items() if _any_alive(pids)]
    for name in killed:
        _signal_all(members[name], signal.SIGKILL)
    for name in killed:
        end = time.monotonic() + 5
        while _any_alive(members[name]) and time.monotonic() < end:
            time.sleep(0.1)
    return killed


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _any_alive(pids: list[int]) -> bool:
    return any(_alive(proc_stat(pid)) for pid in pids)


def _reap(procs) -> None:
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0)


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    """One `up` or `down` at a time per platform folder."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with (state_dir / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _healthy_state(state: dict | None) -> bool:
    """Every recorded service is alive and both UI ports answer."""
    services = running_services(state)
    return (
        bool(services)
        and all(is_ours(rec) for rec in services.values())
        and all(port_answers(int(p)) for p in state.get("ports", {}).values())
    )


def _clear_pids(state: dict) -> dict:
    for rec in state.get("services", {}).values():
        rec.pop("pid", None)
        rec.pop("start_time", None)
    state["stopped_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return state


def up(settings: Settings, timeout: float = 180.0, out=print) -> dict:
    """Start the platform (or report it is already up); returns its state."""
    with _locked(settings.state_dir):
        state = read_state(settings.state_dir)
        if _healthy_state(state):
            out(f"already up (state: {settings.state_dir / STATE_FILE})")
            _print_summary(state, out, password=None)
            return state
        leftovers = running_services(state)
        if leftovers:
            alive = ", ".join(sorted(n for n, r in leftovers.items() if is_ours(r)))
            if alive:
                out(f"the platform was partly running ({alive}); restarting it")
            else:
                out("the processes recorded in state.json are gone; starting afresh")
            stop_services(leftovers)
            write_state(settings.state_dir, _clear_pids(state))
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
        _reap(proc for _, proc in started.values())
        write_state(settings.state_dir, _clear_pids(state))
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
    _print_summary(state, out, password=password)
    return state


def _print_summary(state: dict, out, password: str | None) -> None:
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
    from busi.orchestration.orchestrate import landing_zone

    landing = landing_zone(settings.project)
    if "://" not in landing:
        Path(landing).mkdir(parents=True, exist_ok=True)
    return landing


def down(state_dir: Path, timeout: float = 30.0, out=print) -> bool:
    """Stop what `up` started; False when nothing was running."""
    with _locked(state_dir):
        state = read_state(state_dir)
        services = running_services(state)
        if not services:
            out("not running")
            return False
        began = time.monotonic()
        killed = stop_services(services, timeout)
        write_state(state_dir, _clear_pids(state))
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
