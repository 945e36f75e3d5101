"""Running a commit's code again: its worktree first on PYTHONPATH (and, for a commit from
before busi/ existed, its own `busi` dispatcher first on PATH), DVC pointed at the
project's cache and remotes, the run's data version and params restored, then the rerun
under a new MLflow run."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from busi.errors import BusiError
from busi.reproduction.mlflow_runs import reproductions

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    """What to rebuild, read from the pipeline run's tags and metrics."""

    run_id: str  # the pipeline (parent) run
    requested_id: str  # the id asked for: the same, or one of its step runs
    profile: str
    commit: str  # without the -dirty suffix
    dirty: bool
    data_version: str
    params_md5: str | None
    dvc_lock_md5: str | None
    metrics: dict[str, float]


@contextlib.contextmanager
def _environ(updates: Mapping[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in updates}
    os.environ.update(updates)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def code_env(
    tree: Path, uri: str, experiment: str, profile: str, launcher: Path | None = None
) -> dict[str, str]:
    """The settings the reproduction runs under: the worktree's code first on the path
    (and the folder of ``old_layout_launcher``, if any, first on PATH), tracking on, to the
    original's store and experiment."""
    pythonpath = os.pathsep.join(p for p in (str(tree), os.environ.get("PYTHONPATH")) if p)
    bins = [str(launcher)] if launcher else []
    bins += [str(Path(sys.executable).parent), os.environ.get("PATH", "")]
    return {
        "PYTHONPATH": pythonpath,
        "MLFLOW_TRACKING_URI": uri,
        "MLFLOW_EXPERIMENT_NAME": experiment,
        "BUSI_TRACKING": "on",
        "BUSI_PROFILE": profile,
        "DVC_NO_ANALYTICS": "1",
        "PATH": os.pathsep.join(bins),
    }


def old_layout_launcher(tree: Path, folder: Path) -> Path | None:
    """For a commit from before busi/ existed (its dispatcher is components/cli.py), a
    ``busi`` command in ``folder`` that runs that commit's dispatcher: the installed one
    imports today's busi.cli. None for a commit that has busi/cli.py."""
    if (tree / "busi" / "cli.py").is_file() or not (tree / "components" / "cli.py").is_file():
        return None
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "busi"
    script.write_text(
        f"#!{sys.executable}\nimport sys\n\nfrom components.cli import main\n\nsys.exit(main())\n"
    )
    script.chmod(0o755)
    return folder


def code_location(tree: Path, env: Mapping[str, str]) -> Path:
    """Where the stages' ``busi`` commands import ``components`` from under ``env`` (and
    ``busi``, where the commit has it); it must be the worktree. (``-P``: like a console
    script, the current folder does not count.)"""
    packages = [p for p in ("components", "busi") if (tree / p / "__init__.py").is_file()]
    packages = packages or ["components"]
    probe = "; ".join(f"import {p}; print({p}.__file__)" for p in packages)
    proc = subprocess.run(
        [sys.executable, "-P", "-c", probe], cwd=tree, env=dict(env), capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise BusiError(f"commit's code does not import: {proc.stderr.strip()[-2000:]}")
    found = [Path(line).resolve().parent for line in proc.stdout.split()]
    for where in found:
        if not where.is_relative_to(tree.resolve()):
            raise BusiError(
                f"the stages would run {where}, not the worktree {tree}: unset PYTHONPATH "
                "entries or installs that shadow it"
            )
    return found[0]


def point_dvc_at_project(project: Path, tree: Path) -> None:
    """The worktree's DVC uses the project's cache and remotes (paths made absolute)."""
    from dvc.config import Config

    source = Config(dvc_dir=project / ".dvc").read()  # merged levels, paths resolved
    with Config(dvc_dir=tree / ".dvc").edit("local") as conf:
        conf["cache"]["dir"] = str(source["cache"].get("dir") or project / ".dvc" / "cache")
        conf["remote"] = dict(source.get("remote") or {})
        if source["core"].get("remote"):
            conf["core"]["remote"] = source["core"]["remote"]


def restore_data(tree: Path, version: str) -> list[str]:
    """data/busi at ``version`` in the worktree, from the cache or else the remote."""
    from busi.data.versions import DATA_DIR, DVC_FILE, Dvc, recorded_version

    notes = []
    dvc, target = Dvc(tree), str(DVC_FILE)
    recorded = recorded_version(tree / DVC_FILE)
    if recorded != version:
        out = {"path": DATA_DIR.as_posix(), "md5": version, "hash": "md5"}
        (tree / DVC_FILE).write_text(yaml.safe_dump({"outs": [out]}, sort_keys=False))
        notes.append(
            f"data.dvc at the commit records {recorded}, not the run's data version {version}; "
            "restored the run's version"
        )
    if dvc("checkout", target, check=False).returncode != 0:
        pulled = dvc("pull", target, check=False)
        if pulled.returncode != 0:
            said = (pulled.stderr or pulled.stdout).strip().splitlines()
            error = next((line for line in said if line.startswith("ERROR")), " ".join(said[-1:]))
            raise BusiError(
                f"data version {version} is in neither the project's DVC cache nor its remote "
                f"(dvc pull: {error}): ingest that data again with `busi ingest-data`, or "
                "point the project at the remote that holds it"
            )
    status = dvc("status", target, "--json").stdout.strip()
    if recorded_version(tree / DVC_FILE) != version or status not in ("{}", ""):
        raise BusiError(f"the restored data/busi is not data version {version}: {status}")
    return notes


def choose_params(tree: Path, plan: Plan, original: Path) -> str | None:
    """The commit's params.yaml, or the run's logged one when only that matches params_md5."""
    from busi.tracking import file_md5

    at_commit = file_md5(tree / "params.yaml")
    if plan.params_md5 is None or at_commit == plan.params_md5:
        return None
    if file_md5(original / "params.yaml") == plan.params_md5:
        shutil.copyfile(original / "params.yaml", tree / "params.yaml")
        return (
            f"params.yaml at commit {plan.commit[:12]} is not the run's (md5 {at_commit}, the "
            f"run's {plan.params_md5}): using the params.yaml logged with the run"
        )
    return (
        f"params.yaml at commit {plan.commit[:12]} is not the run's (md5 {at_commit}, the run's "
        f"{plan.params_md5}) and the run logged no matching params.yaml: running the commit's"
    )


def rerun_default(project: Path, plan: Plan, tree: Path, out: Path, env: dict) -> tuple[str, list]:
    """`dvc repro --force` of the real-data pipeline in the worktree, under a new parent run."""
    from busi import tracking
    from busi.orchestration.workspace import repro_under_parent

    point_dvc_at_project(project, tree)
    notes = restore_data(tree, plan.data_version)
    note = choose_params(tree, plan, out / "original")
    notes += [note] if note else []
    # Read before the run: the run itself rewrites dvc.lock, which git would call dirty.
    commit = tracking.git_commit(tree) or plan.commit
    with _environ(env):
        run_id, _ = repro_under_parent(tree, "default", tags={"git_commit": commit}, force=True)
    new = out / "new"
    new.mkdir(exist_ok=True)
    for name in ("metrics/evaluation.json", "dvc.lock", "params.yaml"):
        if (tree / name).is_file():
            shutil.copyfile(tree / name, new / Path(name).name)
    assert run_id, "tracking is on in env"
    return run_id, notes


def rerun_profile(plan: Plan, tree: Path, out: Path, env: dict, client, experiment_id) -> str:
    """The worktree's own `run-pipeline --profile P` into ``<out>/workspace``."""
    workspace = out / "workspace"
    for stale in (workspace, out / "workspace.source", out / "workspace.dvc-remote"):
        if stale.exists():  # a previous reproduction's: its outputs would skip the stages
            logger.info("removing the previous reproduction's %s", stale)
            shutil.rmtree(stale)
    run_env = {**os.environ, **env}
    for name in ("BUSI_SOURCE", "BUSI_PARENT_RUN_ID"):
        run_env.pop(name, None)  # the profile makes its own data; the run is top-level
    earlier = reproductions(client, experiment_id, plan.run_id)
    cmd = [sys.executable, "-m", "components", "run-pipeline", "--profile", plan.profile]
    cmd += ["--project", str(tree), "--workspace", str(workspace)]
    proc = subprocess.run(cmd, cwd=tree, env=run_env)
    if proc.returncode != 0:
        raise BusiError(
            f"the commit's run-pipeline --profile {plan.profile} failed (exit "
            f"{proc.returncode}); see its output above"
        )
    made = sorted(reproductions(client, experiment_id, plan.run_id) - earlier)
    if len(made) != 1:
        raise BusiError(
            f"the reproduction ran, but {len(made)} new pipeline runs tagged "
            f"reproduces={plan.run_id} are in the store instead of one: was tracking off "
            "(BUSI_TRACKING), or did another reproduction of it run at the same time?"
        )
    return made[0]
