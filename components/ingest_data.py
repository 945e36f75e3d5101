"""ingest_data: import a BUSI-layout folder (or a .zip of one) into data/busi and version it
with DVC (data.dvc), then push it to the DVC remote.

The import mirrors the source tree file by file, keeping the original names; validation
decides later what is usable. Ingesting identical data changes nothing. Ingesting changed
data makes a new data version; the old one stays in the DVC cache and the remote, so
``git checkout <rev> data.dvc && dvc checkout data.dvc`` (or ``dvc pull``) brings it back.

Core: ``find_dataset_root``, ``list_tree`` and ``same_tree`` (pure path logic). Shell:
``ingest`` drives the copy and the ``dvc`` commands.
"""

from __future__ import annotations

import filecmp
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from components.errors import BusiError
from components.preprocess import CLASSES

logger = logging.getLogger(__name__)

DATA_DIR = Path("data/busi")
DVC_FILE = Path("data.dvc")
REMOTE_NAME = "storage"
MAX_ZIP_BYTES = 5 * 1024**3  # uncompressed; BUSI is about 200 MB


@dataclass(frozen=True)
class IngestResult:
    changed: bool
    version: str  # the md5 of data/busi recorded in data.dvc
    previous_version: str | None
    files: int
    remote: str


def find_dataset_root(folder: Path) -> Path:
    """The folder holding the class folders: ``folder`` itself or its single subfolder
    (``Dataset_BUSI_with_GT/`` as distributed)."""

    def has_classes(path: Path) -> bool:
        return any((path / c).is_dir() for c in CLASSES)

    if has_classes(folder):
        return folder
    subdirs = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))]
    if len(subdirs) == 1 and has_classes(subdirs[0]):
        return subdirs[0]
    raise BusiError(
        f"{folder} does not look like BUSI: expected class folders "
        f"({', '.join(CLASSES)}) in it or in its single subfolder "
        "(the download unpacks to Dataset_BUSI_with_GT/)"
    )


def list_tree(root: Path) -> tuple[list[str], list[str]]:
    """(regular files, skipped links) under root as sorted POSIX relative paths."""
    files, links = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames) + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                links.append(rel)
            elif path.is_file():
                files.append(rel)
    return files, links


def same_tree(a: Path, b: Path) -> bool:
    """Whether two folders hold the same files with the same bytes."""
    if not (a.is_dir() and b.is_dir()):
        return False
    files_a, _ = list_tree(a)
    files_b, _ = list_tree(b)
    if files_a != files_b:
        return False
    return all(filecmp.cmp(a / rel, b / rel, shallow=False) for rel in files_a)


def _extract_zip(archive: Path, into: Path) -> Path:
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.infolist() if not m.filename.startswith("__MACOSX/")]
            total = sum(m.file_size for m in members)
            if total > MAX_ZIP_BYTES:
                raise BusiError(f"{archive} unpacks to {total} bytes, more than {MAX_ZIP_BYTES}")
            for member in members:
                target = (into / member.filename).resolve()
                if not target.is_relative_to(into.resolve()):
                    raise BusiError(f"{archive}: member {member.filename!r} escapes the archive")
                zf.extract(member, into)
    except zipfile.BadZipFile as exc:
        raise BusiError(f"{archive} is not a readable zip file: {exc}") from exc
    return find_dataset_root(into)


def default_remote_url() -> str:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "busi-pipeline" / "dvc-remote")


class Dvc:
    """Runs ``dvc`` in one repository, with analytics off; errors become BusiError."""

    def __init__(self, repo: Path):
        self.repo = Path(repo)
        self.env = {**os.environ, "DVC_NO_ANALYTICS": "1"}

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "dvc", *args]
        proc = subprocess.run(cmd, cwd=self.repo, env=self.env, capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise BusiError(f"`dvc {' '.join(args)}` failed:\n{proc.stderr.strip() or proc.stdout}")
        return proc

    def configure_remote(self, url: str, endpoint_url: str | None) -> None:
        """Make ``url`` the default remote in the per-machine config (.dvc/config.local)."""
        if "://" not in url:
            path = Path(url).expanduser().resolve()
            if path.is_relative_to(self.repo.resolve()):
                raise BusiError(
                    f"the DVC remote {path} lies inside the work tree; choose a folder outside it"
                )
            path.mkdir(parents=True, exist_ok=True)
            url = str(path)
        self("remote", "add", "--local", "--default", "--force", REMOTE_NAME, url)
        if endpoint_url:
            self("remote", "modify", "--local", REMOTE_NAME, "endpointurl", endpoint_url)

    def default_remote(self) -> str | None:
        proc = self("remote", "default", check=False)
        name = proc.stdout.strip()
        return name if proc.returncode == 0 and name else None


def require_recorded(dvc: Dvc, data_dir: Path, then: str = "") -> None:
    """Refuse to touch ``data_dir`` while it holds changes that data.dvc does not record."""
    status = dvc("status", str(DVC_FILE), "--json").stdout.strip()
    if status not in ("{}", ""):
        raise BusiError(
            f"{data_dir} has changes not recorded in {DVC_FILE} ({status}); "
            f"run `dvc commit {DVC_FILE}` to keep them or `dvc checkout {DVC_FILE}` to drop "
            f"them{then}"
        )


def recorded_version(dvc_file: Path) -> str | None:
    if not dvc_file.is_file():
        return None
    outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or [{}]
    return outs[0].get("md5")


def ingest(
    source: Path,
    repo: Path = Path("."),
    remote_url: str | None = None,
    endpoint_url: str | None = None,
) -> IngestResult:
    repo = Path(repo)
    source = Path(source).expanduser()
    if not (repo / ".dvc").is_dir():
        raise BusiError(f"{repo.resolve()} is not a DVC project: run from the project root")
    if not source.exists():
        raise BusiError(
            f"source {source} does not exist: download BUSI (Dataset_BUSI_with_GT) and pass "
            "its folder or zip, or set BUSI_SOURCE (see README)"
        )
    dvc = Dvc(repo)
    if remote_url:
        dvc.configure_remote(remote_url, endpoint_url)
    elif dvc.default_remote() is None:
        dvc.configure_remote(default_remote_url(), None)
    remote = dvc.default_remote() or REMOTE_NAME

    data_dir, dvc_file = repo / DATA_DIR, repo / DVC_FILE
    previous = recorded_version(dvc_file)
    if data_dir.exists():
        if previous is None:
            raise BusiError(
                f"{data_dir} exists but is not versioned by {DVC_FILE}; move it away first so "
                "nothing unversioned is overwritten"
            )
        require_recorded(dvc, data_dir)

    with tempfile.TemporaryDirectory(prefix="busi-ingest-") as tmp:
        if source.is_file():
            if source.suffix.lower() != ".zip":
                raise BusiError(f"{source} is a file but not a .zip; pass a folder or a zip")
            root = _extract_zip(source, Path(tmp) / "unzipped")
        else:
            root = find_dataset_root(source)
        files, links = list_tree(root)
        for link in links:
            logger.warning("skipping symbolic link %s (not copied)", link)
        if not files:
            raise BusiError(f"{root} holds no files")

        if previous and same_tree(root, data_dir):
            logger.info(
                "data/busi already holds this data (version %s): nothing to ingest", previous
            )
            dvc("push", str(DVC_FILE))
            return IngestResult(False, previous, previous, len(files), remote)

        staging = data_dir.parent / ".busi.incoming"
        if staging.exists():
            shutil.rmtree(staging)
        from tqdm import tqdm

        for rel in tqdm(files, desc="ingest-data", unit="file", leave=False):
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / rel, target)
    # The old version is in the DVC cache (checked above), so replacing the folder loses nothing.
    if data_dir.exists():
        shutil.rmtree(data_dir)
    staging.rename(data_dir)
    if not dvc_file.exists():
        dvc_file.write_text(f"outs:\n- path: {DATA_DIR.as_posix()}\n")
    dvc("commit", "--force", str(DVC_FILE))
    dvc("push", str(DVC_FILE))
    version = recorded_version(dvc_file)
    assert version, "dvc commit wrote no md5"
    return IngestResult(True, version, previous, len(files), remote)


def main(argv: list[str] | None = None) -> int:
    from components.cli import parser_for

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
