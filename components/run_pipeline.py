"""run-pipeline: import the data and run every DVC stage for one profile, under one MLflow
parent run whose nested runs are the steps.

Profiles: ``default`` runs in the project itself on the real data (``BUSI_SOURCE``).
Any other profile (``smoke``: tiny synthetic data and models, seconds a stage) runs in its
own scratch workspace ``scratch/<profile>/`` with its own DVC cache, remote and MLflow
store, its params being ``params.yaml`` deep-merged with ``profiles/<profile>.yaml``; the
real-data outputs are never touched. The profile is the one setting: ``--profile`` or
``BUSI_PROFILE``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from busi.orchestration.workspace import prepare_workspace, repro_under_parent, resolve_source

logger = logging.getLogger(__name__)


def run(
    profile: str,
    source: Path | None,
    project: Path,
    workspace: Path | None = None,
    settings: dict | None = None,
    stage: str | None = None,
) -> dict:
    from busi.data.importer import ingest
    from busi.orchestration.preflight import check_params

    project = project.resolve()
    ws = prepare_workspace(project, profile, workspace, settings)
    check_params(ws / "params.yaml")
    source = resolve_source(project, profile, ws, source)
    remote = None if ws == project else str(ws.parent / f"{ws.name}.dvc-remote")
    result = ingest(Path(source), ws, remote)
    logger.info("data version %s (%s)", result.version, "new" if result.changed else "unchanged")

    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{ws / 'mlflow.db'}")
    parent_run_id, summary = repro_under_parent(ws, profile, stage=stage)
    return {
        "workspace": str(ws),
        "data_version": result.version,
        "parent_run_id": parent_run_id,
        "tracking_uri": os.environ["MLFLOW_TRACKING_URI"],
        "headline": summary.get("headline", {}),
    }


def main(argv: list[str] | None = None) -> int:
    from busi.cli import add_profile_options, parser_for

    parser = parser_for("run-pipeline")
    add_profile_options(parser)
    parser.add_argument(
        "--workspace",
        type=Path,
        default=None,
        help="where a non-default profile runs (default scratch/<profile>)",
    )
    parser.add_argument(
        "--project", type=Path, default=Path("."), help="the project root (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    out = run(args.profile, args.source, args.project, args.workspace)
    print(f"workspace: {out['workspace']}\ndata version: {out['data_version']}")
    print(
        f"MLflow: {out['tracking_uri']} (parent run {out['parent_run_id']}); browse it with "
        f"`mlflow ui --backend-store-uri {out['tracking_uri']}`"
    )
    if out["headline"]:
        print(
            "test split: "
            + ", ".join(f"{k} {v:.3f}" for k, v in out["headline"].items() if isinstance(v, float))
        )
    return 0
