"""MLflow tracking for the pipeline steps: one nested run per step under the pipeline's
parent run, tagged with the code commit, the data version and the profile.

Settings are read when a run starts, never at import:
- ``MLFLOW_TRACKING_URI``: default ``sqlite:///<cwd>/mlflow.db`` (artifacts in ./mlruns).
- ``MLFLOW_EXPERIMENT_NAME``: default ``busi-pipeline``.
- ``BUSI_PARENT_RUN_ID``: the pipeline's parent run (set by ``busi run-pipeline`` and the
  Airflow DAG); without it a step's run is top-level.
- ``BUSI_TRACKING=off`` turns tracking off (the step still runs and writes its files).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import resource
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "busi-pipeline"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def enabled() -> bool:
    return os.environ.get("BUSI_TRACKING", "on").lower() not in ("off", "0", "false")


# The project the running code belongs to (the busi package's parent, links resolved):
# its commit is the code version, wherever the pipeline's workspace lies.
PROJECT_ROOT = Path(__file__).resolve().parents[1]


OUTPUT_PATHS = tuple(
    f":(exclude){p}" for p in ("dvc.lock", "data.dvc", "data", "metrics", "plots", "reports")
)


def git_commit(cwd: Path = PROJECT_ROOT) -> str | None:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        # Dirty means changed code or settings: the pipeline's own outputs (dvc.lock, the
        # metrics, plots and reports it rewrites, data.dvc, versioned apart) do not count.
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *OUTPUT_PATHS],
            cwd=cwd,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{head}-dirty" if dirty else head


def data_version(dvc_file: Path = Path("data.dvc")) -> str | None:
    """The md5 of the dataset recorded in data.dvc: the data version."""
    from busi.data.versions import recorded_version

    return recorded_version(dvc_file)


def file_md5(path: Path) -> str | None:
    return hashlib.md5(path.read_bytes()).hexdigest() if path.is_file() else None


def lineage_tags() -> dict[str, str]:
    tags = {
        "git_commit": git_commit(),
        "data_version": data_version(),
        "dvc_lock_md5": file_md5(Path("dvc.lock")),
        "params_md5": file_md5(Path("params.yaml")),
        "profile": os.environ.get("BUSI_PROFILE", "default"),
    }
    return {k: v for k, v in tags.items() if v}


def machine() -> str:
    """The CPU the step runs on, with its core count: figures and costs differ across CPUs."""
    import platform

    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} cores"


# The instruction sets TensorFlow's CPU kernels (oneDNN, Eigen) choose their code paths by:
# two hosts of one named type that differ in these can train different models from the same
# seed (bench/results/chain_seeds_val_repro.md).
ISA_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16")  # fmt: skip


def cpu_isa(cpuinfo: str) -> str:
    """The CPU's family/model/stepping and the TensorFlow-relevant flags it has, from the
    text of /proc/cpuinfo (its first processor), e.g. ``family 25 model 1 stepping 1;
    avx avx2 fma f16c``."""
    first = cpuinfo.split("\n\n", 1)[0]
    fields = {}
    for line in first.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    flags = set(fields.get("flags", "").split())
    ident = " ".join(
        f"{name} {fields[key]}"
        for key, name in (("cpu family", "family"), ("model", "model"), ("stepping", "stepping"))
        if key in fields
    )
    have = " ".join(f for f in ISA_FLAGS if f in flags) or "none of " + "/".join(ISA_FLAGS[:3])
    return f"{ident}; {have}" if ident else have


def host_isa() -> str:
    """:func:`cpu_isa` of the CPU the step runs on ("unknown" without /proc/cpuinfo)."""
    try:
        return cpu_isa(Path("/proc/cpuinfo").read_text(errors="replace"))
    except OSError:
        return "unknown"


def _flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def experiment_name() -> str:
    return os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT)


def _setup():
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    name = experiment_name()
    if mlflow.get_experiment_by_name(name) is None and uri.startswith("sqlite:///"):
        # Without a server, keep the artifacts beside the database, not in whatever folder
        # the first step happened to run in.
        store = Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts"
        mlflow.create_experiment(name, artifact_location=store.resolve().as_uri())
    mlflow.set_experiment(name)
    return mlflow


def _unfinished_step_run(mlflow, parent: str, step: str) -> str | None:
    """The id of a run of ``step`` under ``parent`` that did not finish, if any."""
    runs = mlflow.search_runs(
        filter_string=(
            f"tags.mlflow.parentRunId = '{parent}' and tags.step = '{step}' "
            "and attributes.status != 'FINISHED'"
        ),
        search_all_experiments=True,
        output_format="list",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


@contextlib.contextmanager
def step_run(step: str, params: dict[str, Any]) -> Iterator[Any]:
    """An MLflow run for one step (nested under BUSI_PARENT_RUN_ID when set), or None when
    tracking is off."""
    if not enabled():
        yield None
        return
    mlflow = _setup()
    parent = os.environ.get("BUSI_PARENT_RUN_ID")
    unfinished = _unfinished_step_run(mlflow, parent, step) if parent else None
    if unfinished:
        # A retry of the same step in the same pipeline run (Airflow retries a failed task):
        # continue its run instead of adding a second one.
        logger.info("resuming the MLflow run %s of %s", unfinished, step)
        context = mlflow.start_run(run_id=unfinished, nested=mlflow.active_run() is not None)
    else:
        context = mlflow.start_run(run_name=step, nested=bool(parent), parent_run_id=parent)
    with context as run:
        mlflow.set_tags(
            {"step": step, "machine": machine(), "cpu_isa": host_isa(), **lineage_tags()}
        )
        if not unfinished:
            mlflow.log_params(_flatten(params))
        started = time.perf_counter()
        yield run
        # What the step cost, for bench/: wall time and the process's peak memory.
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        mlflow.log_metrics(
            {"step_wall_seconds": time.perf_counter() - started, "step_peak_rss_mib": peak_mib}
        )


@contextlib.contextmanager
def pipeline_run(name: str = "pipeline") -> Iterator[Any]:
    """The parent run of one pipeline run; its id is exported for the steps' nested runs."""
    if not enabled():
        yield None
        return
    mlflow = _setup()
    with mlflow.start_run(run_name=name) as run:
        mlflow.set_tags(
            {"kind": "pipeline", "machine": machine(), "cpu_isa": host_isa(), **lineage_tags()}
        )
        previous = os.environ.get("BUSI_PARENT_RUN_ID")
        os.environ["BUSI_PARENT_RUN_ID"] = run.info.run_id
        try:
            yield run
        finally:
            if previous is None:
                os.environ.pop("BUSI_PARENT_RUN_ID", None)
            else:
                os.environ["BUSI_PARENT_RUN_ID"] = previous


def log_metrics(metrics: dict[str, Any], step: int | None = None) -> None:
    """Log the numeric leaves of a (nested) dict; NaN and None are skipped."""
    if not enabled():
        return
    import math

    import mlflow

    if mlflow.active_run() is None:
        return
    flat = {
        k: float(v)
        for k, v in _flatten(metrics).items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }
    if flat:
        mlflow.log_metrics(flat, step=step)


def log_step_outputs(
    metrics: dict[str, Any], artifacts=(), model=None, model_name=None, example=None
) -> None:
    """Metrics, artifact files and a Keras model with its signature, on the active run."""
    if not enabled():
        return
    import mlflow

    if mlflow.active_run() is None:
        return
    log_metrics(metrics)
    for path in artifacts:
        if Path(path).exists():
            mlflow.log_artifact(str(path))
    if model is not None:
        log_keras_model(model, model_name, example)


def log_keras_model(model, name: str, example=None, registered_model_name: str | None = None):
    """Log a Keras model with its signature on the active run (and register it when
    ``registered_model_name`` is given); returns MLflow's ModelInfo."""
    import keras
    import mlflow
    import tensorflow as tf
    from mlflow.models import infer_signature

    signature = None
    if example is not None:
        signature = infer_signature(example, model.predict(example, verbose=0))
    # Given explicitly: MLflow's inference of the requirements reloads the model in a
    # subprocess, slow and noisy.
    requirements = [f"keras=={keras.__version__}", f"tensorflow-cpu=={tf.__version__}"]
    return mlflow.keras.log_model(
        model,
        name=name,
        signature=signature,
        pip_requirements=requirements,
        registered_model_name=registered_model_name,
    )


def epoch_logger(prefix: str = ""):
    """A Keras callback that logs each epoch's metrics to the active MLflow run, their names
    prefixed with ``prefix`` (e.g. ``member_1/`` for one member of an ensemble)."""
    import keras

    class EpochLogger(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            log_metrics({f"{prefix}{k}": v for k, v in (logs or {}).items()}, step=epoch)

    return EpochLogger()
