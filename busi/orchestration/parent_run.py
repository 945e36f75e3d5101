"""The DAG run's MLflow parent run: found by the tag ``airflow_run_id`` (created by the
first task that asks, so a retried task adds no second parent), and closed with the
headline figures and the lineage after the last step."""

from __future__ import annotations

import os
from pathlib import Path


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

        from busi import tracking

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

    from busi import tracking

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
