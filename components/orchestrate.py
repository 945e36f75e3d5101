"""What the Airflow tasks call: one pipeline step per task, in the right workspace, under
the DAG run's MLflow parent run. The DAG files only wire these functions.

Settings (environment of the Airflow workers, set by ``busi up``):
- ``BUSI_PROJECT_DIR``: the project (default: the folder above ``components/``).
- ``BUSI_PROFILE``: ``default`` (real data, the project itself) or a profile name, which
  runs in ``scratch/<profile>`` (or ``BUSI_WORKSPACE``); the DAG param ``profile`` wins.
- ``MLFLOW_TRACKING_URI``: default the workspace's ``mlflow.db``.
- ``BUSI_LANDING``: the landing zone of new data (a folder, or ``s3://bucket/prefix``);
  default ``<project>/landing``.

Each DVC stage runs as ``dvc repro --single-item <stage>``: DVC skips it when its inputs
did not change and records what ran in ``dvc.lock``. The registry steps run their ``busi``
command. Every task looks up the DAG run's parent MLflow run by the tag
``airflow_run_id`` (creating it on the first task), so a retried task adds no second parent,
and the step's own run is resumed rather than duplicated (``tracking.step_run``).

Nothing heavy is imported here at module level: the DAG files import it when parsed.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

# The DVC stages, in order (the same names as dvc.yaml, components/ and the busi commands).
DVC_STAGES = (
    "validate_data",
    "split_data",
    "augment_data",
    "train_unet",
    "crop_rois",
    "train_classifier",
    "evaluate_models",
)
REGISTRY_STEPS = ("register_model", "promote_model")
TRAINING_STEPS = DVC_STAGES + REGISTRY_STEPS
# The dataset's version, as an Airflow Asset: busi_new_data updates it, busi_training
# is scheduled on it.
DATA_ASSET_NAME = "busi_data"
DATA_ASSET_URI = "busi://data/busi"


def dag_settings(execution_timeout_minutes: int) -> dict:
    """What every busi DAG shares: owner, retries with backoff, one run at a time, and the
    ``profile`` param. Keyword arguments for ``@dag``."""
    from datetime import timedelta

    from airflow.sdk import Param

    return {
        "start_date": None,
        "catchup": False,
        "max_active_runs": 1,
        "default_args": {
            "owner": "busi-pipeline",
            "retries": 2,
            "retry_delay": timedelta(seconds=30),
            "retry_exponential_backoff": 2.0,
            "max_retry_delay": timedelta(minutes=10),
            "execution_timeout": timedelta(minutes=execution_timeout_minutes),
        },
        "params": {
            "profile": Param(
                None,
                type=["null", "string"],
                description="default (real data) or a profile (smoke); empty: $BUSI_PROFILE",
            )
        },
    }


def project_dir() -> Path:
    env = os.environ.get("BUSI_PROJECT_DIR")
    return Path(env).resolve() if env else Path(__file__).resolve().parents[1]


def workspace_for(profile: str, project: Path | None = None) -> Path:
    """The folder a profile's pipeline runs in (prepared on first use for scratch ones)."""
    project = project or project_dir()
    if profile == "default":
        return project
    from components.run_pipeline import prepare_workspace

    ws = os.environ.get("BUSI_WORKSPACE")
    return prepare_workspace(project, profile, Path(ws) if ws else None)


def step_command(step: str) -> list[str]:
    """The command one task runs for ``step``."""
    if step in DVC_STAGES:
        return [sys.executable, "-m", "dvc", "repro", "--single-item", step]
    if step in REGISTRY_STEPS:
        return [sys.executable, "-m", "components", step.replace("_", "-")]
    raise ValueError(f"unknown step '{step}'; the steps are {TRAINING_STEPS}")


def tracking_uri_for(ws: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{ws / 'mlflow.db'}"


def parent_run(airflow_run_id: str, dag_id: str, profile: str, ws: Path, uri: str) -> str:
    """The id of the DAG run's parent MLflow run, created by the first task that asks."""
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.environ["BUSI_PROFILE"] = profile
    cwd = Path.cwd()
    os.chdir(ws)  # lineage tags (data.dvc, dvc.lock) are read from the workspace
    try:
        import mlflow

        from components import tracking

        tracking._setup()
        found = mlflow.search_runs(
            filter_string=f"tags.airflow_run_id = '{airflow_run_id}' and tags.kind = 'pipeline'",
            output_format="list",
            max_results=1,
        )
        if found:
            return found[0].info.run_id
        client = mlflow.MlflowClient()
        run = client.create_run(
            mlflow.get_experiment_by_name(tracking.experiment_name()).experiment_id,
            run_name=f"{dag_id}-{profile}",
            tags={
                "kind": "pipeline",
                "airflow_run_id": airflow_run_id,
                "airflow_dag_id": dag_id,
                **tracking.lineage_tags(),
            },
        )
        return run.info.run_id
    finally:
        os.chdir(cwd)


def finish_parent(run_id: str, uri: str, ws: Path, status: str = "FINISHED") -> None:
    """Close the parent run with the evaluation's headline figures and the lineage as it is
    after the run (dvc.lock changes as stages run)."""
    import json

    import mlflow

    from components import tracking

    client = mlflow.MlflowClient(tracking_uri=uri)
    evaluation = ws / "metrics" / "evaluation.json"
    if evaluation.is_file():
        headline = json.loads(evaluation.read_text()).get("headline", {})
        for key, value in headline.items():
            if isinstance(value, int | float) and value == value:
                client.log_metric(run_id, key, float(value))
        client.log_artifact(run_id, str(evaluation))
    cwd = Path.cwd()
    os.chdir(ws)
    try:
        for key, value in tracking.lineage_tags().items():
            client.set_tag(run_id, key, value)
    finally:
        os.chdir(cwd)
    for path in (ws / "dvc.lock", ws / "params.yaml"):
        if path.is_file():
            client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, status)


def run_step(step: str, airflow_run_id: str, dag_id: str, profile: str | None = None) -> dict:
    """Run one pipeline step for one DAG run; raises on failure (Airflow retries)."""
    profile = profile or os.environ.get("BUSI_PROFILE", "default")
    ws = workspace_for(profile)
    uri = tracking_uri_for(ws)
    parent = parent_run(airflow_run_id, dag_id, profile, ws, uri)
    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "MLFLOW_TRACKING_URI": uri,
        "BUSI_PARENT_RUN_ID": parent,
        "BUSI_PROFILE": profile,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    command = step_command(step)
    logger.info("%s: %s (in %s, MLflow parent run %s)", step, " ".join(command), ws, parent)
    proc = subprocess.run(command, cwd=ws, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{step} failed (exit {proc.returncode}): see the log above")
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


def landing_zone(project: Path | None = None) -> str:
    return os.environ.get("BUSI_LANDING") or str((project or project_dir()) / "landing")


def ingest_new_data(profile: str | None = None) -> dict:
    """The busi_new_data task: merge the ready batches of the landing zone into the
    workspace's data and version it. Raises AirflowSkipException when nothing was merged, so
    the data Asset is not updated and no training is scheduled."""
    from dataclasses import asdict

    from components.ingest_batch import ingest_batches

    profile = profile or os.environ.get("BUSI_PROFILE", "default")
    ws = workspace_for(profile)
    result = ingest_batches(landing_zone(), ws, params=ws / "params.yaml")
    summary = {k: v for k, v in asdict(result).items() if _jsonable(v)}
    if not result.new_version:
        from airflow.sdk.exceptions import AirflowSkipException

        raise AirflowSkipException(f"no new data version: {result.message}")
    return summary


def _jsonable(value) -> bool:
    import json

    try:
        json.dumps(value)
    except TypeError:
        return False
    return True


def run_training(profile: str, source: Path | None, project: Path | None = None) -> dict:
    """What `make run` does: import the data (a new version if it changed), then run the
    busi_training DAG end to end through Airflow (`airflow dags test`, recorded in the
    platform's Airflow database, so the UI of `busi up` shows it), tracked to the
    platform's MLflow server when it is up, else to the workspace's local store."""
    from components import platform
    from components.errors import BusiError
    from components.ingest_data import ingest
    from components.run_pipeline import prepare_workspace, synthetic_source

    project = (project or project_dir()).resolve()
    settings = platform.settings_from_env(project)
    state = platform.read_state(settings.state_dir)
    running = platform.running_services(state)
    ws = prepare_workspace(project, profile, None)
    if profile == "default" and source is None:
        raise BusiError(
            "no data source: pass --source or set BUSI_SOURCE to the BUSI folder or zip"
        )
    source = source or synthetic_source(project, profile, ws)
    remote = None if profile == "default" else str(ws.parent / f"{ws.name}.dvc-remote")
    result = ingest(Path(source), ws, remote)
    logger.info("data version %s (%s)", result.version, "new" if result.changed else "unchanged")

    uri = settings.tracking_uri if "mlflow" in running else tracking_uri_for(ws)
    env = platform.airflow_env(
        settings.airflow_home, project, uri, api_port=settings.airflow_port, base=os.environ
    )
    env |= {"BUSI_PROFILE": profile, "BUSI_TRACKING": "on"}
    env.pop("BUSI_PARENT_RUN_ID", None)
    platform.ensure_airflow_db(env)
    airflow = str(Path(sys.executable).parent / "airflow")
    for args in (["dags", "reserialize"], ["dags", "unpause", "busi_training"]):
        subprocess.run([airflow, *args], env=env, check=True, capture_output=True)
    proc = subprocess.run([airflow, "dags", "test", "busi_training"], env=env)
    if proc.returncode != 0:
        raise BusiError(f"the busi_training DAG run failed (exit {proc.returncode}); see above")
    return {
        "workspace": str(ws),
        "data_version": result.version,
        "tracking_uri": uri,
        "airflow_ui": state.get("urls", {}).get("airflow") if running else None,
        "mlflow_ui": settings.tracking_uri if "mlflow" in running else None,
    }


def main_run_training(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="busi run-training",
        description="import the data and run the busi_training DAG end to end through Airflow",
    )
    parser.add_argument("--profile", default=os.environ.get("BUSI_PROFILE", "default"))
    parser.add_argument(
        "--source",
        type=Path,
        default=Path(os.environ["BUSI_SOURCE"]) if os.environ.get("BUSI_SOURCE") else None,
    )
    args = parser.parse_args(argv)
    out = run_training(args.profile, args.source)
    print(f"workspace: {out['workspace']}\ndata version: {out['data_version']}")
    if out["airflow_ui"]:
        print(f"Airflow: {out['airflow_ui']} (DAG busi_training)")
        print(f"MLflow:  {out['mlflow_ui']} (experiment busi-pipeline, model busi-pipeline)")
    else:
        print(
            f"MLflow: {out['tracking_uri']}. `make up` starts the Airflow and MLflow UIs, "
            "where this run shows."
        )
    return 0
