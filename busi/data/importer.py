"""Importing a BUSI-layout folder (or a .zip of one) into data/busi as a new DVC data
version, pushed to the DVC remote: the core of ingest_data, also run by run-pipeline and
run-training.

The import mirrors the source tree file by file, keeping the original names; validation
decides later what is usable. Ingesting identical data changes nothing. Ingesting changed
data makes a new data version; the old one stays in the DVC cache and the remote, so
``git checkout <rev> data.dvc && dvc checkout data.dvc`` (or ``dvc pull``) brings it back.

Core: ``find_dataset_root``, ``list_tree`` and ``same_tree`` (pure path logic); ``ingest``
drives the copy and the ``dvc`` commands (``busi.data.versions``).
"""

from __future__ import annotations

import filecmp
import logging
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from busi.data.preprocess import CLASSES
from busi.data.versions import (
    DATA_DIR,
    DVC_FILE,
    REMOTE_NAME,
    Dvc,
    default_remote_url,
    recorded_version,
    require_recorded,
)
from busi.errors import BusiError

logger = logging.getLogger(__name__)

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
