"""What the local platform of `busi up` runs, as data: its settings (read from the
environment when asked), the services with their commands and environments, and parsers of
what the processes report. Pure: nothing here starts or reads a process (``processes``
does; ``up`` is the command)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from busi.errors import BusiError
from busi.storage import s3_endpoint

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


def int_setting(environ: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    """A whole-number setting from ``environ``: unset or blank gives ``default``."""
    raw = environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise BusiError(
            f"{name}={raw!r} is not a whole number from {low} to {high}: "
            f"set it so, or unset it for the default of {default}"
        )
    return value


def settings_from_env(project: Path, environ: Mapping[str, str] | None = None) -> Settings:
    environ = os.environ if environ is None else environ
    project = Path(project).resolve()
    settings = Settings(
        project=project,
        state_dir=platform_dir(project, environ),
        mlflow_port=int_setting(environ, "BUSI_MLFLOW_PORT", DEFAULT_MLFLOW_PORT, 1, 65535),
        airflow_port=int_setting(environ, "BUSI_AIRFLOW_PORT", DEFAULT_AIRFLOW_PORT, 1, 65535),
        backend_uri=environ.get("BUSI_MLFLOW_BACKEND_URI") or f"sqlite:///{project / 'mlflow.db'}",
        artifacts=environ.get("BUSI_MLFLOW_ARTIFACTS") or str(project / "mlartifacts"),
        parallelism=int_setting(environ, "BUSI_AIRFLOW_PARALLELISM", DEFAULT_PARALLELISM, 1, 64),
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


def venv_executable(name: str, env: Mapping[str, str]) -> str:
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
        argv=mlflow_command(settings, venv_executable("mlflow", env)),
        env=env,
        log=settings.log_dir / "mlflow.log",
        health_url=f"{settings.tracking_uri}/health",
    )


def airflow_services(settings: Settings, env: dict[str, str]) -> list[Service]:
    airflow = venv_executable("airflow", env)
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
