"""reproduce: rebuild a past pipeline run from its MLflow lineage (code commit, data version,
params) in a git worktree, run it again under a new MLflow run and compare the metrics.

Given a pipeline run (``pipeline-<profile>``) or one of its step runs, ``busi reproduce``
checks the commit out into ``<dir>/code`` (a detached ``git worktree``, removed at the end)
and runs *that* code: its ``components`` come first on PYTHONPATH, so the ``busi`` commands
of dvc.yaml import the worktree, not this checkout.

- ``default`` profile (real data): the worktree's DVC points at the project's cache and
  remotes, ``data.dvc`` is checked out (or pulled) at the run's data version, the params are
  the commit's (or the run's logged params.yaml when their md5 differs) and ``dvc repro
  --force`` reruns every stage in the worktree.
- any other profile (synthetic data): the worktree's ``run-pipeline --profile P`` runs in
  ``<dir>/workspace``.

The new runs go to the original's tracking store and experiment, tagged
``reproduces=<original id>``. The headline metrics are compared with an absolute tolerance;
the verdict and the table go to stdout and ``<dir>/comparison.json``; exit 0 when reproduced.

Core (pure): ``pipeline_run_of``, ``make_plan``, ``code_drift``, ``compare_metrics``,
``compare_lineage``, ``judge``, ``format_report``. Shell: git, DVC and MLflow.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from busi.errors import BusiError

logger = logging.getLogger(__name__)

DEFAULT_TOLERANCE = 0.02
REQUIRED_TAGS = ("git_commit", "data_version", "profile")
PARENT_TAG = "mlflow.parentRunId"
ARTIFACTS = ("params.yaml", "dvc.lock", "evaluation.json")
# Lineage shown side by side; the decisive ones must be equal for a reproduction. dvc.lock
# holds the outputs' hashes too, which differ as soon as a model file differs by a byte.
LINEAGE = ("git_commit", "data_version", "params_md5", "dvc_lock_md5")
DECISIVE = ("git_commit", "data_version", "params_md5")
# Float noise in |new - logged| must not turn a gap of exactly the tolerance into a failure.
EPSILON = 1e-9
NONDETERMINISM = (
    "training on CPU is deterministic with the same code, data and params on the same "
    "machine (train_unet enables op determinism) but not bit-exact across machines or "
    "BLAS builds"
)


# --- core -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunRecord:
    """What reproduce reads of an MLflow run."""

    run_id: str
    name: str
    experiment_id: str
    status: str
    tags: dict[str, str]
    metrics: dict[str, float]


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


def split_commit(tag: str) -> tuple[str, bool]:
    """``abc-dirty`` -> (``abc``, True): the base commit and whether the tree was dirty."""
    return tag.removesuffix("-dirty"), tag.endswith("-dirty")


def pipeline_run_of(
    run_id: str, fetch: Callable[[str], RunRecord | None], store: str = "the tracking store"
) -> RunRecord:
    """The run itself, or the parent it is nested in (a step run of a pipeline run)."""
    run = fetch(run_id)
    if run is None:
        raise BusiError(
            f"no MLflow run {run_id} in {store}: check the id (the MLflow UI shows it) and the "
            "store (--tracking-uri or MLFLOW_TRACKING_URI)"
        )
    seen = {run.run_id}
    while run.tags.get(PARENT_TAG) and run.tags[PARENT_TAG] not in seen:
        parent = fetch(run.tags[PARENT_TAG])
        if parent is None:
            raise BusiError(
                f"run {run.run_id} is nested in run {run.tags[PARENT_TAG]}, which is not in "
                f"{store}: pass the pipeline run's id"
            )
        seen.add(parent.run_id)
        run = parent
    return run


def make_plan(run: RunRecord, requested_id: str) -> Plan:
    missing = [tag for tag in REQUIRED_TAGS if not run.tags.get(tag)]
    if missing:
        raise BusiError(
            f"run {run.run_id} ({run.name}) has no lineage tag {', '.join(missing)}: only runs "
            "made by `busi run-pipeline` (pipeline-<profile> and its steps) record the code "
            "commit, data version and profile a rebuild needs; pick one of those"
        )
    if run.tags.get("kind") != "pipeline":
        raise BusiError(
            f"run {run.run_id} ({run.name}) is a step run outside any pipeline run: reproduce "
            "a pipeline-<profile> run made by `busi run-pipeline`, or one of its steps"
        )
    if not run.metrics:
        raise BusiError(
            f"run {run.run_id} ({run.name}, status {run.status}) logged no headline metrics, "
            "so there is nothing to compare with: reproduce a finished pipeline run"
        )
    commit, dirty = split_commit(run.tags["git_commit"])
    return Plan(
        run_id=run.run_id,
        requested_id=requested_id,
        profile=run.tags["profile"],
        commit=commit,
        dirty=dirty,
        data_version=run.tags["data_version"],
        params_md5=run.tags.get("params_md5"),
        dvc_lock_md5=run.tags.get("dvc_lock_md5"),
        metrics=dict(run.metrics),
    )


def code_drift(lock: Mapping, md5_of: Callable[[str], str | None]) -> list[str]:
    """The stages' code dependencies (``.py`` deps in a dvc.lock) whose recorded md5 differs
    from ``md5_of(path)``, the file at the commit (None when it is absent)."""
    recorded = {}
    for stage in (lock.get("stages") or {}).values():
        for dep in stage.get("deps") or []:
            if str(dep.get("path", "")).endswith(".py") and dep.get("md5"):
                recorded[dep["path"]] = dep["md5"]
    return sorted(path for path, md5 in recorded.items() if md5_of(path) != md5)


def dirty_warning(plan: Plan, drift: list[str] | None) -> str | None:
    """What a dirty original means for this reproduction (None when it was clean)."""
    if not plan.dirty:
        return None
    text = (
        f"the original run's work tree had UNCOMMITTED CHANGES (git_commit {plan.commit}-dirty); "
        f"they cannot be recovered, so this reproduction runs commit {plan.commit[:12]} as "
        "committed"
    )
    if drift:
        return text + f"; the stages' code differed from the commit in: {', '.join(drift)}"
    if drift == []:
        return text + (
            "; the stages' code files recorded in the run's dvc.lock match the commit, so the "
            "changes were elsewhere (in the default profile the pipeline's own outputs, "
            "dvc.lock and metrics, count too)"
        )
    return text + "; the run logged no dvc.lock, so which files differed is unknown"


@dataclass(frozen=True)
class MetricRow:
    name: str
    logged: float | None
    new: float | None
    diff: float | None  # |new - logged|; None when one side lacks the metric
    tolerance: float
    ok: bool


def compare_metrics(
    logged: Mapping[str, float], new: Mapping[str, float], tolerance: float
) -> list[MetricRow]:
    """One row per metric of either run, within ``tolerance`` (absolute) or not."""
    rows = []
    for name in sorted(set(logged) | set(new)):
        a, b = logged.get(name), new.get(name)
        diff = abs(b - a) if a is not None and b is not None else None
        ok = diff is not None and diff <= tolerance + EPSILON
        rows.append(MetricRow(name, a, b, diff, tolerance, ok))
    return rows


@dataclass(frozen=True)
class LineageRow:
    name: str
    original: str | None
    new: str | None
    same: bool
    decisive: bool


def stage_params(lock: Mapping) -> dict:
    """The params each stage ran with, as dvc.lock records them."""
    return {name: stage.get("params") or {} for name, stage in (lock.get("stages") or {}).items()}


def _digest(value) -> str:
    return hashlib.md5(json.dumps(value, sort_keys=True).encode()).hexdigest()


def compare_lineage(
    original: Mapping[str, str],
    new: Mapping[str, str],
    original_lock: Mapping | None = None,
    new_lock: Mapping | None = None,
) -> list[LineageRow]:
    """The lineage tags side by side. With both runs' dvc.lock the params the stages ran with
    decide, not the md5 of the whole params.yaml (a section no stage reads changes that)."""
    by_lock = original_lock is not None and new_lock is not None
    rows = []
    for name in LINEAGE:
        a, b = original.get(name), new.get(name)
        if name == "git_commit" and a and b:
            # The commit is what a rebuild can match; a dirty original is judged apart.
            same = split_commit(a)[0] == split_commit(b)[0]
        else:
            same = a == b
        # A tag the original did not log (an older run) cannot decide anything.
        decisive = name in DECISIVE and a is not None and not (by_lock and name == "params_md5")
        rows.append(LineageRow(name, a, b, same, decisive))
    if by_lock:
        a, b = stage_params(original_lock), stage_params(new_lock)
        rows.append(LineageRow("stage_params", _digest(a), _digest(b), a == b, True))
    return rows


@dataclass(frozen=True)
class Verdict:
    reproduced: bool
    sentence: str


def judge(
    metrics: list[MetricRow],
    lineage: list[LineageRow],
    plan: Plan,
    drift: list[str] | None,
    tolerance: float,
) -> Verdict:
    """Reproduced when every metric is within tolerance and code, data and params are the
    same; otherwise a sentence saying what differs and the likeliest reason."""
    bad_metrics = [row for row in metrics if not row.ok]
    bad_lineage = [row for row in lineage if row.decisive and not row.same]
    if not bad_metrics and not bad_lineage:
        gap = max((row.diff for row in metrics if row.diff is not None), default=0.0)
        caveat = " (but not the original's uncommitted changes)" if plan.dirty else ""
        return Verdict(
            True,
            f"reproduced: all {len(metrics)} headline metrics are within ±{tolerance:g} of the "
            f"logged run (largest gap {gap:.4f}), with the same commit{caveat}, data and params.",
        )
    what = []
    for row in bad_metrics:
        if row.new is None:
            what.append(f"{row.name} was logged by the original run but not by the new one")
        elif row.logged is None:
            what.append(f"{row.name} is new (the original run did not log it)")
        else:
            what.append(f"{row.name} differs by {row.diff:.4f} (more than {tolerance:g})")
    what += [f"the {row.name} differs ({row.original} vs {row.new})" for row in bad_lineage]
    return Verdict(False, f"not reproduced: {'; '.join(what)}. {_cause(bad_lineage, plan, drift)}")


def _cause(bad_lineage: list[LineageRow], plan: Plan, drift: list[str] | None) -> str:
    differing = {row.name for row in bad_lineage}
    if "data_version" in differing:
        return (
            "The new run trained on other data than the original, so its metrics are not a "
            "reproduction (for a synthetic profile: the generator differs from the original's)."
        )
    if differing & {"stage_params", "params_md5"}:
        return (
            "The new run's params differ from the original's (an uncommitted params or "
            "profile change, most likely), so its metrics are not a reproduction."
        )
    if "git_commit" in differing:
        return "The new run did not run the original's commit."
    if drift:
        return (
            f"The original ran uncommitted changes to {', '.join(drift)}, which cannot be "
            f"recovered; the reproduction ran commit {plan.commit[:12]} as committed."
        )
    if plan.dirty:
        return (
            "The original's work tree was dirty: an uncommitted change outside the stages' "
            "recorded code (a module they import) may explain the gap, and it cannot be "
            "recovered."
        )
    return (
        f"Code, data and params are the same, so the gap is numerical: {NONDETERMINISM}; on "
        "another machine a gap of this size can be that (widen --tolerance if it is small), "
        "on the same machine it points to a nondeterministic step."
    )


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def format_report(
    plan: Plan,
    new_run_id: str,
    metrics: list[MetricRow],
    lineage: list[LineageRow],
    verdict: Verdict,
    notes: list[str],
) -> str:
    lines = [
        f"reproduce {plan.run_id} (profile {plan.profile}, commit {plan.commit[:12]}"
        f"{'-dirty' if plan.dirty else ''}) -> new run {new_run_id}",
        *(f"NOTE: {note}" for note in notes),
        "",
        f"{'metric':<28}{'logged':>10}{'new':>10}{'|diff|':>10}{'tol':>8}  ok",
    ]
    for row in metrics:
        lines.append(
            f"{row.name:<28}{_num(row.logged):>10}{_num(row.new):>10}{_num(row.diff):>10}"
            f"{row.tolerance:>8g}  {'yes' if row.ok else 'NO'}"
        )
    lines += ["", f"{'lineage':<14}{'original':<48}{'new':<48}same"]
    for row in lineage:
        if row.original is None:
            same = "unknown (not logged)"
        else:
            same = "yes" if row.same else ("NO" if row.decisive else "no (informative)")
        lines.append(f"{row.name:<14}{row.original or '-':<48}{row.new or '-':<48}{same}")
    lines += ["", verdict.sentence]
    return "\n".join(lines)


# --- shell: MLflow ------------------------------------------------------------------------


def _client(uri: str):
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        # MlflowClient would create an empty store there and then not find the run.
        raise BusiError(
            f"no MLflow store at {uri}: pass --tracking-uri (or set MLFLOW_TRACKING_URI) to the "
            "store the run was logged to"
        )
    from mlflow import MlflowClient

    return MlflowClient(uri)


def _fetcher(client) -> Callable[[str], RunRecord | None]:
    from mlflow.exceptions import MlflowException

    def fetch(run_id: str) -> RunRecord | None:
        try:
            run = client.get_run(run_id)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise BusiError(f"MLflow could not read run {run_id}: {exc.message}") from exc
        return RunRecord(
            run_id=run.info.run_id,
            name=run.info.run_name or "",
            experiment_id=run.info.experiment_id,
            status=run.info.status,
            tags=dict(run.data.tags),
            metrics=dict(run.data.metrics),
        )

    return fetch


def download_artifacts(client, run_id: str, dest: Path) -> list[str]:
    """The run's files that define it (params.yaml, dvc.lock, evaluation.json) into dest."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    logged = {item.path for item in client.list_artifacts(run_id)}
    for name in ARTIFACTS:
        if name in logged:
            client.download_artifacts(run_id, name, str(dest))
    return sorted(set(ARTIFACTS) - logged)


def _reproductions(client, experiment_id: str, original: str) -> set[str]:
    """The ids of the pipeline runs tagged as reproductions of ``original``."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.reproduces = '{original}' and tags.kind = 'pipeline'",
        max_results=1000,
    )
    return {run.info.run_id for run in runs}


# --- shell: git ---------------------------------------------------------------------------


def _git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise BusiError(f"`git {' '.join(args)}` failed in {repo}: {proc.stderr.strip()}")
    return proc


def require_commit(project: Path, commit: str) -> None:
    if _git(project, "cat-file", "-e", f"{commit}^{{commit}}", check=False).returncode != 0:
        raise BusiError(
            f"commit {commit} is not in the repository at {project}: fetch it "
            "(`git fetch --all`) or run reproduce in a clone that has it"
        )


def _remove_worktree(project: Path, path: Path) -> None:
    _git(project, "worktree", "remove", "--force", "--force", str(path), check=False)
    if path.exists():  # git could not: it is ours all the same
        shutil.rmtree(path)
    _git(project, "worktree", "prune", check=False)


@contextlib.contextmanager
def worktree(project: Path, commit: str, path: Path) -> Iterator[Path]:
    """The commit checked out (detached) at ``path``; removed, and pruned, afterwards."""
    _git(project, "worktree", "prune", check=False)  # forget worktrees whose folder is gone
    listed = _git(project, "worktree", "list", "--porcelain").stdout.splitlines()
    if f"worktree {path}" in listed:  # the leftover of an interrupted reproduction
        _remove_worktree(project, path)
    elif path.exists():
        raise BusiError(
            f"{path} exists and is not a worktree of {project}: choose another --workspace "
            "or remove that folder"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    _git(project, "worktree", "add", "--detach", str(path), commit)
    try:
        yield path
    finally:
        _remove_worktree(project, path)


# --- shell: running the worktree's code ---------------------------------------------------


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


def code_env(tree: Path, uri: str, experiment: str, profile: str) -> dict[str, str]:
    """The settings the reproduction runs under: the worktree's ``components`` first on the
    path, tracking on, to the original's store and experiment."""
    pythonpath = os.pathsep.join(p for p in (str(tree), os.environ.get("PYTHONPATH")) if p)
    return {
        "PYTHONPATH": pythonpath,
        "MLFLOW_TRACKING_URI": uri,
        "MLFLOW_EXPERIMENT_NAME": experiment,
        "BUSI_TRACKING": "on",
        "BUSI_PROFILE": profile,
        "DVC_NO_ANALYTICS": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def code_location(tree: Path, env: Mapping[str, str]) -> Path:
    """Where the stages' ``busi`` commands import ``components`` from under ``env``; it must be
    the worktree. (``-P``: like a console script, the current folder does not count.)"""
    probe = "import components; print(components.__file__)"
    proc = subprocess.run(
        [sys.executable, "-P", "-c", probe], cwd=tree, env=dict(env), capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise BusiError(f"commit's code does not import: {proc.stderr.strip()[-2000:]}")
    where = Path(proc.stdout.strip()).resolve().parent
    if not where.is_relative_to(tree.resolve()):
        raise BusiError(
            f"the stages would run {where}, not the worktree {tree}: unset PYTHONPATH entries "
            "or installs that shadow it"
        )
    return where


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
    earlier = _reproductions(client, experiment_id, plan.run_id)
    cmd = [sys.executable, "-m", "components", "run-pipeline", "--profile", plan.profile]
    cmd += ["--project", str(tree), "--workspace", str(workspace)]
    proc = subprocess.run(cmd, cwd=tree, env=run_env)
    if proc.returncode != 0:
        raise BusiError(
            f"the commit's run-pipeline --profile {plan.profile} failed (exit "
            f"{proc.returncode}); see its output above"
        )
    made = sorted(_reproductions(client, experiment_id, plan.run_id) - earlier)
    if len(made) != 1:
        raise BusiError(
            f"the reproduction ran, but {len(made)} new pipeline runs tagged "
            f"reproduces={plan.run_id} are in the store instead of one: was tracking off "
            "(BUSI_TRACKING), or did another reproduction of it run at the same time?"
        )
    return made[0]


def _read_yaml(path: Path) -> dict | None:
    return yaml.safe_load(path.read_text()) if path.is_file() else None


# --- entry --------------------------------------------------------------------------------


def reproduce(
    run_id: str,
    workspace: Path | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    tracking_uri: str | None = None,
    project: Path | None = None,
) -> dict:
    """Rebuild and rerun a pipeline run; returns the comparison (also in comparison.json)."""
    from busi import tracking
    from busi.tracking import file_md5

    project = (project or tracking.PROJECT_ROOT).resolve()
    uri = tracking_uri or tracking.tracking_uri()
    client = _client(uri)
    fetch = _fetcher(client)
    original = pipeline_run_of(run_id, fetch, uri)
    plan = make_plan(original, run_id)
    require_commit(project, plan.commit)
    out = Path(workspace or project / "scratch" / "reproduce" / plan.run_id).resolve()
    out.mkdir(parents=True, exist_ok=True)
    missing = download_artifacts(client, plan.run_id, out / "original")
    notes = [f"the original run logged no {', '.join(missing)}"] if missing else []
    experiment = client.get_experiment(original.experiment_id).name

    with worktree(project, plan.commit, out / "code") as tree:
        lock = _read_yaml(out / "original" / "dvc.lock")
        drift = code_drift(lock, lambda path: file_md5(tree / path)) if lock else None
        warning = dirty_warning(plan, drift)
        if warning:
            logger.warning("!!! %s !!!", warning)
            notes.append(warning)
        env = code_env(tree, uri, experiment, plan.profile)
        code_dir = code_location(tree, {**os.environ, **env})
        # MLflow adds these tags to every run it starts under env: the parent and its steps.
        tags = {"reproduces": plan.run_id, "reproduce_code_dir": str(code_dir)}
        env["MLFLOW_RUN_CONTEXT"] = json.dumps(tags)
        if plan.profile == "default":
            new_id, more = rerun_default(project, plan, tree, out, env)
            notes += more
        else:
            new_id = rerun_profile(plan, tree, out, env, client, original.experiment_id)

    new = fetch(new_id)
    assert new is not None
    new_lock = _read_yaml(out / ("new" if plan.profile == "default" else "workspace") / "dvc.lock")
    metrics = compare_metrics(plan.metrics, new.metrics, tolerance)
    lineage = compare_lineage(original.tags, new.tags, lock, new_lock)
    verdict = judge(metrics, lineage, plan, drift, tolerance)
    client.set_tag(new_id, "reproduced", str(verdict.reproduced).lower())
    result = {
        "run_id": plan.run_id,
        "requested_run_id": plan.requested_id,
        "new_run_id": new_id,
        "tracking_uri": uri,
        "profile": plan.profile,
        "commit": plan.commit,
        "dirty": plan.dirty,
        "code_drift": drift,
        "code_dir": str(code_dir),
        "tolerance": tolerance,
        "metrics": [asdict(row) for row in metrics],
        "lineage": [asdict(row) for row in lineage],
        "notes": notes,
        "reproduced": verdict.reproduced,
        "verdict": verdict.sentence,
        "report": format_report(plan, new_id, metrics, lineage, verdict, notes),
        "comparison_path": str(out / "comparison.json"),
    }
    (out / "comparison.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    from busi.cli import parser_for

    parser = parser_for("reproduce")
    parser.add_argument("run_id", help="an MLflow pipeline run, or one of its step runs")
    parser.add_argument(
        "--workspace",
        type=Path,
        default=None,
        help="where to rebuild (default scratch/reproduce/<run id>)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help=f"largest absolute gap of a headline metric (default {DEFAULT_TOLERANCE})",
    )
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="the MLflow store of the run (default $MLFLOW_TRACKING_URI, else ./mlflow.db)",
    )
    args = parser.parse_args(argv)
    if args.tolerance < 0:
        parser.error("--tolerance must be 0 or more")
    result = reproduce(args.run_id, args.workspace, args.tolerance, args.tracking_uri)
    print(result["report"])
    print(f"comparison written to {result['comparison_path']}")
    return 0 if result["reproduced"] else 1
