"""Where and how a task runs its step: the execution switch (``BUSI_EXECUTION``), DVC sync
(``BUSI_DVC_SYNC``) and the commands of one task."""

from __future__ import annotations

import os
import sys

from busi.orchestration.dag_settings import DVC_STAGES, REGISTRY_STEPS, TRAINING_STEPS

# What register_model reads from the DVC stages' cached outputs (the models, the crop
# settings); evaluate_external and promote_model read only the registry.
REGISTRY_INPUTS = {"register_model": ("crop_rois", "train_unet", "train_classifier")}

EXECUTIONS = ("local", "kubernetes")


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


def step_command(step: str) -> list[str]:
    """The command one task runs for ``step``."""
    if step in DVC_STAGES:
        return [sys.executable, "-m", "dvc", "repro", "--single-item", step]
    if step in REGISTRY_STEPS:
        return [sys.executable, "-m", "components", step.replace("_", "-")]
    raise ValueError(f"unknown step '{step}'; the steps are {TRAINING_STEPS}")
