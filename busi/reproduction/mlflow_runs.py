"""What ``busi reproduce`` reads from and finds in the MLflow store: a run's record, the
files that define it, and the runs tagged as reproductions of it."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from busi.errors import BusiError

ARTIFACTS = ("params.yaml", "dvc.lock", "evaluation.json")


@dataclass(frozen=True)
class RunRecord:
    """What reproduce reads of an MLflow run."""

    run_id: str
    name: str
    experiment_id: str
    status: str
    tags: dict[str, str]
    metrics: dict[str, float]


def client_for(uri: str):
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        # MlflowClient would create an empty store there and then not find the run.
        raise BusiError(
            f"no MLflow store at {uri}: pass --tracking-uri (or set MLFLOW_TRACKING_URI) to the "
            "store the run was logged to"
        )
    from mlflow import MlflowClient

    return MlflowClient(uri)


def fetcher(client) -> Callable[[str], RunRecord | None]:
    from mlflow.exceptions import MlflowException

    def fetch(run_id: str) -> RunRecord | None:
        try:
            run = client.get_run(run_id)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise BusiError(f"MLflow could not read run {run_id}: {exc.message}") from exc
        return RunRecord(
            run_id=run.info.run_id,
            name=run.info.run_name or "",
            experiment_id=run.info.experiment_id,
            status=run.info.status,
            tags=dict(run.data.tags),
            metrics=dict(run.data.metrics),
        )

    return fetch


def download_artifacts(client, run_id: str, dest: Path) -> list[str]:
    """The run's files that define it (params.yaml, dvc.lock, evaluation.json) into dest."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    logged = {item.path for item in client.list_artifacts(run_id)}
    for name in ARTIFACTS:
        if name in logged:
            client.download_artifacts(run_id, name, str(dest))
    return sorted(set(ARTIFACTS) - logged)


def reproductions(client, experiment_id: str, original: str) -> set[str]:
    """The ids of the pipeline runs tagged as reproductions of ``original``."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.reproduces = '{original}' and tags.kind = 'pipeline'",
        max_results=1000,
    )
    return {run.info.run_id for run in runs}
