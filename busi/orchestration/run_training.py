"""``busi run-training`` (what `make run` does): import the data, then run the
busi_training DAG end to end through Airflow, or on the local cluster."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from busi.orchestration.parent_run import tracking_uri_for
from busi.orchestration.workspace import project_dir

logger = logging.getLogger(__name__)


def run_training(profile: str, source: Path | None, project: Path | None = None) -> dict:
    """What `make run` does: import the data (a new version if it changed), then run the
    busi_training DAG end to end through Airflow (`airflow dags test`, recorded in the
    platform's Airflow database, so the UI of `busi up` shows it), tracked to the
    platform's MLflow server when it is up, else to the workspace's local store."""
    from busi.data.importer import ingest
    from busi.errors import BusiError
    from busi.local.processes import ensure_airflow_db, read_state
    from busi.local.services import airflow_env, running_services, settings_from_env
    from busi.orchestration.preflight import check_params
    from busi.orchestration.workspace import prepare_workspace, resolve_source

    project = (project or project_dir()).resolve()
    settings = settings_from_env(project)
    state = read_state(settings.state_dir)
    running = running_services(state)
    # The tasks honour BUSI_WORKSPACE (workspace_for): the data must go where they look.
    ws = prepare_workspace(
        project,
        profile,
        Path(os.environ["BUSI_WORKSPACE"]) if os.environ.get("BUSI_WORKSPACE") else None,
    )
    check_params(ws / "params.yaml")
    source = resolve_source(project, profile, ws, source)
    remote = None if profile == "default" else str(ws.parent / f"{ws.name}.dvc-remote")
    result = ingest(Path(source), ws, remote)
    logger.info("data version %s (%s)", result.version, "new" if result.changed else "unchanged")

    uri = settings.tracking_uri if "mlflow" in running else tracking_uri_for(ws)
    env = airflow_env(
        settings.airflow_home, project, uri, api_port=settings.airflow_port, base=os.environ
    )
    env |= {"BUSI_PROFILE": profile, "BUSI_TRACKING": "on"}
    env.pop("BUSI_PARENT_RUN_ID", None)
    ensure_airflow_db(env)
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
    from busi.cli import add_profile_options, parser_for

    parser = parser_for("run-training")
    add_profile_options(parser)
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="trigger the DAG run on `busi up --cluster` through Airflow's REST API and follow "
        "it (the cluster's profile, $BUSI_CLUSTER_PROFILE; --profile when not default)",
    )
    args = parser.parse_args(argv)
    if args.cluster:
        from busi.local.cluster_run import run_training_cluster

        profile = None if args.profile == "default" else args.profile
        result = run_training_cluster(project_dir(), profile=profile)
        return 0 if result["state"] == "success" else 1
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
