"""The MLflow model registry as the pipeline uses it: three registered models that move
together, aliases instead of the deprecated stages, and a promotion history kept as runs.

- ``busi-unet``: the segmenter (Keras flavour).
- ``busi-classifier``: the ROI classifier (Keras flavour).
- ``busi-pipeline``: the two-stage pyfunc that serving loads (``models:/busi-pipeline@champion``).

One ``busi register-model`` makes one version of each; the pipeline version carries tags
``unet_version`` and ``classifier_version``. Aliases: ``challenger`` (the newest registered),
``champion`` (what is served). Each promotion decision is a run in the experiment
``busi-promotions`` (tags and metrics), so the history survives any alias move, including
one made by hand in the MLflow UI.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from busi.errors import BusiError

PIPELINE_MODEL = "busi-pipeline"
UNET_MODEL = "busi-unet"
CLASSIFIER_MODEL = "busi-classifier"
COMPONENT_MODELS = {"unet_version": UNET_MODEL, "classifier_version": CLASSIFIER_MODEL}
CHAMPION = "champion"
CHALLENGER = "challenger"
PROMOTIONS_EXPERIMENT = "busi-promotions"
# Version tags holding the test-split figures the promotion rule compares.
METRIC_PREFIX = "metric."
# The version tag with the URI of the per-image predictions on the test split (a CSV of
# uncertainty.PER_IMAGE_COLUMNS); versions registered before they were kept lack it.
PER_IMAGE_TAG = "evaluation.per_image"
# Figures of an external evaluation: ``external.<dataset>.<figure>`` (evaluate_external).
EXTERNAL_PREFIX = "external."
# The behavioural checks of evaluate_models: ``passed`` or ``failed: <check>, ...``.
BEHAVIOUR_TAG = "evaluation.behaviour"


@dataclass(frozen=True)
class VersionInfo:
    version: int
    tags: dict[str, str]

    def metrics(self) -> dict[str, float]:
        out = {}
        for key, value in self.tags.items():
            if key.startswith(METRIC_PREFIX):
                try:
                    out[key.removeprefix(METRIC_PREFIX)] = float(value)
                except ValueError:
                    continue
        return out

    def external(self) -> dict[str, dict[str, float]]:
        """{dataset: {figure: value}} from the ``external.<dataset>.<figure>`` tags."""
        out: dict[str, dict[str, float]] = {}
        for key, value in self.tags.items():
            if key.startswith(EXTERNAL_PREFIX) and key.count(".") >= 2:
                dataset, figure = key.removeprefix(EXTERNAL_PREFIX).rsplit(".", 1)
                try:
                    out.setdefault(dataset, {})[figure] = float(value)
                except ValueError:
                    continue
        return out


def per_image_predictions(c, info: VersionInfo):
    """The version's per-image predictions on the test split as a DataFrame, or None when
    it was registered without them (before they were kept)."""
    uri = info.tags.get(PER_IMAGE_TAG)
    if not uri:
        return None
    import mlflow.artifacts
    import pandas as pd

    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, tracking_uri=c.tracking_uri)
    except Exception as exc:
        raise BusiError(
            f"{PIPELINE_MODEL} v{info.version}: its per-image predictions ({uri}) cannot be "
            f"read ({type(exc).__name__}: {exc}); check the artifact store"
        ) from exc
    return pd.read_csv(local)


def client(tracking_uri: str | None = None):
    """An MlflowClient for the configured tracking URI, after checking that it answers:
    a clear error instead of minutes of retries when the server is down."""
    from busi.tracking import tracking_uri as default_uri

    uri = tracking_uri or default_uri()
    # Fail fast: MLflow's default retries an unreachable server for minutes.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(uri)  # the fluent API (log_model) registers there too
    c = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        c.search_experiments(max_results=1)
    except Exception as exc:  # MlflowException, requests' errors: all mean "not reachable"
        raise BusiError(
            f"the MLflow tracking server at {uri} cannot be reached ({type(exc).__name__}); "
            "start it with `make up` or set MLFLOW_TRACKING_URI to a running server. "
            "Nothing was registered or changed."
        ) from exc
    return c


def version_info(c, name: str, version) -> VersionInfo:
    mv = c.get_model_version(name, str(version))
    return VersionInfo(version=int(mv.version), tags=dict(mv.tags or {}))


def alias_version(c, name: str, alias: str) -> VersionInfo | None:
    from mlflow.exceptions import MlflowException

    try:
        mv = c.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    return VersionInfo(version=int(mv.version), tags=dict(mv.tags or {}))


def find_version_by_tag(c, name: str, key: str, value: str) -> VersionInfo | None:
    from mlflow.exceptions import MlflowException

    try:
        found = c.search_model_versions(f"name='{name}' and tags.`{key}`='{value}'")
    except MlflowException:
        return None
    if not found:
        return None
    mv = max(found, key=lambda v: int(v.version))
    return VersionInfo(version=int(mv.version), tags=dict(mv.tags or {}))


def set_alias_all(c, alias: str, pipeline: VersionInfo) -> None:
    """Point ``alias`` at a pipeline version and at the component versions it was built with."""
    for tag, model in COMPONENT_MODELS.items():
        if tag in pipeline.tags:
            c.set_registered_model_alias(model, alias, pipeline.tags[tag])
    # The pipeline model last: what serving follows moves only once its parts have.
    c.set_registered_model_alias(PIPELINE_MODEL, alias, str(pipeline.version))


def promotion_history(c, limit: int = 50) -> list[dict]:
    """The promotion decisions, newest first."""
    exp = c.get_experiment_by_name(PROMOTIONS_EXPERIMENT)
    if exp is None:
        return []
    runs = c.search_runs(
        [exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=limit
    )
    return [
        {
            "run_id": r.info.run_id,
            "time": r.info.start_time,
            **{k: v for k, v in r.data.tags.items() if not k.startswith("mlflow.")},
            "metrics": dict(r.data.metrics),
        }
        for r in runs
    ]
