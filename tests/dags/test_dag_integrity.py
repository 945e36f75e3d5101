"""Every DAG imports cleanly (no errors, no warnings), is wired as the pipeline is, and has
the operational settings a scheduler needs: retries, owner, tags, one run at a time."""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DAG_IDS = ("busi_training", "busi_new_data")


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bag = DagBag(dag_folder=str(REPO / "dags"))
    ours = [
        w for w in caught if any(f"{d}/" in str(w.filename) for d in ("dags", "components", "busi"))
    ]
    return bag, ours


def test_dags_import_without_errors_or_warnings(dagbag):
    bag, warned = dagbag
    assert bag.import_errors == {}
    assert warned == [], [str(w.message) for w in warned]
    assert set(DAG_IDS) <= set(bag.dag_ids)


@pytest.mark.parametrize("dag_id", DAG_IDS)
def test_operational_settings(dagbag, dag_id):
    dag = dagbag[0].dags[dag_id]
    assert dag.max_active_runs == 1
    assert dag.tags
    assert "busi" in dag.tags
    assert dag.doc_md
    assert len(dag.doc_md) > 100
    assert not dag.catchup
    assert dag.is_paused_upon_creation is False  # active as soon as the scheduler sees it
    for t in dag.tasks:
        assert t.retries >= 1, f"{t.task_id} has no retries"
        assert t.retry_exponential_backoff, f"{t.task_id} retries without backoff"
        assert t.retry_delay.total_seconds() == 30, t.task_id
        assert t.owner == "busi-pipeline"


def test_training_tasks_are_the_pipeline_steps_in_order(dagbag):
    dag = dagbag[0].dags["busi_training"]
    stages = list(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])
    expected = [*stages, "register_model", "evaluate_external", "promote_model"]
    assert set(dag.task_ids) == set(expected)
    # A chain: each step depends on the previous one only.
    for before, after in itertools.pairwise(expected):
        assert dag.get_task(after).upstream_task_ids == {before}
    assert dag.get_task(expected[0]).upstream_task_ids == set()


def test_no_cycles_and_a_single_root(dagbag):
    for dag_id in DAG_IDS:
        dag = dagbag[0].dags[dag_id]
        order = dag.topological_sort()  # raises on a cycle
        assert len(order) == len(dag.tasks)
        assert len(dag.roots) == 1


def test_training_is_scheduled_on_the_asset_new_data_updates(dagbag):
    from busi.orchestration.dag_settings import DATA_ASSET_URI

    bag = dagbag[0]
    training, new_data = bag.dags["busi_training"], bag.dags["busi_new_data"]
    outlets = [o.uri for t in new_data.tasks for o in t.outlets]
    assert outlets == [DATA_ASSET_URI]
    assert DATA_ASSET_URI in str(training.timetable.asset_condition)


def test_dag_files_import_nothing_heavy():
    """The DAG processor parses these files often: no TensorFlow, MLflow or DVC at the top."""
    import subprocess
    import sys

    code = (
        "import sys, runpy\n"
        f"runpy.run_path({str(REPO / 'dags' / 'busi_training.py')!r})\n"
        f"runpy.run_path({str(REPO / 'dags' / 'busi_new_data.py')!r})\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'mlflow', 'dvc', 'great_expectations')"
        " if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1:] in ([""], []), proc.stdout


def test_kubernetes_execution_runs_the_dvc_stages_as_pods(monkeypatch):
    """BUSI_EXECUTION=kubernetes: each DVC stage is a KubernetesPodOperator running
    `busi run-step` with DVC sync on; the training steps ask for a GPU on GPU nodes; the
    registry steps stay Python tasks; the chain is unchanged."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    from busi.orchestration.dag_settings import DVC_STAGES, REGISTRY_STEPS, TRAINING_STEPS
    from busi.orchestration.pods import GPU_STEPS

    monkeypatch.setenv("BUSI_EXECUTION", "kubernetes")
    monkeypatch.setenv("BUSI_IMAGE", "registry.example.com/busi-pipeline:0.1.0")
    bag = DagBag(dag_folder=str(REPO / "dags" / "busi_training.py"))
    assert bag.import_errors == {}
    dag = bag.dags["busi_training"]
    for before, after in itertools.pairwise(TRAINING_STEPS):
        assert dag.get_task(after).upstream_task_ids == {before}
    for step in DVC_STAGES:
        op = dag.get_task(step)
        assert isinstance(op, KubernetesPodOperator), step
        assert op.image == "registry.example.com/busi-pipeline:0.1.0"
        assert op.cmds == ["busi"]
        assert op.arguments[:2] == ["run-step", step]
        assert op.retries >= 1
        assert op.owner == "busi-pipeline"
        pod = op.build_pod_request_obj(dry_run=True)  # the pod spec, without a cluster
        container = pod.spec.containers[0]
        env = {e.name: e.value for e in container.env}
        assert env["BUSI_DVC_SYNC"] == "1"
        sources = [s.config_map_ref or s.secret_ref for s in container.env_from]
        assert {s.name for s in sources} == {"busi-config", "busi-s3"}  # infra/k8s names
        gpu = "nvidia.com/gpu" in (container.resources.limits or {})
        assert gpu == (step in GPU_STEPS), step
        if gpu:
            assert pod.spec.node_selector == {"nvidia.com/gpu.present": "true"}
            assert pod.spec.tolerations[0].key == "nvidia.com/gpu"
        else:
            assert not pod.spec.node_selector
    for step in REGISTRY_STEPS:
        assert not isinstance(dag.get_task(step), KubernetesPodOperator)


def test_a_wrong_execution_setting_is_a_clear_import_error(monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("BUSI_EXECUTION", "slurm")
    bag = DagBag(dag_folder=str(REPO / "dags" / "busi_training.py"))
    (message,) = bag.import_errors.values()
    assert "BUSI_EXECUTION='slurm': expected one of local, kubernetes" in message


def _retry_delay(environ: dict) -> float:
    from busi.orchestration.dag_settings import dag_settings

    return dag_settings(10, environ)["default_args"]["retry_delay"].total_seconds()


def test_the_retry_delay_is_30_s_unless_busi_retry_delay_says_otherwise():
    assert _retry_delay({}) == 30
    assert _retry_delay({"BUSI_RETRY_DELAY": " "}) == 30
    assert _retry_delay({"BUSI_RETRY_DELAY": "5"}) == 5


@pytest.mark.parametrize("raw", ["soon", "0", "-3", "7200", "nan"])
def test_a_bad_busi_retry_delay_is_refused_with_what_to_set(raw):
    from busi.errors import BusiError

    with pytest.raises(BusiError, match=r"BUSI_RETRY_DELAY=.* from 1 to 3600: set it so"):
        _retry_delay({"BUSI_RETRY_DELAY": raw})
