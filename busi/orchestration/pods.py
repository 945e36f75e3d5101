"""``BUSI_EXECUTION=kubernetes``: the DVC stages as ``KubernetesPodOperator`` tasks running
``busi run-step`` from the project image (settings in, operator arguments out)."""

from __future__ import annotations

import os

from busi.orchestration.dag_settings import TRAINING_STEPS

# Steps that use an accelerator when there is one: pod execution puts them on GPU nodes.
GPU_STEPS = ("train_unet", "train_unet_folds", "train_classifier")

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
