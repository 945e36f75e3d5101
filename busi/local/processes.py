"""The local platform's processes: ``state.json``, pids checked against Linux ``/proc``
(pid and start time, so a reused pid is never signalled), ports, Airflow's REST API, and
starting and stopping services as process groups in their own sessions."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

from busi.errors import BusiError
from busi.local.services import (
    DAG_PARSE_SECONDS,
    HOST,
    STATE_FILE,
    ProcStat,
    Service,
    Settings,
    dag_files,
    log_tail,
    parse_proc_stat,
    parse_state,
    project_dags,
    running_services,
    unparsed,
    venv_executable,
)


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
        [venv_executable("airflow", env), "db", "migrate"],
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


def reap(procs) -> None:
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0)


@contextlib.contextmanager
def state_lock(state_dir: Path) -> Iterator[None]:
    """One `up` or `down` at a time per platform folder."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with (state_dir / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def healthy_state(state: dict | None) -> bool:
    """Every recorded service is alive and both UI ports answer."""
    services = running_services(state)
    return (
        bool(services)
        and all(is_ours(rec) for rec in services.values())
        and all(port_answers(int(p)) for p in state.get("ports", {}).values())
    )


def without_pids(state: dict) -> dict:
    for rec in state.get("services", {}).values():
        rec.pop("pid", None)
        rec.pop("start_time", None)
    state["stopped_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return state
