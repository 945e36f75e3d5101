"""orchestrate's settings for running tasks elsewhere: the execution switch, DVC sync, the
commands a synced task runs, what travels with the DAG run, and the pods' arguments."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from busi.errors import BusiError
from busi.orchestration.dag_settings import DVC_STAGES, TRAINING_STEPS
from busi.orchestration.execution import dvc_sync, execution_mode, step_commands
from busi.orchestration.pods import GPU_STEPS, pod_settings
from busi.orchestration.run_state import uncached_outputs

REPO = Path(__file__).resolve().parents[2]


def test_execution_defaults_to_local_and_refuses_unknown_values():
    assert execution_mode({}) == "local"
    assert execution_mode({"BUSI_EXECUTION": "kubernetes"}) == "kubernetes"
    with pytest.raises(BusiError, match="BUSI_EXECUTION='celery': expected one of"):
        execution_mode({"BUSI_EXECUTION": "celery"})


def test_dvc_sync_is_on_for_pods_unless_set():
    assert dvc_sync({}) is False
    assert dvc_sync({"BUSI_EXECUTION": "kubernetes"}) is True
    assert dvc_sync({"BUSI_EXECUTION": "kubernetes", "BUSI_DVC_SYNC": "0"}) is False
    assert dvc_sync({"BUSI_DVC_SYNC": "true"}) is True
    with pytest.raises(BusiError, match="BUSI_DVC_SYNC='maybe'"):
        dvc_sync({"BUSI_DVC_SYNC": "maybe"})


def test_a_synced_stage_pulls_what_it_lacks_and_pushes_its_outputs():
    dvc = [sys.executable, "-m", "dvc"]
    assert step_commands("train_unet", sync=False) == (
        [],
        [*dvc, "repro", "--single-item", "train_unet"],
        [],
    )
    before, main, after = step_commands("train_unet", sync=True)
    assert before == []
    assert main == [*dvc, "repro", "--single-item", "--pull", "train_unet"]
    assert after == [[*dvc, "push", "train_unet"]]
    before, main, after = step_commands("register_model", sync=True)
    assert before == [[*dvc, "pull", "crop_rois", "train_unet", "train_classifier"]]
    assert main[-1] == "register-model"
    assert after == []
    assert step_commands("promote_model", sync=True)[0] == []


def test_what_dvc_does_not_keep_travels_with_the_run():
    paths = uncached_outputs(REPO / "dvc.yaml")
    for expected in ("data/splits.csv", "metrics/evaluation.json", "plots/evaluation"):
        assert expected in paths
    assert "models/unet.keras" not in paths
    assert "data/rois" not in paths  # in the DVC remote


@pytest.mark.parametrize("step", DVC_STAGES)
def test_pod_arguments_follow_the_settings(step):
    env = {"BUSI_IMAGE": "reg.example/busi:1", "BUSI_K8S_NAMESPACE": "ml"}
    cfg = pod_settings(step, env)
    assert cfg["image"] == "reg.example/busi:1"
    assert cfg["namespace"] == "ml"
    assert cfg["arguments"][:2] == ["run-step", step]
    assert "{{ run_id }}" in cfg["arguments"]
    assert cfg["env_vars"]["BUSI_DVC_SYNC"] == "1"
    assert cfg["name"] == "busi-" + step.replace("_", "-")  # a valid pod name
    gpu = step in GPU_STEPS
    assert ("nvidia.com/gpu" in cfg["limits"]) == gpu
    assert bool(cfg["node_selector"]) == gpu
    assert bool(cfg["tolerations"]) == gpu


def test_pods_use_the_configmap_and_secret_of_infra_k8s():
    import yaml

    cfg = pod_settings("train_unet", {})
    docs = [
        d
        for f in (REPO / "infra/k8s").glob("*.yaml")
        for d in yaml.safe_load_all(f.read_text())
        if isinstance(d, dict)
    ]
    names = {(d.get("kind"), d.get("metadata", {}).get("name")) for d in docs}
    assert ("ConfigMap", cfg["configmaps"][0]) in names
    assert ("Secret", cfg["secrets_names"][0]) in names
    with pytest.raises(ValueError, match="unknown step"):
        pod_settings("train_everything", {})
    assert set(GPU_STEPS) <= set(TRAINING_STEPS)


def test_the_project_is_the_checkout_holding_the_code_unless_set(monkeypatch, tmp_path):
    from busi.orchestration.workspace import project_dir

    monkeypatch.delenv("BUSI_PROJECT_DIR", raising=False)
    assert project_dir() == REPO
    monkeypatch.setenv("BUSI_PROJECT_DIR", str(tmp_path))
    assert project_dir() == tmp_path.resolve()
