"""ingest_data: import a BUSI-layout folder (or a .zip of one) into data/busi and version it
with DVC (data.dvc), then push it to the DVC remote.

The import mirrors the source tree file by file, keeping the original names; validation
decides later what is usable. Ingesting identical data changes nothing. Ingesting changed
data makes a new data version; the old one stays in the DVC cache and the remote, so
``git checkout <rev> data.dvc && dvc checkout data.dvc`` (or ``dvc pull``) brings it back.

Core: ``busi.data.importer`` (``find_dataset_root``, ``list_tree``, ``same_tree``: pure path
logic; ``ingest`` drives the copy and the ``dvc`` commands, also for ``busi run-pipeline``
and ``busi run-training``). Shell: ``main``.
"""

from __future__ import annotations

import os
from pathlib import Path

from busi.data.importer import ingest
from busi.data.versions import DATA_DIR, DVC_FILE
from busi.errors import BusiError


def main(argv: list[str] | None = None) -> int:
    from busi.cli import parser_for

    parser = parser_for("ingest-data")
    parser.add_argument(
        "source",
        nargs="?",
        default=os.environ.get("BUSI_SOURCE"),
        help="BUSI folder or .zip (default: $BUSI_SOURCE)",
    )
    parser.add_argument(
        "--remote",
        default=os.environ.get("BUSI_DVC_REMOTE"),
        help="DVC remote URL: a folder outside the work tree or s3://bucket/prefix "
        "(default: $BUSI_DVC_REMOTE, else the configured default remote, else "
        "$XDG_DATA_HOME/busi-pipeline/dvc-remote)",
    )
    parser.add_argument(
        "--endpoint-url",
        default=os.environ.get("BUSI_S3_ENDPOINT_URL"),
        help="S3 API endpoint for an s3:// remote, e.g. MinIO (default: $BUSI_S3_ENDPOINT_URL)",
    )
    parser.add_argument("--repo", type=Path, default=Path("."), help="project root")
    args = parser.parse_args(argv)
    if not args.source:
        raise BusiError("no source given: pass the BUSI folder or zip, or set BUSI_SOURCE")
    result = ingest(Path(args.source), args.repo, args.remote, args.endpoint_url)
    if result.changed:
        print(
            f"ingested {result.files} files into {DATA_DIR}: data version {result.version} "
            f"(was {result.previous_version or 'none'}), pushed to remote '{result.remote}'.\n"
            f"Commit {DVC_FILE} to git to record this version."
        )
    else:
        print(f"unchanged: {DATA_DIR} already holds data version {result.version}.")
    return 0
