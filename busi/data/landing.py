"""Landing zones of new data: a local folder or ``s3://bucket/prefix`` holding batches in
BUSI layout, listed, fetched and filed away (``_done``, ``_quarantine``) by ingest_batch."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from busi.data.importer import list_tree
from busi.errors import BusiError

logger = logging.getLogger(__name__)


# Where processed batches go: good files to _done, bad ones to _quarantine, with a report.
DONE = "_done"
QUARANTINE = "_quarantine"
REPORT_NAME = "report.json"


@dataclass(frozen=True)
class Batch:
    """One batch as listed in the landing zone: relative paths, newest change (epoch s)."""

    name: str
    files: tuple[str, ...]
    links: tuple[str, ...] = ()
    newest: float = 0.0
    folders: tuple[str, ...] = ()


class LocalLanding:
    """A landing zone in a local folder."""

    def __init__(self, root: Path):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise BusiError(
                f"landing zone {self.root} does not exist: create it (mkdir -p {self.root}) "
                "or pass another --landing"
            )

    def __str__(self) -> str:
        return str(self.root)

    def batches(self) -> list[Batch]:
        found = []
        for path in sorted(self.root.iterdir()):
            if not path.is_dir() or path.is_symlink() or path.name.startswith(("_", ".")):
                continue
            files, links = list_tree(path)
            stamps, folders = [path.lstat().st_mtime], []
            for dirpath, dirnames, filenames in os.walk(path):
                for name in dirnames + filenames:
                    stamps.append((Path(dirpath) / name).lstat().st_mtime)
                folders += [(Path(dirpath) / d).relative_to(path).as_posix() for d in dirnames]
            found.append(
                Batch(path.name, tuple(files), tuple(links), max(stamps), tuple(sorted(folders)))
            )
        return found

    def fetch(self, batch: Batch, rel: str, target: Path) -> None:
        shutil.copyfile(self.root / batch.name / rel, target)

    def taken(self, area: str, name: str) -> bool:
        return (self.root / area / name).exists()

    def move(self, batch: Batch, rel: str, area: str, dest: str) -> None:
        target = self.root / area / dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.root / batch.name / rel, target)

    def put_report(self, area: str, dest: str, text: str) -> str:
        path = self.root / area / dest / REPORT_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return str(path)

    def tidy(self, batch: Batch) -> None:
        """Remove the batch's emptied folders; files that arrived meanwhile stay."""
        folder = self.root / batch.name
        for dirpath, _, _ in sorted(os.walk(folder), key=lambda t: -len(t[0])):
            with suppress(OSError):
                Path(dirpath).rmdir()
        if folder.exists():
            logger.warning("%s got files while it was processed; they wait for a new run", folder)


class S3Landing:
    """A landing zone under ``s3://bucket/prefix``, through boto3 (endpoint from the argument
    or $BUSI_S3_ENDPOINT_URL, credentials as boto3 finds them)."""

    def __init__(self, url: str, endpoint_url: str | None = None):
        import boto3

        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        if not bucket:
            raise BusiError(f"{url}: expected s3://bucket/prefix")
        self.url, self.bucket = url.rstrip("/"), bucket
        self.base = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        endpoint = endpoint_url or os.environ.get("BUSI_S3_ENDPOINT_URL") or None
        self.client = boto3.client("s3", endpoint_url=endpoint)

    def __str__(self) -> str:
        return self.url

    def _objects(self, prefix: str, delimiter: str | None = None) -> Iterator[dict]:
        from botocore.exceptions import BotoCoreError, ClientError

        kwargs = {"Bucket": self.bucket, "Prefix": prefix}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        try:
            yield from self.client.get_paginator("list_objects_v2").paginate(**kwargs)
        except (BotoCoreError, ClientError) as exc:
            raise BusiError(
                f"cannot list s3://{self.bucket}/{prefix}: {exc}; check the bucket, "
                "BUSI_S3_ENDPOINT_URL and the AWS credentials"
            ) from exc

    def batches(self) -> list[Batch]:
        names = [
            common["Prefix"][len(self.base) :].rstrip("/")
            for page in self._objects(self.base, "/")
            for common in page.get("CommonPrefixes", [])
        ]
        found = []
        for name in sorted(names):
            if name.startswith(("_", ".")):
                continue
            files, newest, folders = [], 0.0, []
            for page in self._objects(f"{self.base}{name}/"):
                for obj in page.get("Contents", []):
                    newest = max(newest, obj["LastModified"].timestamp())
                    rel = obj["Key"][len(self.base) + len(name) + 1 :]
                    if rel.endswith("/"):  # "folder/" keys are console placeholders
                        folders.append(rel.rstrip("/"))
                    elif rel:
                        files.append(rel)
            found.append(Batch(name, tuple(sorted(files)), (), newest, tuple(sorted(folders))))
        return found

    def _key(self, *parts: str) -> str:
        return self.base + "/".join(parts)

    def fetch(self, batch: Batch, rel: str, target: Path) -> None:
        self.client.download_file(self.bucket, self._key(batch.name, rel), str(target))

    def taken(self, area: str, name: str) -> bool:
        page = self.client.list_objects_v2(
            Bucket=self.bucket, Prefix=self._key(area, name) + "/", MaxKeys=1
        )
        return bool(page.get("KeyCount"))

    def move(self, batch: Batch, rel: str, area: str, dest: str) -> None:
        source = self._key(batch.name, rel)
        # Copy, then delete: a failure in between leaves two copies, never none.
        self.client.copy(
            {"Bucket": self.bucket, "Key": source}, self.bucket, self._key(area, dest, rel)
        )
        self.client.delete_object(Bucket=self.bucket, Key=source)

    def put_report(self, area: str, dest: str, text: str) -> str:
        key = self._key(area, dest, REPORT_NAME)
        self.client.put_object(
            Bucket=self.bucket, Key=key, Body=text.encode(), ContentType="application/json"
        )
        return f"s3://{self.bucket}/{key}"

    def tidy(self, batch: Batch) -> None:
        # Only "folder/" placeholder keys can be left; a batch of them alone would never settle.
        for page in self._objects(self._key(batch.name) + "/"):
            for obj in page.get("Contents", []):
                if obj["Key"].endswith("/"):
                    self.client.delete_object(Bucket=self.bucket, Key=obj["Key"])


def open_landing(landing: str | Path, endpoint_url: str | None = None) -> LocalLanding | S3Landing:
    text = str(landing)
    if text.startswith("s3://"):
        return S3Landing(text, endpoint_url)
    if "://" in text:
        raise BusiError(f"landing zone {text}: only a folder or s3://bucket/prefix is supported")
    return LocalLanding(Path(text))
