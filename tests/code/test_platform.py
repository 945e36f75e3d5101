"""The local platform (`busi up` / `busi down`): the commands and environment it builds, the
state it keeps, and one real start and stop of MLflow and Airflow on free ports."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from busi.errors import BusiError
from busi.local.processes import (
    _alive,
    airflow_api,
    airflow_token,
    is_ours,
    port_answers,
    port_free,
    proc_stat,
    read_state,
    session_members,
    start_service,
    stop_services,
    wait_ready,
    write_state,
)
from busi.local.services import (
    ProcStat,
    Service,
    Settings,
    airflow_env,
    airflow_health_ready,
    airflow_services,
    dag_files,
    dag_lines,
    log_tail,
    mlflow_command,
    mlflow_service,
    parse_proc_stat,
    platform_airflow_env,
    platform_dir,
    project_dags,
    running_services,
    settings_from_env,
    unparsed,
)
from busi.local.up import main_down, up
from tests.conftest import free_port, wait_for_http

VENV_BIN = Path(sys.executable).parent


def settings(tmp_path: Path, **env: str) -> Settings:
    environ = {"BUSI_PLATFORM_DIR": str(tmp_path / "state"), **env}
    return settings_from_env(tmp_path / "project", environ)


# --------------------------------------------------------------------------- pure core


def test_airflow_env_is_local_without_examples(tmp_path):
    env = airflow_env(
        tmp_path / "home", tmp_path / "proj", "http://127.0.0.1:5001", api_port=8099, base={}
    )
    assert env["AIRFLOW_HOME"] == str(tmp_path / "home")
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(tmp_path / "proj" / "dags")
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1"
    assert env["AIRFLOW__API__PORT"] == "8099"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:8099/execution/"
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert int(env["AIRFLOW__CORE__PARALLELISM"]) <= 4
    assert env["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "False"
    # What the tasks inherit.
    assert env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5001"
    assert env["BUSI_PROJECT_DIR"] == str(tmp_path / "proj")
    assert env["PATH"].split(os.pathsep)[0] == str(VENV_BIN)
    assert "0.0.0.0" not in json.dumps(env)


def test_airflow_env_fixes_no_password(tmp_path):
    env = airflow_env(tmp_path / "home", tmp_path, "http://127.0.0.1:5000", base={})
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] == "False"
    # admin:admin is user:role; the password is Airflow's, generated into this file.
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == "admin:admin"
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] == str(
        tmp_path / "home" / "simple_auth_manager_passwords.json.generated"
    )
    secrets = [k for k in env if "PASSWORD" in k and not k.endswith("PASSWORDS_FILE")]
    assert secrets == []


def test_airflow_env_keeps_the_base_environment(tmp_path):
    env = airflow_env(
        tmp_path, tmp_path, "http://127.0.0.1:5000", base={"PATH": "/usr/bin", "KEEP": "1"}
    )
    assert env["KEEP"] == "1"
    assert env["PATH"] == f"{VENV_BIN}{os.pathsep}/usr/bin"


def test_defaults_serve_the_project_store(tmp_path):
    s = settings_from_env(tmp_path, {})
    assert s.state_dir == tmp_path / ".platform" == platform_dir(tmp_path, {})
    assert s.airflow_home == tmp_path / ".platform" / "airflow"
    assert (s.mlflow_port, s.airflow_port) == (5000, 8080)
    # The same store tracking.py writes to without a server: runs made before `up` show.
    assert s.backend_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert s.artifacts == str(tmp_path / "mlartifacts")
    assert s.tracking_uri == "http://127.0.0.1:5000"
    assert s.airflow_url == "http://127.0.0.1:8080"


def test_settings_from_the_environment(tmp_path):
    s = settings(
        tmp_path,
        BUSI_MLFLOW_PORT="5111",
        BUSI_AIRFLOW_PORT="8111",
        BUSI_MLFLOW_BACKEND_URI="sqlite:////elsewhere/m.db",
        BUSI_MLFLOW_ARTIFACTS="/elsewhere/art",
        BUSI_AIRFLOW_PARALLELISM="3",
    )
    assert s.state_dir == tmp_path / "state"
    assert (s.mlflow_port, s.airflow_port, s.parallelism) == (5111, 8111, 3)
    assert (s.backend_uri, s.artifacts) == ("sqlite:////elsewhere/m.db", "/elsewhere/art")


@pytest.mark.parametrize(
    ("name", "value"), [("BUSI_MLFLOW_PORT", "http"), ("BUSI_AIRFLOW_PORT", "70000")]
)
def test_a_bad_port_setting_names_the_variable(tmp_path, name, value):
    with pytest.raises(BusiError, match=name):
        settings(tmp_path, **{name: value})


def test_the_two_ports_must_differ(tmp_path):
    with pytest.raises(BusiError, match="different ports"):
        settings(tmp_path, BUSI_MLFLOW_PORT="6000", BUSI_AIRFLOW_PORT="6000")


def test_mlflow_command(tmp_path):
    s = settings(tmp_path, BUSI_MLFLOW_PORT="5123")
    argv = mlflow_command(s)
    opts = dict(zip(argv[2::2], argv[3::2], strict=True))
    assert argv[:2] == ["mlflow", "server"]
    assert opts == {
        "--host": "127.0.0.1",
        "--port": "5123",
        "--workers": "1",
        "--backend-store-uri": f"sqlite:///{tmp_path / 'project' / 'mlflow.db'}",
        "--artifacts-destination": str(tmp_path / "project" / "mlartifacts"),
    }
    service = mlflow_service(s, {"PATH": "/usr/bin"})
    assert service.env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert service.health_url == "http://127.0.0.1:5123/health"


def test_the_platform_gives_mlflow_the_s3_endpoint(tmp_path):
    s = settings_from_env(
        tmp_path, {"BUSI_MLFLOW_ARTIFACTS": "s3://busi/mlflow", "BUSI_PLATFORM_DIR": str(tmp_path)}
    )
    env = mlflow_service(s, {"PATH": "/usr/bin", "BUSI_S3_ENDPOINT_URL": "http://m:9000"}).env
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://m:9000"
    assert mlflow_command(s)[-2:] == ["--artifacts-destination", "s3://busi/mlflow"]
    # A local store gets no endpoint.
    local = settings_from_env(tmp_path, {"BUSI_PLATFORM_DIR": str(tmp_path)})
    env = mlflow_service(local, {"PATH": "/usr/bin", "BUSI_S3_ENDPOINT_URL": "http://m"}).env
    assert "MLFLOW_S3_ENDPOINT_URL" not in env


def test_airflow_metadata_db_from_the_settings(tmp_path):
    uri = "postgresql+psycopg2://busi:change-me@db:5432/airflow"
    env = airflow_env(tmp_path, tmp_path, "http://x", base={"BUSI_AIRFLOW_DB_URI": uri})
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == uri
    # Unset: Airflow's own default (SQLite in AIRFLOW_HOME), so nothing is forced.
    assert "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" not in airflow_env(
        tmp_path, tmp_path, "http://x", base={}
    )


def test_airflow_services_listen_on_localhost_only(tmp_path):
    s = settings(tmp_path, BUSI_AIRFLOW_PORT="8123")
    services = {svc.name: svc for svc in airflow_services(s, platform_airflow_env(s))}
    assert set(services) == {
        "airflow-api-server",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
    }
    api = services["airflow-api-server"].argv
    assert api[1:] == ["api-server", "--host", "127.0.0.1", "--port", "8123"]
    # Their log servers would listen on 0.0.0.0:8793/8794.
    assert "--skip-serve-logs" in services["airflow-scheduler"].argv
    assert "--skip-serve-logs" in services["airflow-triggerer"].argv
    assert services["airflow-api-server"].health_url == (
        "http://127.0.0.1:8123/api/v2/monitor/health"
    )
    for svc in services.values():
        assert "0.0.0.0" not in " ".join(svc.argv)
        assert svc.log.parent == tmp_path / "state" / "logs"


def test_airflow_is_ready_when_every_component_is_healthy():
    healthy = {"status": "healthy"}
    body = dict.fromkeys(("metadatabase", "scheduler", "triggerer", "dag_processor"), healthy)
    assert airflow_health_ready(json.dumps(body).encode())
    body["triggerer"] = {"status": None}
    assert not airflow_health_ready(json.dumps(body).encode())
    assert not airflow_health_ready(b"<html>")


def test_dag_files_are_those_airflow_parses(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a_dag.py").write_text("from airflow.sdk import dag\n")
    (tmp_path / "sub" / "b.py").write_text("from airflow.sdk import DAG\n")
    (tmp_path / "helpers.py").write_text("import os\n")  # no DAG: never parsed
    (tmp_path / "README.md").write_text("airflow dag\n")
    assert dag_files(tmp_path) == ["a_dag.py", "sub/b.py"]


def test_unparsed_files_and_the_project_dags():
    files = ["a.py", "b.py", "c.py"]
    dags = [
        {"dag_id": "a1", "relative_fileloc": "a.py", "is_stale": False},
        {"dag_id": "x", "relative_fileloc": "elsewhere.py", "is_stale": False},
        {"dag_id": "old", "relative_fileloc": "c.py", "is_stale": True},
    ]
    assert unparsed(files, dags, [{"filename": "b.py"}]) == []
    assert unparsed(files, dags, []) == ["b.py"]
    assert [d["dag_id"] for d in project_dags(files, dags)] == ["a1"]


def test_up_names_the_active_dags_and_the_landing_zone():
    dags = [
        {"dag_id": "busi_training", "timetable_description": "Triggered by assets"},
        {"dag_id": "busi_new_data", "timetable_description": "", "timetable_summary": "0:05:00"},
    ]
    errors = [{"filename": "broken.py", "stack_trace": "Traceback\nNameError: x"}]
    text = "\n".join(dag_lines(dags, errors, "/p/landing"))
    assert "DAGs active" in text
    assert text.index("busi_new_data") < text.index("busi_training")
    assert "every 0:05:00" in text
    assert "Triggered by assets" in text
    assert "broken.py: import error: NameError: x" in text
    assert "landing zone: /p/landing" in text
    assert "_READY" in text


def test_parse_proc_stat_with_an_awkward_command_name():
    fields = ["S", "1", "42", "42"] + ["0"] * 15 + ["123456", "0"]
    stat = parse_proc_stat("4242 (airflow (x) y) " + " ".join(fields))
    assert stat == ProcStat(pid=4242, state="S", pgrp=42, session=42, start_time=123456)
    own = proc_stat(os.getpid())
    assert own.pid == os.getpid()
    assert own.state != "Z"


def test_read_state(tmp_path):
    assert read_state(tmp_path) is None
    write_state(tmp_path, {"services": {"mlflow": {"pid": 1}}})
    assert running_services(read_state(tmp_path)) == {"mlflow": {"pid": 1}}
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(BusiError, match="not a platform state file"):
        read_state(tmp_path)


# --------------------------------------------------------------------------- processes


def test_down_when_nothing_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BUSI_PLATFORM_DIR", str(tmp_path / "state"))
    assert main_down(["--project", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == "not running"


def test_a_taken_port_is_a_clear_error_and_starts_nothing(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        s = settings(tmp_path, BUSI_MLFLOW_PORT=str(port), BUSI_AIRFLOW_PORT=str(free_port()))
        with pytest.raises(BusiError, match=rf"port {port} .*BUSI_MLFLOW_PORT"):
            up(s, out=lambda line: None)
    assert read_state(s.state_dir) is None


def test_a_stale_state_is_cleared_before_starting(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    record = {"pid": gone.pid, "start_time": proc_stat(gone.pid).start_time}
    gone.wait()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        s = settings(tmp_path, BUSI_AIRFLOW_PORT=str(port), BUSI_MLFLOW_PORT=str(free_port()))
        s.state_dir.mkdir(parents=True)
        write_state(s.state_dir, {"ports": {}, "services": {"mlflow": record}})
        said = []
        with pytest.raises(BusiError, match=rf"port {port} .*BUSI_AIRFLOW_PORT"):
            up(s, out=said.append)
    assert said == ["the processes recorded in state.json are gone; starting afresh"]
    assert running_services(read_state(s.state_dir)) == {}


def test_stop_never_signals_a_process_it_did_not_start():
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    record = {"pid": proc.pid, "start_time": proc_stat(proc.pid).start_time}
    try:
        # The same pid with another start time: a different process, left alone.
        assert stop_services({"x": {**record, "start_time": record["start_time"] + 1}}) == []
        assert proc.poll() is None
        assert is_ours(record)
        assert stop_services({"x": record}, timeout=10) == []
        assert proc.wait(timeout=5) == -signal.SIGTERM
    finally:
        proc.kill()
        proc.wait()


def test_a_service_that_dies_while_starting_shows_its_log(tmp_path):
    port = free_port()
    server = Service(
        "web",
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
        dict(os.environ),
        tmp_path / "web.log",
        health_url=f"http://127.0.0.1:{port}/",
    )
    broken = Service(
        "broken",
        [sys.executable, "-c", "import sys; print('boom: no config'); sys.exit(3)"],
        dict(os.environ),
        tmp_path / "broken.log",
    )
    started, records = {}, {}
    for svc in (server, broken):
        proc, records[svc.name] = start_service(svc, tmp_path)
        started[svc.name] = (svc, proc)
    try:
        with pytest.raises(BusiError, match=r"(?s)broken exited with code 3.*boom: no config"):
            wait_ready(started, timeout=30)
    finally:
        stop_services(records, timeout=10)
    assert started["web"][1].wait(timeout=5) is not None
    assert not port_answers(port)


# --------------------------------------------------------------------------- real services

ENVCHECK_DAG = """
import pendulum
from airflow.sdk import dag, task


@dag(schedule=None, start_date=pendulum.datetime(2024, 1, 1), catchup=False)
def platform_envcheck():
    @task
    def record_env():
        import json, os
        keys = ("MLFLOW_TRACKING_URI", "BUSI_PROJECT_DIR", "PATH")
        out = os.path.join(os.environ["BUSI_PROJECT_DIR"], "task_env.json")
        with open(out, "w") as f:
            json.dump({k: os.environ.get(k) for k in keys}, f)

    record_env()


platform_envcheck()
"""


def busi(*args: str, env: dict, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "components", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def listening_addresses(pids) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket the given processes listen on (IPv4 and IPv6)."""
    inodes = set()
    for pid in pids:
        with_fds = Path(f"/proc/{pid}/fd")
        for fd in with_fds.iterdir() if with_fds.exists() else []:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                addr, port = cols[1].split(":")
                raw = bytes.fromhex(addr)
                if len(raw) == 4:
                    host = socket.inet_ntop(socket.AF_INET, raw[::-1])
                else:
                    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                    host = socket.inet_ntop(socket.AF_INET6, words)
                found.add((host, int(port, 16)))
    return found


def platform_pids(state: dict) -> list[int]:
    return [pid for rec in running_services(state).values() for pid in session_members(rec)]


def poll(probe, timeout: float):
    """The first truthy value of probe(), or its last value after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not (value := probe()) and time.monotonic() < deadline:
        time.sleep(1)
    return value


@pytest.fixture
def platform_project(tmp_path):
    """A project with one DAG, a private platform folder and free ports; whatever the test
    leaves running is stopped at the end."""
    project = tmp_path / "project"
    (project / "dags").mkdir(parents=True)
    (project / "dags" / "platform_envcheck.py").write_text(ENVCHECK_DAG)
    env = {
        **os.environ,
        "BUSI_PLATFORM_DIR": str(tmp_path / "platform"),
        "BUSI_MLFLOW_PORT": str(free_port()),
        "BUSI_AIRFLOW_PORT": str(free_port()),
    }
    env.pop("BUSI_LANDING", None)  # the default: <project>/landing
    yield project, env
    state = read_state(tmp_path / "platform")
    if running_services(state):
        stop_services(running_services(state), timeout=20)


@pytest.mark.slow
def test_a_service_that_fails_to_start_is_reported_and_the_rest_stopped(platform_project):
    project, env = platform_project
    env["BUSI_MLFLOW_BACKEND_URI"] = "bogus://nowhere"
    proc = busi("up", "--project", str(project), env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "mlflow exited with code" in proc.stderr
    assert "bogus://nowhere" in proc.stderr  # the tail of MLflow's log
    assert "stopped what had started" in proc.stderr
    state = read_state(Path(env["BUSI_PLATFORM_DIR"]))
    assert running_services(state) == {}
    assert port_free(int(env["BUSI_AIRFLOW_PORT"]))


@pytest.mark.slow
def test_up_then_down(platform_project):
    project, env = platform_project
    state_dir = Path(env["BUSI_PLATFORM_DIR"])
    mlflow_port, airflow_port = int(env["BUSI_MLFLOW_PORT"]), int(env["BUSI_AIRFLOW_PORT"])
    mlflow_url, airflow_url = f"http://127.0.0.1:{mlflow_port}", f"http://127.0.0.1:{airflow_port}"

    first = busi("up", "--project", str(project), env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    state = read_state(state_dir)
    assert state["urls"] == {"mlflow": mlflow_url, "airflow": airflow_url}
    assert f"MLflow UI:  {mlflow_url}" in first.stdout
    assert f"Airflow UI: {airflow_url}" in first.stdout
    assert "busi down" in first.stdout
    assert str(state_dir / "logs") in first.stdout
    wait_for_http(f"{mlflow_url}/health", timeout=5)
    wait_for_http(f"{airflow_url}/api/v2/monitor/health", timeout=5)
    # Every socket any platform process listens on is on 127.0.0.1: the two UIs only.
    pids = platform_pids(state)
    assert listening_addresses(pids) == {("127.0.0.1", mlflow_port), ("127.0.0.1", airflow_port)}

    # The generated password, printed once, is the one in Airflow's file, and logs in.
    password_file = Path(state["password_file"])
    password = json.loads(password_file.read_text())["admin"]
    assert first.stdout.count(password) == 1
    assert oct(password_file.stat().st_mode & 0o777) == "0o600"
    token = airflow_token(airflow_url, password)

    again = busi("up", "--project", str(project), env=env)
    assert again.returncode == 0, again.stderr
    assert "already up" in again.stdout
    assert password not in again.stdout
    assert str(password_file) in again.stdout
    assert read_state(state_dir)["services"] == state["services"]

    # The project's dags/ is read, without Airflow's examples (the DB was migrated fresh), and
    # its DAG, created paused (it does not say otherwise), was unpaused and named by `up`;
    # the landing zone the new-data DAG watches exists.
    dags = airflow_api(airflow_url, token, "GET", "/dags")["dags"]
    assert [(d["dag_id"], d["is_paused"]) for d in dags] == [("platform_envcheck", False)]
    assert "DAGs active" in first.stdout
    assert "  platform_envcheck" in first.stdout
    assert f"landing zone: {project / 'landing'}" in first.stdout
    assert (project / "landing").is_dir()

    # A task run by the scheduler sees the tracking server, the project and the venv.
    airflow_api(
        airflow_url, token, "POST", "/dags/platform_envcheck/dagRuns", {"logical_date": None}
    )
    seen = project / "task_env.json"
    assert poll(seen.exists, timeout=90), log_tail(state_dir / "logs" / "airflow-scheduler.log")
    task_env = json.loads(seen.read_text())
    assert task_env["MLFLOW_TRACKING_URI"] == mlflow_url
    assert task_env["BUSI_PROJECT_DIR"] == str(project)
    assert task_env["PATH"].split(os.pathsep)[0] == str(VENV_BIN)

    down = busi("down", "--project", str(project), env=env, timeout=90)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "stopped" in down.stdout
    assert not [pid for pid in pids if _alive(proc_stat(pid))]
    assert port_free(mlflow_port)
    assert port_free(airflow_port)
    assert running_services(read_state(state_dir)) == {}
    assert busi("down", "--project", str(project), env=env).stdout.strip() == "not running"
