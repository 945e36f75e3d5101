"""What the Airflow tasks call: one pipeline step per task, in the right workspace, under
the DAG run's MLflow parent run. The DAG files only wire these functions.

Settings (environment of the Airflow workers, set by ``busi up``):
- ``BUSI_PROJECT_DIR``: the project (default: the checkout holding this code).
- ``BUSI_PROFILE``: ``default`` (real data, the project itself) or a profile name, which
  runs in ``scratch/<profile>`` (or ``BUSI_WORKSPACE``); the DAG param ``profile`` wins.
- ``MLFLOW_TRACKING_URI``: default the workspace's ``mlflow.db``.
- ``BUSI_LANDING``: the landing zone of new data (a folder, or ``s3://bucket/prefix``);
  default ``<project>/landing``.
- ``BUSI_EXECUTION``: ``local`` (default: tasks run in the Airflow worker) or ``kubernetes``
  (DVC stages run as pods from ``BUSI_IMAGE``; see ``busi.orchestration.pods``).
- ``BUSI_DVC_SYNC``: ``1`` makes each task pull its inputs from the DVC remote and push its
  outputs, so consecutive tasks may run on different workers; on by default with
  ``BUSI_EXECUTION=kubernetes``.

With DVC sync, what DVC does not store in its remote travels with the DAG run's MLflow
parent run, under the artifact folder ``run_state/`` (``busi.orchestration.run_state``):
``dvc.lock`` (which stages ran on what) and the stages' ``cache: false`` outputs (split,
reports, metrics, plots). Each task restores it before it runs and saves it after, so a
worker holding only the git checkout continues where the previous one stopped.

Each DVC stage runs as ``dvc repro --single-item <stage>``: DVC skips it when its inputs
did not change and records what ran in ``dvc.lock``. The registry steps run their ``busi``
command. Every task looks up the DAG run's parent MLflow run by the tag
``airflow_run_id`` (creating it on the first task; ``busi.orchestration.parent_run``), so a
retried task adds no second parent, and the step's own run is resumed rather than
duplicated (``tracking.step_run``).

Nothing heavy is imported here at module level: the DAG files import it when parsed.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from busi.orchestration import data_event
from busi.orchestration.dag_settings import TRAINING_STEPS
from busi.orchestration.execution import dvc_sync, step_commands
from busi.orchestration.parent_run import finish_parent, parent_run, tracking_uri_for
from busi.orchestration.preflight import check_params
from busi.orchestration.run_state import restore_run_state, save_run_state
from busi.orchestration.workspace import landing_zone, workspace_for

logger = logging.getLogger(__name__)


def run_step(
    step: str,
    airflow_run_id: str,
    dag_id: str,
    profile: str | None = None,
    triggering_events: Iterable = (),
) -> dict:
    """Run one pipeline step for one DAG run; raises on failure (Airflow retries).

    ``triggering_events``: the DAG run's Asset events; with DVC sync the work tree takes
    the newest one's data.dvc before the parent run is looked up or made, so the run trains
    on the version that triggered it whichever worker merged it (``data_event``)."""
    profile = profile or os.environ.get("BUSI_PROFILE", "default")
    ws = workspace_for(profile)
    if step == TRAINING_STEPS[0]:
        # before the DAG run trains anything (an Asset-triggered retrain too): every setting
        check_params(ws / "params.yaml")
    uri = tracking_uri_for(ws)
    sync = dvc_sync()
    data_before = data_event.read_data_dvc(ws)
    if sync and data_event.write_data_dvc(ws, data_event.newest_data_dvc(triggering_events)):
        logger.info("%s: data.dvc from the DAG run's newest busi_data event", step)
    parent = parent_run(airflow_run_id, dag_id, profile, ws, uri)
    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "MLFLOW_TRACKING_URI": uri,
        "BUSI_PARENT_RUN_ID": parent,
        "BUSI_PROFILE": profile,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    client = None
    if sync:
        import mlflow

        from busi.storage import s3_endpoint

        client = mlflow.MlflowClient(tracking_uri=uri)
        remote = os.environ.get("BUSI_DVC_REMOTE")
        if remote:
            from busi.data.versions import Dvc

            Dvc(ws).configure_remote(remote, s3_endpoint())
        restored = restore_run_state(client, parent, ws)
        logger.info("%s: restored %s from the DAG run's MLflow run", step, restored or "nothing")
        if data_event.pull_if_changed(ws, data_before, None, None):  # remote set above
            logger.info("%s: pulled data/busi at the run's data version", step)
    before, command, after = step_commands(step, sync)
    logger.info("%s: %s (in %s, MLflow parent run %s)", step, " ".join(command), ws, parent)
    for cmd in [*before, command, *after]:
        proc = subprocess.run(cmd, cwd=ws, env=env)
        if proc.returncode != 0:
            raise RuntimeError(
                f"{step} failed (exit {proc.returncode} from {' '.join(cmd[2:])}): see the log"
            )
    if sync:
        save_run_state(client, parent, ws)
    if step == TRAINING_STEPS[-1]:
        finish_parent(parent, uri, ws)
    return {"step": step, "workspace": str(ws), "mlflow_parent_run_id": parent}


def fail_parent(airflow_run_id: str, dag_id: str, profile: str | None = None) -> None:
    """Mark the DAG run's parent MLflow run failed (the DAG's failure callback)."""
    profile = profile or os.environ.get("BUSI_PROFILE", "default")
    ws = workspace_for(profile)
    uri = tracking_uri_for(ws)
    parent = parent_run(airflow_run_id, dag_id, profile, ws, uri)
    import mlflow

    mlflow.MlflowClient(tracking_uri=uri).set_terminated(parent, "FAILED")


def ingest_new_data(
    profile: str | None = None,
    xcom_push=None,
    event_extra: dict | None = None,
    latest_events: Callable[[], Iterable] | None = None,
) -> dict:
    """The busi_new_data task: merge the ready batches of the landing zone into the
    workspace's data and version it. Raises AirflowSkipException when nothing was merged, so
    the data Asset is not updated and no training is scheduled. ``xcom_push(key, value)``
    (the task instance's) gets the result as ``ingest_result`` in every case, so a batch held
    for drift or quarantined whole shows in XCom too, not only in the log.

    ``event_extra`` (the outlet event's extra) gets the new version and its data.dvc. With
    DVC sync the work tree first takes the newest ``busi_data`` event's data.dvc
    (``latest_events()``: the latest events, any order) and pulls that version, so the merge
    builds on the newest version wherever it was made (``data_event``)."""
    from dataclasses import asdict

    from components.ingest_batch import ingest_batches

    profile = profile or os.environ.get("BUSI_PROFILE", "default")
    ws = workspace_for(profile)
    if dvc_sync():
        from busi.storage import s3_endpoint

        newest = data_event.newest_data_dvc(latest_events() if latest_events else ())
        data_event.take_data_version(ws, newest, os.environ.get("BUSI_DVC_REMOTE"), s3_endpoint())
    result = ingest_batches(landing_zone(), ws, params=ws / "params.yaml")
    summary = {k: v for k, v in asdict(result).items() if _jsonable(v)}
    if xcom_push is not None:
        xcom_push(key="ingest_result", value=summary)
    if not result.new_version:
        from airflow.sdk.exceptions import AirflowSkipException

        raise AirflowSkipException(f"no new data version: {result.message}")
    if event_extra is not None:
        event_extra.update(
            data_event.event_extra(result.new_version, (ws / "data.dvc").read_text())
        )
    return summary


def _jsonable(value) -> bool:
    import json

    try:
        json.dumps(value)
    except TypeError:
        return False
    return True


def main_run_step(argv: list[str] | None = None) -> int:
    """``busi run-step STEP --airflow-run-id ID``: one task of busi_training outside the
    Airflow worker (what a Kubernetes pod runs)."""
    import json

    from busi.cli import parser_for

    parser = parser_for("run-step")
    parser.add_argument("step", choices=TRAINING_STEPS, help="the step (task id) to run")
    parser.add_argument("--airflow-run-id", required=True, help="the DAG run's run_id")
    parser.add_argument(
        "--dag-id",
        default="busi_training",
        help="the DAG the run belongs to (default: %(default)s)",
    )
    parser.add_argument("--profile", default=None, help="default: $BUSI_PROFILE or default")
    args = parser.parse_args(argv)
    out = run_step(args.step, args.airflow_run_id, args.dag_id, args.profile or None)
    print(json.dumps(out))
    return 0
