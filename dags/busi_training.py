"""busi_training: the training pipeline, one task per step, scheduled on new data."""

from __future__ import annotations

from airflow.sdk import Asset, dag, task

from busi.orchestration.dag_settings import (
    DATA_ASSET_NAME,
    DATA_ASSET_URI,
    DVC_STAGES,
    TRAINING_STEPS,
    dag_settings,
)
from busi.orchestration.execution import execution_mode

DOC = """
### busi_training

Trains and evaluates the BUSI chain and promotes the model only if it is better.

- `validate_data` ... `evaluate_models`, `stress_test_models`: `dvc repro --single-item
  <stage>`; DVC skips a stage whose inputs did not change.
- `register_model`: `busi register-model` registers `busi-unet`, `busi-classifier` and
  `busi-pipeline`, alias `challenger`.
- `evaluate_external`: `busi evaluate-external` scores the challenger on the external sets
  in `params.yaml: evaluate_external` (none configured: it says so and passes); the figures
  go on the version and into the promotion guard.
- `promote_model`: `busi promote-model` moves `champion` if the rule in
  `params.yaml: promote_model` says so.

`BUSI_EXECUTION=kubernetes` runs the DVC stages as Kubernetes pods (the project image,
`busi run-step`; the training steps on GPU nodes), each pulling its inputs from the DVC
remote and pushing its outputs; the registry steps stay in the Airflow worker.

Runs when `busi_new_data` publishes a new data version (Asset `busi_data`), or by hand.
With `BUSI_DVC_SYNC=1` a run triggered by the Asset trains on the `data.dvc` its newest
event carries, whichever worker merged it.
One run at a time. All tasks of a run share one MLflow parent run (tag `airflow_run_id`);
each step is a nested run. The `profile` param picks the data: `default` (real data) or
`smoke` (synthetic, scratch workspace).
"""


def _on_failure(context) -> None:
    from busi.orchestration.tasks import fail_parent

    fail_parent(context["run_id"], context["dag"].dag_id, context["params"].get("profile"))


def _step(step: str):
    @task(task_id=step)
    def run(**context) -> dict:
        from busi.orchestration.tasks import run_step

        return run_step(
            step,
            context["run_id"],
            context["dag"].dag_id,
            context["params"]["profile"],
            getattr(context["dag_run"], "consumed_asset_events", None) or (),
        )

    return run()


@dag(
    dag_id="busi_training",
    schedule=[Asset(name=DATA_ASSET_NAME, uri=DATA_ASSET_URI)],
    tags=["busi", "training", "mlflow", "dvc"],
    doc_md=DOC,
    on_failure_callback=_on_failure,
    **dag_settings(execution_timeout_minutes=120),
)
def busi_training():
    in_pods = execution_mode() == "kubernetes"
    previous = None
    for step in TRAINING_STEPS:
        if in_pods and step in DVC_STAGES:
            from busi.orchestration.pods import pod_operator

            current = pod_operator(step)
        else:
            current = _step(step)
        if previous is not None:
            previous >> current
        previous = current


busi_training()
