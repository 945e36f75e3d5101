"""What the Airflow tasks call: one pipeline step per task, in the right workspace, under
the DAG run's MLflow parent run. The DAG files only wire these functions.

Settings (environment of the Airflow workers, set by ``busi up``):
- ``BUSI_PROJECT_DIR``: the project (default: the folder above ``components/``).
- ``BUSI_PROFILE``: ``default`` (real data, the project itself) or a profile name, which
  runs in ``scratch/<profile>`` (or ``BUSI_WORKSPACE``); the DAG param ``profile`` wins.
- ``MLFLOW_TRACKING_URI``: default the workspace's ``mlflow.db``.
- ``BUSI_LANDING``: the landing zone of new data (a folder, or ``s3://bucket/prefix``);
  default ``<project>/landing``.
- ``BUSI_EXECUTION``: ``local`` (default: tasks run in the Airflow worker) or ``kubernetes``
  (DVC stages run as pods from ``BUSI_IMAGE``; see ``pod_settings``).
- ``BUSI_DVC_SYNC``: ``1`` makes each task pull its inputs from the DVC remote and push its
  outputs, so consecutive tasks may run on different workers; on by default with
  ``BUSI_EXECUTION=kubernetes``.

With DVC sync, what DVC does not store in its remote travels with the DAG run's MLflow
parent run, under the artifact folder ``run_state/``: ``dvc.lock`` (which stages ran on what)
and the stages' ``cache: false`` outputs (split, reports, metrics, plots). Each task
restores it before it runs and saves it after, so a worker holding only the git checkout
continues where the previous one stopped.

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
    "stress_test_models",
)
REGISTRY_STEPS = ("register_model", "evaluate_external", "promote_model")
TRAINING_STEPS = DVC_STAGES + REGISTRY_STEPS
# What register_model reads from the DVC stages' cached outputs (the models, the crop
# settings); evaluate_external and promote_model read only the registry.
REGISTRY_INPUTS = {"register_model": ("crop_rois", "train_unet", "train_classifier")}
EXECUTIONS = ("local", "kubernetes")
# Steps that use an accelerator when there is one: pod execution puts them on GPU nodes.
GPU_STEPS = ("train_unet", "train_classifier")
RUN_STATE = "run_state"
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
        # Airflow creates DAGs paused by default; new data would then never train.
        "is_paused_upon_creation": False,
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


def execution_mode(environ=None) -> str:
    """``BUSI_EXECUTION``: where the training tasks run (``local`` or ``kubernetes``)."""
    from busi.errors import BusiError

    value = (os.environ if environ is None else environ).get("BUSI_EXECUTION") or "local"
    if value not in EXECUTIONS:
        raise BusiError(f"BUSI_EXECUTION={value!r}: expected one of {', '.join(EXECUTIONS)}")
    return value


def dvc_sync(environ=None) -> bool:
    """``BUSI_DVC_SYNC``: whether each task pulls its inputs and pushes its outputs (default:
    on for pod execution, where every task may land on another node)."""
    from busi.errors import BusiError

    environ = os.environ if environ is None else environ
    value = (environ.get("BUSI_DVC_SYNC") or "").strip().lower()
    if not value:
        return execution_mode(environ) == "kubernetes"
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise BusiError(f"BUSI_DVC_SYNC={value!r}: expected 1 or 0")


def step_commands(step: str, sync: bool) -> tuple[list[list[str]], list[str], list[list[str]]]:
    """What one task runs for ``step``: commands before, the step's own, commands after.
    With ``sync`` a DVC stage pulls what it lacks (``repro --pull``: its inputs, or its
    outputs when nothing changed) and pushes its outputs; register_model pulls the models."""
    main = step_command(step)
    if not sync:
        return [], main, []
    dvc = [sys.executable, "-m", "dvc"]
    if step in DVC_STAGES:
        return [], [*dvc, "repro", "--single-item", "--pull", step], [[*dvc, "push", step]]
    if step in REGISTRY_INPUTS:
        return [[*dvc, "pull", *REGISTRY_INPUTS[step]]], main, []
    return [], main, []


def uncached_outputs(dvc_yaml: Path) -> list[str]:
    """The outputs, metrics and plots that ``dvc.yaml`` marks ``cache: false``: DVC keeps
    them out of its cache and remote (they are committed to git instead)."""
    import yaml

    stages = yaml.safe_load(dvc_yaml.read_text()).get("stages", {})
    paths = []
    for stage in stages.values():
        for key in ("outs", "metrics", "plots"):
            for entry in stage.get(key) or []:
                if isinstance(entry, dict):
                    for path, options in entry.items():
                        if isinstance(options, dict) and options.get("cache") is False:
                            paths.append(path)
    return paths


def restore_run_state(client, parent: str, ws: Path) -> list[str]:
    """Copy the DAG run's ``run_state/`` artifacts of the parent run into the workspace;
    returns the paths restored (none on the first task)."""
    import shutil
    import tempfile

    if not client.list_artifacts(parent, RUN_STATE):
        return []
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(client.download_artifacts(parent, RUN_STATE, tmp))
        restored = []
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            rel = path.relative_to(local)
            (ws / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, ws / rel)
            restored.append(rel.as_posix())
    return restored


def save_run_state(client, parent: str, ws: Path) -> list[str]:
    """Log ``dvc.lock``, ``data.dvc`` (so every task of the run trains on the data version
    the first one saw) and the uncached outputs present in the workspace to the parent run
    under ``run_state/`` (replacing what an earlier task logged)."""
    saved = []
    for rel in ["dvc.lock", "data.dvc", *uncached_outputs(ws / "dvc.yaml")]:
        path = ws / rel
        if path.is_file():
            client.log_artifact(parent, str(path), Path(RUN_STATE, rel).parent.as_posix())
        elif path.is_dir():
            client.log_artifacts(parent, str(path), Path(RUN_STATE, rel).as_posix())
        else:
            continue
        saved.append(rel)
    return saved


def project_dir() -> Path:
    env = os.environ.get("BUSI_PROJECT_DIR")
    return Path(env).resolve() if env else Path(__file__).resolve().parents[2]


def workspace_for(profile: str, project: Path | None = None) -> Path:
    """The folder a profile's pipeline runs in (prepared on first use for scratch ones)."""
    project = project or project_dir()
    if profile == "default":
        return project
    from busi.orchestration.workspace import prepare_workspace

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
    sync = dvc_sync()
    client = None
    if sync:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=uri)
        if os.environ.get("BUSI_DVC_REMOTE"):
            from busi.data.versions import Dvc
            from busi.storage import s3_endpoint

            Dvc(ws).configure_remote(os.environ["BUSI_DVC_REMOTE"], s3_endpoint())
        restored = restore_run_state(client, parent, ws)
        logger.info("%s: restored %s from the DAG run's MLflow run", step, restored or "nothing")
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


def landing_zone(project: Path | None = None) -> str:
    return os.environ.get("BUSI_LANDING") or str((project or project_dir()) / "landing")


def ingest_new_data(profile: str | None = None, xcom_push=None) -> dict:
    """The busi_new_data task: merge the ready batches of the landing zone into the
    workspace's data and version it. Raises AirflowSkipException when nothing was merged, so
    the data Asset is not updated and no training is scheduled. ``xcom_push(key, value)``
    (the task instance's) gets the result as ``ingest_result`` in every case, so a batch held
    for drift or quarantined whole shows in XCom too, not only in the log."""
    from dataclasses import asdict

    from components.ingest_batch import ingest_batches

    profile = profile or os.environ.get("BUSI_PROFILE", "default")
    ws = workspace_for(profile)
    result = ingest_batches(landing_zone(), ws, params=ws / "params.yaml")
    summary = {k: v for k, v in asdict(result).items() if _jsonable(v)}
    if xcom_push is not None:
        xcom_push(key="ingest_result", value=summary)
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
    from busi.data.importer import ingest
    from busi.errors import BusiError
    from busi.local import platform_services as platform
    from busi.orchestration.workspace import prepare_workspace, resolve_source

    project = (project or project_dir()).resolve()
    settings = platform.settings_from_env(project)
    state = platform.read_state(settings.state_dir)
    running = platform.running_services(state)
    # The tasks honour BUSI_WORKSPACE (workspace_for): the data must go where they look.
    ws = prepare_workspace(
        project,
        profile,
        Path(os.environ["BUSI_WORKSPACE"]) if os.environ.get("BUSI_WORKSPACE") else None,
    )
    source = resolve_source(project, profile, ws, source)
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

    from busi.cli import parser_for

    parser = parser_for("run-training")
    parser.add_argument(
        "--profile",
        default=os.environ.get("BUSI_PROFILE", "default"),
        help="default (real data) or profiles/NAME.yaml (default: $BUSI_PROFILE or default)",
    )
    parser.add_argument(
        "--source",
        type=Path,
        default=None,
        help="BUSI folder or zip for the default profile (default $BUSI_SOURCE); profiles "
        "with synthetic data (smoke, quick) make their own and ignore $BUSI_SOURCE",
    )
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


# What a pod of BUSI_EXECUTION=kubernetes gets (settings, with their defaults).
POD_SETTINGS = {
    "BUSI_IMAGE": "busi-pipeline:latest",
    "BUSI_K8S_NAMESPACE": "busi",
    # The ConfigMap and Secret of infra/k8s that hold the settings and the S3 keys.
    "BUSI_K8S_CONFIGMAP": "busi-config",
    "BUSI_K8S_S3_CREDENTIALS": "busi-s3",
    "BUSI_K8S_GPU_NODE_SELECTOR": "nvidia.com/gpu.present=true",
}


def pod_settings(step: str, environ=None) -> dict:
    """Keyword arguments of the ``KubernetesPodOperator`` that runs ``step`` (pure: settings
    in, arguments out). The pod runs ``busi run-step`` from the project image with DVC sync
    on; its settings come from the ConfigMap and Secret of ``infra/k8s``. GPU steps ask for
    one ``nvidia.com/gpu`` and go to GPU nodes."""
    environ = os.environ if environ is None else environ
    if step not in TRAINING_STEPS:
        raise ValueError(f"unknown step '{step}'; the steps are {TRAINING_STEPS}")

    def setting(name: str) -> str:
        return environ.get(name) or POD_SETTINGS[name]

    gpu = step in GPU_STEPS
    heavy = gpu or step == "crop_rois"
    requests = {"cpu": "2", "memory": "8Gi"} if heavy else {"cpu": "1", "memory": "2Gi"}
    limits = {"memory": "16Gi" if gpu else "4Gi", **({"nvidia.com/gpu": "1"} if gpu else {})}
    selector = {}
    if gpu:
        key, _, value = setting("BUSI_K8S_GPU_NODE_SELECTOR").partition("=")
        selector = {key: value}
    return {
        "name": f"busi-{step.replace('_', '-')}",
        "namespace": setting("BUSI_K8S_NAMESPACE"),
        "image": setting("BUSI_IMAGE"),
        "cmds": ["busi"],
        "arguments": [
            "run-step",
            step,
            "--airflow-run-id",
            "{{ run_id }}",
            "--dag-id",
            "{{ dag.dag_id }}",
            "--profile",
            "{{ params.profile or '' }}",
        ],
        "env_vars": {"BUSI_DVC_SYNC": "1", "BUSI_EXECUTION": "kubernetes"},
        "configmaps": [setting("BUSI_K8S_CONFIGMAP")],
        "secrets_names": [setting("BUSI_K8S_S3_CREDENTIALS")],
        "requests": requests,
        "limits": limits,
        "node_selector": selector,
        "tolerations": (
            [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}] if gpu else []
        ),
    }


def pod_operator(step: str):
    """The KubernetesPodOperator task of ``step`` for ``BUSI_EXECUTION=kubernetes``."""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from airflow.providers.cncf.kubernetes.secret import Secret
    from kubernetes.client import models as k8s

    cfg = pod_settings(step)
    return KubernetesPodOperator(
        task_id=step,
        name=cfg["name"],
        namespace=cfg["namespace"],
        image=cfg["image"],
        cmds=cfg["cmds"],
        arguments=cfg["arguments"],
        env_vars=cfg["env_vars"],
        configmaps=cfg["configmaps"],
        secrets=[Secret("env", None, name) for name in cfg["secrets_names"]],
        container_resources=k8s.V1ResourceRequirements(
            requests=cfg["requests"], limits=cfg["limits"]
        ),
        node_selector=cfg["node_selector"] or None,
        tolerations=[k8s.V1Toleration(**t) for t in cfg["tolerations"]] or None,
        get_logs=True,
        on_finish_action="delete_succeeded_pod",
    )
