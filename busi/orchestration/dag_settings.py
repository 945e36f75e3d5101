"""What the DAG files wire: the training steps in order, the data Asset and the settings
every busi DAG shares. Nothing heavy is imported here: the DAG files import it when parsed."""

from __future__ import annotations

# The DVC stages, in order (the same names as dvc.yaml, components/ and the busi commands).
DVC_STAGES = (
    "validate_data",
    "split_data",
    "augment_data",
    "train_unet",
    "train_unet_folds",
    "crop_rois",
    "train_classifier",
    "evaluate_models",
    "stress_test_models",
)

REGISTRY_STEPS = ("register_model", "evaluate_external", "promote_model")

TRAINING_STEPS = DVC_STAGES + REGISTRY_STEPS

# The dataset's version, as an Airflow Asset: busi_new_data updates it, busi_training
# is scheduled on it.
DATA_ASSET_NAME = "busi_data"

DATA_ASSET_URI = "busi://data/busi"


# Seconds before a failed task's first retry (doubled for each further try, at most 10 min);
# BUSI_RETRY_DELAY (1-3600) changes it: the tests of the local cluster shorten it.
DEFAULT_RETRY_DELAY = 30


def dag_settings(execution_timeout_minutes: int, environ=None) -> dict:
    """What every busi DAG shares: owner, retries with backoff, one run at a time, and the
    ``profile`` param. Keyword arguments for ``@dag``; ``environ`` (default ``os.environ``)
    gives ``BUSI_RETRY_DELAY``."""
    import os
    from datetime import timedelta

    from airflow.sdk import Param

    from busi.local.services import int_setting

    environ = os.environ if environ is None else environ
    retry_delay = int_setting(environ, "BUSI_RETRY_DELAY", DEFAULT_RETRY_DELAY, 1, 3600)

    return {
        "start_date": None,
        "catchup": False,
        "max_active_runs": 1,
        # Airflow creates DAGs paused by default; new data would then never train.
        "is_paused_upon_creation": False,
        "default_args": {
            "owner": "busi-pipeline",
            "retries": 2,
            "retry_delay": timedelta(seconds=retry_delay),
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
