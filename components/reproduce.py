"""reproduce: rebuild a past pipeline run from its MLflow lineage (code commit, data version,
params) in a git worktree, run it again under a new MLflow run and compare the metrics.

Given a pipeline run (``pipeline-<profile>``) or one of its step runs, ``busi reproduce``
checks the commit out into ``<dir>/code`` (a detached ``git worktree``, removed at the end)
and runs *that* code: its ``components`` (and ``busi``) come first on PYTHONPATH, so the
``busi`` commands of dvc.yaml import the worktree, not this checkout (a commit from before
busi/ existed gets its own dispatcher first on PATH).

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
``compare_lineage``, ``judge``, ``format_report``. Shell: ``reproduce`` and ``main``, with
git, DVC and MLflow from ``busi.reproduction`` (``mlflow_runs``, ``git_worktree``,
``rerun``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from busi.errors import BusiError
from busi.reproduction.git_worktree import require_commit, worktree
from busi.reproduction.mlflow_runs import RunRecord, client_for, download_artifacts, fetcher
from busi.reproduction.rerun import (
    Plan,
    code_env,
    code_location,
    old_layout_launcher,
    rerun_default,
    rerun_profile,
)

logger = logging.getLogger(__name__)

DEFAULT_TOLERANCE = 0.02
REQUIRED_TAGS = ("git_commit", "data_version", "profile")
PARENT_TAG = "mlflow.parentRunId"
# Lineage shown side by side; the decisive ones must be equal for a reproduction. dvc.lock
# holds the outputs' hashes too, which differ as soon as a model file differs by a byte.
# The host (CPU model, its family and instruction sets) is shown, never decisive: it names
# the likeliest cause of a numerical gap.
LINEAGE = ("git_commit", "data_version", "params_md5", "dvc_lock_md5", "machine", "cpu_isa")
DECISIVE = ("git_commit", "data_version", "params_md5")
# Float noise in |new - logged| must not turn a gap of exactly the tolerance into a failure.
EPSILON = 1e-9
NONDETERMINISM = (
    "training on CPU is deterministic with the same code, data and params on the same "
    "machine (train_unet enables op determinism) but not bit-exact across machines or "
    "BLAS builds"
)


# --- core -------------------------------------------------------------------------------


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
    cause = _cause(bad_lineage, plan, drift, lineage)
    return Verdict(False, f"not reproduced: {'; '.join(what)}. {cause}")


def _cause(
    bad_lineage: list[LineageRow],
    plan: Plan,
    drift: list[str] | None,
    lineage: list[LineageRow] = (),
) -> str:
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
    host = {row.name: row for row in lineage if row.name in ("machine", "cpu_isa")}
    isa = host.get("cpu_isa")
    if isa and "unknown" in (isa.original, isa.new):
        isa = None  # a host without /proc/cpuinfo: nothing to compare
    if isa and isa.original and isa.new and not isa.same:
        machines = host.get("machine")
        a = f"{machines.original} ({isa.original})" if machines else isa.original
        b = f"{machines.new} ({isa.new})" if machines else isa.new
        return (
            f"Code, data and params are the same, so the gap is numerical: the original ran "
            f"on {a}, this run on {b}; {NONDETERMINISM}, and with other instruction sets a "
            "seed can train another model (on BUSI by as much as another seed: compare means "
            "over seeds, bench/bench_chain_seeds.py)."
        )
    if isa and isa.original and isa.same:
        return (
            f"Code, data and params are the same, so the gap is numerical, on a CPU of the "
            f"same family and instruction sets ({isa.original}): it points to a "
            "nondeterministic step, or a host difference below these (a library build)."
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
    # Columns as wide as their longest value (a commit hash, a CPU's instruction sets).
    width = 2 + max([48, *(len(v or "") for row in lineage for v in (row.original, row.new))])
    lines += ["", f"{'lineage':<14}{'original':<{width}}{'new':<{width}}same"]
    for row in lineage:
        if row.original is None:
            same = "unknown (not logged)"
        else:
            same = "yes" if row.same else ("NO" if row.decisive else "no (informative)")
        lines.append(f"{row.name:<14}{row.original or '-':<{width}}{row.new or '-':<{width}}{same}")
    lines += ["", verdict.sentence]
    return "\n".join(lines)


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
    client = client_for(uri)
    fetch = fetcher(client)
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
        launcher = old_layout_launcher(tree, out / "bin")
        env = code_env(tree, uri, experiment, plan.profile, launcher)
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
