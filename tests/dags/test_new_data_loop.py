"""The newcomer's loop through the real scheduler: `busi up` (quick profile), a batch in the
landing zone, and nothing else: busi_new_data merges it and its Asset event starts
busi_training, with no DAG switched on by hand."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from busi.local.processes import airflow_api, airflow_token, read_state
from busi.local.services import log_tail
from tests.code.test_platform import busi
from tests.conftest import free_port
from tests.dags.test_dags_end_to_end import land_batch

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def test_a_landed_batch_starts_training_after_busi_up(tmp_path):
    from busi.data.importer import ingest
    from busi.orchestration.workspace import prepare_workspace, synthetic_source

    ws = prepare_workspace(REPO, "quick", tmp_path / "workspace")
    ingest(synthetic_source(REPO, "quick", ws), ws, str(tmp_path / "dvc-remote"))
    before = (ws / "data.dvc").read_text()
    landing = tmp_path / "landing"
    land_batch(landing, "batch-001")  # waiting when the platform starts
    state_dir = tmp_path / "platform"
    env = {
        **os.environ,
        "BUSI_PLATFORM_DIR": str(state_dir),
        "BUSI_MLFLOW_PORT": str(free_port()),
        "BUSI_AIRFLOW_PORT": str(free_port()),
        # The project's DAGs, but nothing of the project's own stores.
        "BUSI_MLFLOW_BACKEND_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "BUSI_MLFLOW_ARTIFACTS": str(tmp_path / "mlartifacts"),
        "BUSI_PROFILE": "quick",
        "BUSI_WORKSPACE": str(ws),
        "BUSI_LANDING": str(landing),
        "DVC_NO_ANALYTICS": "1",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    started = time.monotonic()
    try:
        up = busi("up", "--project", str(REPO), env=env)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "DAGs active" in up.stdout
        assert f"landing zone: {landing}" in up.stdout
        assert "  busi_new_data" in up.stdout
        assert "  busi_training" in up.stdout
        state = read_state(state_dir)
        url = state["urls"]["airflow"]
        password = json.loads(Path(state["password_file"]).read_text())["admin"]
        token = airflow_token(url, password)

        def asset_runs() -> list[dict]:
            runs = airflow_api(url, token, "GET", "/dags/busi_training/dagRuns")
            return [r for r in runs["dag_runs"] if r["run_type"] == "asset_triggered"]

        deadline = time.monotonic() + 600  # a ceiling: under make test two workers share the CPU
        while not (runs := asset_runs()) and time.monotonic() < deadline:
            time.sleep(2)
        assert runs, log_tail(state_dir / "logs" / "airflow-scheduler.log", 60)
        print(f"busi up to the Asset-triggered training run: {time.monotonic() - started:.0f} s")
        assert (ws / "data.dvc").read_text() != before, "no new data version"
        assert (landing / "_done" / "batch-001" / "report.json").is_file()
    finally:
        down = busi("down", "--project", str(REPO), env=env, timeout=120)
        assert down.returncode == 0, down.stdout + down.stderr
