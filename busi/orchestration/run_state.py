"""What travels with the DAG run's MLflow parent run under DVC sync: ``dvc.lock``,
``data.dvc`` and the stages' ``cache: false`` outputs, under the artifact folder
``run_state/``, restored before a task runs and saved after it."""

from __future__ import annotations

from pathlib import Path

RUN_STATE = "run_state"


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
