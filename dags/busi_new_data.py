"""busi_new_data: merge new images from the landing zone and publish a new data version."""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Asset, dag, task

from busi.orchestration.dag_settings import DATA_ASSET_NAME, DATA_ASSET_URI, dag_settings

DOC = """
### busi_new_data

Every few minutes, looks for ready batches in the landing zone (`BUSI_LANDING`: a folder,
by default `<project>/landing`, or `s3://bucket/prefix`). A batch is a folder in the BUSI
layout (`<batch>/benign/benign (1).png`, `..._mask.png`); it is ready when it holds a
`_READY` file or has not changed for `params.yaml: ingest_batch.settle_seconds`.

`ingest_batch` validates each file with the same checks as `validate_data`, moves bad files
to `<landing>/_quarantine/<batch>/` with a `report.json`, merges good ones into
`data/busi/`, records a new data version (`data.dvc`) and pushes it to the DVC remote.
Then it updates the Asset `busi_data` (extra: `data_version` and the new `data.dvc`), which
schedules `busi_training`. When nothing was merged (no batch ready, or every file bad) the
task is skipped: no Asset event, no training. All batches ready at one run are merged in
one version; one run at a time. With `BUSI_DVC_SYNC=1` (workers with work trees of their
own) the task first takes the `data.dvc` of the newest `busi_data` event and pulls it, so
each merge builds on the last one, whichever worker made it.
"""


@dag(
    dag_id="busi_new_data",
    schedule=timedelta(minutes=5),
    tags=["busi", "data", "dvc"],
    doc_md=DOC,
    **dag_settings(execution_timeout_minutes=30),
)
def busi_new_data():
    data = Asset(name=DATA_ASSET_NAME, uri=DATA_ASSET_URI)

    # Inlet too: with DVC sync the task reads the newest event's data.dvc before merging.
    @task(task_id="ingest_batch", inlets=[data], outlets=[data])
    def ingest_batch(**context) -> dict:
        from busi.orchestration.tasks import ingest_new_data

        return ingest_new_data(
            context["params"]["profile"],
            context["ti"].xcom_push,
            event_extra=context["outlet_events"][data].extra,
            latest_events=lambda: context["inlet_events"][data].ascending(False).limit(20),
        )

    ingest_batch()


busi_new_data()
