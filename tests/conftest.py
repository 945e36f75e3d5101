"""Shared fixtures: synthetic BUSI-like corpora and a scratch DVC project."""

from __future__ import annotations

import contextlib
import functools
import glob
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from busi.data.synthetic import make_busi_like

REPO_ROOT = Path(__file__).resolve().parents[1]

# The integration tier: a test that is marked slow or uses one of these (services, a trained
# smoke chain, the real data) is marked ``integration``; the rest is the unit tier that
# `make test-fast` runs (`pytest -m "not integration"`).
INTEGRATION_FIXTURES = frozenset(
    {
        "smoke_run",
        "smoke_champion",
        "fresh_smoke_champion",
        "mlflow_server",
        "moto_server",
        "postgres",
        "busi",
    }
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("slow") or INTEGRATION_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.integration)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        check_units(items)
        items[:] = longest_units_first(items)


# `make test` runs the suite on pytest-xdist workers (``-n 2 --dist loadfile``), each taking
# whole units of work. A unit is one test file, so that its module fixtures are built once,
# except for files that must share a worker:
# - the users of ``smoke_champion`` (a registry store built once per worker that uses it);
# - the files that run DVC commands in the smoke run's workspace (DVC's lock is per project;
#   test_test_units.py finds every file that uses the smoke run and runs DVC);
# - the two files that add git worktrees to this checkout (git locks its worktree list).
# The smoke run itself is trained once for the whole session (``smoke_run``: a file lock).
CHAMPION_UNIT = "smoke-champion"
SMOKE_DVC_UNIT = "smoke-workspace-dvc"
WORKTREE_UNIT = "git-worktrees"
CHAMPION_FIXTURES = frozenset({"smoke_champion", "fresh_smoke_champion"})
SMOKE_DVC_FILES = frozenset(
    {"tests/code/test_smoke_chain.py", "tests/code/test_stress_test_models.py"}
)
WORKTREE_FILES = frozenset({"tests/code/test_reproduce.py", "tests/code/test_model_compat.py"})
# The longest units first (measured: docs/testing.md), so that the workers end together.
# The smoke run's trainer (the champion's users) first, beside the cluster: the worktree
# reproduction, which needs the smoke run, then starts on whichever worker frees first
# without waiting for it (second, it would wait at the smoke run's lock).
LONGEST_FIRST = (
    CHAMPION_UNIT,
    "tests/dags/test_cluster.py",
    WORKTREE_UNIT,
    "tests/dags/test_dags_end_to_end.py",
    "tests/code/test_register_model.py",
    "tests/dags/test_new_data_loop.py",
    "tests/code/test_resume.py",
    "tests/code/test_unet_folds.py",
    "tests/code/test_platform.py",
)
_CHAMPION_NAME = re.compile(r"\b(?:" + "|".join(sorted(CHAMPION_FIXTURES)) + r")\b")


@functools.cache
def unit_of(path: str) -> str:
    """The unit of work of a test file (its path relative to the project): the file itself,
    or the shared unit it belongs to (see above). The xdist controller knows test ids only,
    hence a look at the source for the champion's users; ``check_units`` proves it against
    the fixtures each test really uses."""
    if path in WORKTREE_FILES:
        return WORKTREE_UNIT
    if path in SMOKE_DVC_FILES:
        return SMOKE_DVC_UNIT
    if _CHAMPION_NAME.search((REPO_ROOT / path).read_text()):
        return CHAMPION_UNIT
    return path


def _file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def check_units(items) -> None:
    """Fail the session when a test uses a champion fixture (directly or through another
    fixture) but its file would be scheduled outside the champion's unit."""
    wrong = sorted(
        {
            _file_of(item.nodeid)
            for item in items
            if CHAMPION_FIXTURES & set(item.fixturenames)
            and unit_of(_file_of(item.nodeid)) != CHAMPION_UNIT
        }
    )
    if wrong:
        raise pytest.UsageError(
            f"{wrong} use smoke_champion through a fixture whose name the file never says, so "
            "two pytest-xdist workers could both build it: name the fixture in the file"
        )


def longest_units_first(items) -> list:
    """The items of the known long units first, in ``LONGEST_FIRST``'s order; the rest keep
    pytest's order (the sort is stable)."""

    def rank(item) -> int:
        unit = unit_of(_file_of(item.nodeid))
        return LONGEST_FIRST.index(unit) if unit in LONGEST_FIRST else len(LONGEST_FIRST)

    return sorted(items, key=rank)


class _UnitScheduling:
    """Makes ``--dist loadfile`` schedule ``unit_of`` units, in the order collected."""

    @pytest.hookimpl
    def pytest_xdist_make_scheduler(self, config, log):
        if config.getoption("dist") != "loadfile":
            return None
        from xdist.scheduler import LoadScopeScheduling

        class UnitScheduling(LoadScopeScheduling):
            def _split_scope(self, nodeid: str) -> str:
                return unit_of(_file_of(nodeid))

        config.option.loadscopereorder = False  # keep longest_units_first's order
        return UnitScheduling(config, log)


def pytest_configure(config):
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_UnitScheduling(), "busi-test-units")


MLFLOW_PROCESS_SETTINGS = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
)


@pytest.fixture(autouse=True)
def _no_tracking_by_default(monkeypatch):
    """Steps track to MLflow unless told not to; tests opt in with their own store."""
    monkeypatch.setenv("BUSI_TRACKING", "off")
    monkeypatch.delenv("BUSI_PARENT_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    before = {k: os.environ.get(k) for k in MLFLOW_PROCESS_SETTINGS}
    yield
    # mlflow.set_tracking_uri / set_registry_uri are process-wide (module globals, exported to
    # the environment too) and beat the environment: a URI set by one test (or by the code
    # under test) must not leak into the next.
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    if "mlflow" in sys.modules:
        import mlflow

        while mlflow.active_run() is not None:
            mlflow.end_run()
        from mlflow.tracking import _model_registry, _tracking_service

        _tracking_service.utils._tracking_uri = None
        _model_registry.utils._registry_uri = None


# What `make run` leaves in the project (the real data, its version, models, metrics, the
# local MLflow store). The suite runs the same before and after `make run`: no test reads
# these (each makes its own in a workspace of its own) and none may change them.
PROJECT_STATE = (
    "dvc.lock",
    "data.dvc",
    "data",
    "metrics",
    "plots",
    "models",
    "reports",
    "mlflow.db",
    "mlartifacts",
    "mlruns",
    ".dvc/cache",
)


@pytest.fixture(scope="session", autouse=True)
def _project_state_untouched():
    before = _snapshot(REPO_ROOT, PROJECT_STATE)
    yield
    after = _snapshot(REPO_ROOT, PROJECT_STATE)
    changed = sorted({k for k in before.keys() | after.keys() if before.get(k) != after.get(k)})
    assert not changed, f"the tests changed the project's own state: {changed[:20]}"


@pytest.fixture
def corpus(tmp_path: Path) -> tuple[Path, list]:
    """A clean synthetic corpus: 12 images per class, one with two masks, some RGB."""
    root = tmp_path / "busi"
    written = make_busi_like(root, n_per_class=12, seed=1)
    return root, written


def dark_lesion_splits(folder: Path) -> list[dict]:
    """A BUSI-layout folder of one benign and one normal 32 x 32 image per split, the benign
    one with a dark 8 x 8 lesion (grey 30 on 100) and its mask; returns the split rows
    (id, path, class, split, mask_files) that crop_rois reads."""
    import numpy as np
    from PIL import Image

    rows = []
    for split in ("train", "val", "test"):
        for cls in ("benign", "normal"):
            name = f"{cls}/{cls} ({split}).png"
            (folder / cls).mkdir(exist_ok=True)
            pixels = np.full((32, 32), 100, np.uint8)
            masks = ""
            if cls == "benign":
                pixels[8:16, 8:16] = 30  # a dark lesion
                mask = np.zeros((32, 32), np.uint8)
                mask[8:16, 8:16] = 255
                Image.fromarray(mask).save(folder / cls / f"{cls} ({split})_mask.png")
                masks = f"{cls} ({split})_mask.png"
            Image.fromarray(pixels).save(folder / name)
            rows.append({"id": name[:-4], "path": name, "class": cls, "split": split,
                         "mask_files": masks})  # fmt: skip
    return rows


def run_dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, f"dvc {args} failed: {proc.stderr}"
    return proc


@pytest.fixture
def dvc_project(tmp_path: Path) -> Path:
    """An empty git + DVC project with this repo's params.yaml and dvc.yaml."""
    repo = tmp_path / "project"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    run_dvc(repo, "init", "-q")
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(REPO_ROOT / name, repo / name)
    return repo


# Images per class of the smoke run's BUSI_SOURCE: not the smoke profile's 12.
FOREIGN_PER_CLASS = 14


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> dict:
    """One run of the whole pipeline on the smoke profile, in a scratch workspace, tracked to
    its own MLflow store. Shared by the chain, DAG and model tests; read it, don't change it.

    It runs as in a user's shell after `make run`: ``BUSI_SOURCE`` points at other data
    (``foreign_source``, BUSI-like but not the smoke profile's), which a synthetic profile
    must ignore (``test_profile_isolation``). In CI the project has the real data imported
    beside it too (``.ci/run`` imports it before `make test`).

    Under pytest-xdist the first worker that needs it trains it, under a file lock in the
    folder the workers' temporary folders share, and the others read what it left."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return _train_smoke(tmp_path_factory.mktemp("smoke"))
    shared = tmp_path_factory.getbasetemp().parent
    run = built_once(shared, "smoke", lambda: _train_smoke(shared / "smoke"))
    for key in ("workspace", "foreign_source"):
        run[key] = Path(run[key])
    return run


def built_once(folder: Path, name: str, build) -> dict:
    """``build()`` (a JSON-able dict) run by the first process that asks, under a file lock in
    ``folder``; the others wait for it and read what it wrote (paths as strings). A build that
    raises is recorded, and the others fail at once with its reason instead of building again."""
    import fcntl
    import json

    record = folder / f"{name}.json"
    with open(folder / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not record.is_file():
            try:
                built = build()
            except Exception as failed:  # pytest's skip and fail outcomes are not recorded
                reason = f"{type(failed).__name__}: {failed}"
                record.write_text(json.dumps({"failed": reason}))
                raise
            record.write_text(json.dumps(built, default=str))
    result = json.loads(record.read_text())
    if set(result) == {"failed"}:
        pytest.fail(f"{name} failed in another pytest-xdist worker: {result['failed']}")
    return result


def _train_smoke(base: Path) -> dict:
    import json

    base.mkdir(parents=True, exist_ok=True)
    workspace = base / "workspace"
    foreign = base / "Dataset_BUSI_with_GT"
    make_busi_like(foreign, n_per_class=FOREIGN_PER_CLASS, seed=5)
    uri = f"sqlite:///{base / 'mlflow.db'}"
    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "BUSI_TRACKING": "on",
        "BUSI_SOURCE": str(foreign),
        "MLFLOW_TRACKING_URI": uri,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    env.pop("BUSI_PARENT_RUN_ID", None)
    before = _snapshot(REPO_ROOT, PROJECT_STATE)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "components",
            "run-pipeline",
            "--profile",
            "smoke",
            "--workspace",
            str(workspace),
            "--project",
            str(REPO_ROOT),
        ],
        cwd=base,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return {
        "workspace": workspace,
        "foreign_source": foreign,
        "tracking_uri": uri,
        "env": env,
        "stdout": proc.stdout,
        "evaluation": json.loads((workspace / "metrics" / "evaluation.json").read_text()),
        "project_before": before,
        "project_after": _snapshot(REPO_ROOT, PROJECT_STATE),
    }


def _snapshot(root: Path, names) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file under the given paths of the project."""
    out = {}
    for name in names:
        path = root / name
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for f in files if path.exists() else []:
            stat = f.stat()
            out[str(f.relative_to(root))] = (stat.st_size, stat.st_mtime_ns)
    return out


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, timeout: float = 60.0, proc=None) -> None:
    """Until ``url`` answers 200, or fail (with the process's exit if it died)."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:3]} exited with {proc.returncode} before {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


@contextlib.contextmanager
def service_process(command: list[str], health_url: str, log_path: Path, env=None, timeout=120.0):
    """A server process (``busi serve``, ``busi app``...) in its own session, its output in
    ``log_path``; yields it once ``health_url`` answers 200 and stops it afterwards."""
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_for_http(health_url, timeout=timeout, proc=proc)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> str:
    """A real MLflow tracking server process on 127.0.0.1 (SQLite backend, artifacts proxied
    to a local folder); yields its URI."""
    base = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{base / 'mlflow.db'}",
        "--artifacts-destination",
        str(base / "artifacts"),
    ]
    uri = f"http://127.0.0.1:{port}"
    with service_process(command, f"{uri}/health", base / "server.log", timeout=90):
        yield uri


@pytest.fixture
def moto_server():
    """A moto S3 server process on 127.0.0.1 for the duration of one test; yields its URL."""
    import socket
    import time

    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("moto server did not start within 30 s")
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


class SmokeChampion:
    """The smoke run's models registered into their own SQLite store, version 1 made
    champion. ``register_new`` adds a version (same weights, other crop settings, so another
    fingerprint) and ``promote`` moves the champion alias by hand."""

    def __init__(self, smoke_run: dict, base: Path):
        self.workspace = Path(smoke_run["workspace"])
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.tracking_uri = f"sqlite:///{base / 'mlflow.db'}"
        self.env = {**os.environ, "MLFLOW_TRACKING_URI": self.tracking_uri}
        self.version = self.register_new()
        self.promote(self.version)

    def _tracking_env(self):
        from unittest import mock

        return mock.patch.dict(
            os.environ, {"BUSI_TRACKING": "on", "MLFLOW_TRACKING_URI": self.tracking_uri}
        )

    def register_new(self, margin: float | None = None) -> int:
        import json

        from components.register_model import register

        ws = self.workspace
        summary = ws / "data/rois/summary.json"
        if margin is not None:
            content = json.loads(summary.read_text())
            content["config"]["margin"] = margin
            summary = self.base / f"summary-margin-{margin}.json"
            summary.write_text(json.dumps(content))
        with self._tracking_env():
            result = register(
                ws / "models/unet.keras",
                ws / "models/classifier.keras",
                summary,
                ws / "metrics/evaluation.json",
                ws / "data/splits.csv",
                self.tracking_uri,
            )
        return result.pipeline_version

    def promote(self, version: int) -> None:
        from components.promote_model import promote_by_hand

        with self._tracking_env():
            promote_by_hand(version, self.tracking_uri)


@pytest.fixture(scope="session")
def smoke_champion(smoke_run, tmp_path_factory) -> SmokeChampion:
    """A shared store with the smoke models as champion v1. Read it, don't move its aliases:
    a test that promotes or registers takes ``fresh_smoke_champion``."""
    return SmokeChampion(smoke_run, tmp_path_factory.mktemp("smoke-champion"))


@pytest.fixture(scope="module")
def fresh_smoke_champion(smoke_run, tmp_path_factory) -> SmokeChampion:
    """Like ``smoke_champion``, in a store of this test module's own, free to change."""
    return SmokeChampion(smoke_run, tmp_path_factory.mktemp("smoke-champion-own"))


@contextlib.contextmanager
def started_service(service, cwd: Path, timeout: float = 120.0):
    """Run one ``busi.local.services.Service`` (as `busi up` starts it) until the
    block ends, then stop its whole process group; fails with the tail of its log if it does not get
    ready."""
    from busi.local.processes import start_service, stop_services, wait_ready

    proc, record = start_service(service, cwd)
    try:
        wait_ready({service.name: (service, proc)}, timeout)
        yield record
    finally:
        stop_services({service.name: record}, timeout=20)
        proc.wait(timeout=10)


# ---------------------------------------------------------------- a throwaway PostgreSQL server

PG_USER = "busi"
PG_DATABASES = ("airflow", "mlflow")


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
            PG_USER,
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

    def create_database(self, name: str) -> None:
        conn = self.connect("postgres")
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE {name}")
        finally:
            conn.close()

    def uri(self, db: str, driver: str = "postgresql") -> str:
        return f"{driver}://{PG_USER}:{self.password}@127.0.0.1:{self.port}/{db}"

    def connect(self, db: str):
        import psycopg2

        return psycopg2.connect(
            host="127.0.0.1", port=self.port, user=PG_USER, password=self.password, dbname=db
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
        for db in PG_DATABASES:
            server.create_database(db)
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def pg_rows(server: Postgres, db: str, sql: str, *args) -> list[tuple]:
    conn = server.connect(db)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()
    finally:
        conn.close()
