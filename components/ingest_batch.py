"""ingest_batch: merge the ready batches of new images from a landing zone into data/busi
with validate-data's checks, quarantine what fails with a report, and record a new DVC
data version.

A landing zone is a folder or ``s3://bucket/prefix``; a batch is one sub-folder of it in
BUSI layout (``<batch>/<class>/<name>.png`` with ``<stem>_mask.png`` masks). A batch is
ready when it holds the ready marker (``_READY``) or nothing in it changed for
``settle_seconds``. Good images get the next free ``<class> (<n>).png`` names in data/busi;
bad files go to ``<landing>/_quarantine/<batch>/`` beside a ``report.json`` saying why and
what to do; the processed batch goes to ``<landing>/_done/<batch>/``.

Core: ``is_ready``, ``next_numbers`` and ``judge_batch`` (files and a reader -> accepted
and quarantined, no I/O of their own), with validate-data's checks from
``busi.data.validation``. Shell: ``ingest_batches`` (lock, landing zone from
``busi.data.landing``, merge, ``dvc commit`` and ``dvc push``), which the Airflow DAG
calls, and ``main``.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from busi.config import load_section
from busi.data.imaging import sha256_bytes
from busi.data.landing import (
    DONE,
    QUARANTINE,
    Batch,
    LocalLanding,
    S3Landing,
    open_landing,
)
from busi.data.validation import (
    FILE_REASONS,
    ImageFiles,
    ValidateConfig,
    folder_entries,
    group_files,
    list_files,
    validate_corpus,
)
from busi.data.versions import (
    DATA_DIR,
    DVC_FILE,
    Dvc,
    default_remote_url,
    recorded_version,
    require_recorded,
)
from busi.errors import BusiError
from busi.model import drift

logger = logging.getLogger(__name__)

LOCK_FILE = ".busi-ingest.lock"
# Beside data/busi, on the same filesystem, so moving a file from there into it is a rename.
STAGING_DIR = Path("data/.busi-batch.incoming")
PUSH_PENDING = Path(".dvc/tmp/busi-ingest-push-pending")  # .dvc/tmp is git-ignored by DVC


@dataclass(frozen=True)
class IngestBatchConfig:
    settle_seconds: float = 60.0  # a batch with no ready marker is taken after this quiet time
    ready_marker: str = "_READY"
    drift: str = "warn"  # warn | block | off: compare with the training data (drift.py)
    drift_alpha: float = 0.01
    drift_permutations: int = 500
    drift_reference_size: int = 300

    def __post_init__(self) -> None:
        if self.settle_seconds < 0:
            raise ValueError("settle_seconds must be >= 0")
        if not self.ready_marker or "/" in self.ready_marker:
            raise ValueError("ready_marker must be a plain file name")
        self.drift_config()  # validates the drift settings

    def drift_config(self):
        from busi.model.drift import DriftConfig

        return DriftConfig(
            self.drift, self.drift_alpha, self.drift_permutations, self.drift_reference_size
        )


# Reasons of this step on top of validate-data's (same shape: code -> sentence).
BATCH_REASONS: dict[str, str] = {
    "already_in_dataset": "a byte-identical copy of an image already in the dataset",
    "symlink": "a symbolic link, not a file",
    "label_conflict": "the same file is in this batch under another class too",
}

# What the uploader can do about each reason; a fixed file goes into a new batch.
FIXES: dict[str, str] = {
    "unknown_class": "put the image in a folder named benign, malignant or normal",
    "odd_filename": "put the image in a folder named benign, malignant or normal",
    "undecodable": "export the image again as PNG and upload it in a new batch",
    "too_small": "upload the full-size scan, not a thumbnail or crop",
    "blank_image": "the image is (nearly) empty: check the export and upload the real scan",
    "missing_mask": "add '<name>_mask.png' beside the image (all black for a normal image)",
    "mask_undecodable": "export the mask again as PNG and upload it with its image",
    "mask_size_mismatch": "export the mask from the same scan, at the image's size",
    "mask_not_binary": "save the mask with two values only: 0 for background, 255 for lesion",
    "empty_mask": "draw the lesion in the mask, or file the image under normal if it has none",
    "full_mask": "mark only the lesion in the mask (white), the rest black; upload it again",
    "lesion_on_normal": "file the image under benign or malignant, or clear its mask",
    "exact_duplicate": "nothing to do: the batch holds this file twice and one copy was kept",
    "already_in_dataset": "nothing to do: this image is already in the dataset",
    "orphan_mask": "upload the image this mask belongs to, named like the mask without _mask",
    "unexpected_location": "put files directly in <batch>/<class>/ (no deeper folders, "
    "none beside the class folders)",
    "symlink": "upload the file itself, not a link to it",
    "folder_named_like_image": "upload the image file itself, not a folder of that name",
    "label_conflict": "decide which class is right and upload the image once, in that folder",
}
DEFAULT_FIX = "fix the file and upload it in a new batch"


# ---------------------------------------------------------------- core (no I/O of its own)


def is_ready(batch: Batch, cfg: IngestBatchConfig, now: float) -> bool:
    if cfg.ready_marker in batch.files:
        return True
    return bool(batch.files or batch.links) and now - batch.newest >= cfg.settle_seconds


def next_numbers(relative_paths: Iterable[str]) -> dict[str, int]:
    """The next free <n> of '<class> (<n>)' per class folder (never reusing a gap, so an id
    that once meant another image never comes back)."""
    highest: dict[str, int] = {}
    for rel in relative_paths:
        folder, _, name = rel.partition("/")
        match = re.match(rf"^{re.escape(folder)} \((\d+)\)", name)
        if match:
            highest[folder] = max(highest.get(folder, 0), int(match.group(1)))
    return {folder: n + 1 for folder, n in highest.items()}


def _busi_names(files: ImageFiles, number: int) -> dict[str, str]:
    """Original -> BUSI-style path of an image and its masks (masks in their natural order)."""
    stem = f"{files.folder} ({number})"
    names = {files.path: f"{files.folder}/{stem}.png"}
    for k, mask in enumerate(files.masks):
        suffix = "_mask" if k == 0 else f"_mask_{k}"
        names[f"{files.folder}/{mask}"] = (
            f"{files.folder}/{stem}{suffix}{Path(mask).suffix.lower()}"
        )
    return names


def _plain(rel: str) -> bool:
    return not {"", ".", ".."} & set(rel.split("/"))


def is_read(rel: str) -> bool:
    """Whether judge_batch may read this path: '<class>/<file>', nothing else."""
    return _plain(rel) and rel.count("/") == 1


def _file_reason(code: str) -> dict:
    return {"code": code, "message": {**FILE_REASONS, **BATCH_REASONS}[code]}


def _entry(path: str, files: list[str], reasons: list[dict]) -> dict:
    for reason in reasons:
        reason["fix"] = FIXES.get(reason["code"], DEFAULT_FIX)
    return {"path": path, "files": files, "reasons": reasons}


@dataclass
class Verdict:
    """What to do with one batch: accepted images (original -> new paths, masks included)
    and quarantine entries (path, files to move, reasons with a fix)."""

    accepted: list[dict] = field(default_factory=list)
    quarantined: list[dict] = field(default_factory=list)

    @property
    def reasons(self) -> Counter:
        return Counter(r["code"] for entry in self.quarantined for r in entry["reasons"])


def judge_batch(
    relative_paths: Iterable[str],
    read: Callable[[str], bytes],
    size_of: Callable[[str], int],
    cfg: ValidateConfig,
    known: dict[str, str],
    next_free: dict[str, int],
    links: Iterable[str] = (),
    folders: Iterable[str] = (),
) -> Verdict:
    """Validate a batch with validate-data's checks and decide its files' fates.

    ``known`` maps the sha256 of every image already in the dataset to its path; ``next_free``
    gives the next free number per class (``next_numbers``). The accepted images are numbered
    from there, consecutively, in the batch's natural order."""
    paths = list(relative_paths)
    images, stray, top_level = group_files(p for p in paths if _plain(p))
    verdict = Verdict()
    # Object keys can hold '..' or empty segments; such a file is never read or written.
    stray += [
        {"path": p, "reasons": [_file_reason("unexpected_location")]}
        for p in paths
        if not _plain(p)
    ]
    for entry in stray:
        verdict.quarantined.append(_entry(entry["path"], [entry["path"]], entry["reasons"]))
    # Beside the class folders of a batch there is nothing to keep (unlike a README in BUSI).
    for rel in top_level:
        verdict.quarantined.append(_entry(rel, [rel], [_file_reason("unexpected_location")]))
    for rel in links:
        verdict.quarantined.append(_entry(rel, [rel], [_file_reason("symlink")]))
    # Nothing to move: files inside such a folder are quarantined on their own, and the
    # emptied folder is tidied away with the batch.
    for entry in folder_entries(folders):
        verdict.quarantined.append(_entry(entry["path"], [], entry["reasons"]))
    if not images:
        return verdict

    # Validate under the names the files will have in data/busi, so the name rules apply to
    # the names that land there; the folder says the class.
    counters = dict(next_free)
    to_original: dict[str, str] = {}
    by_virtual: dict[str, ImageFiles] = {}
    for files in images:
        number = counters.get(files.folder, 1)
        counters[files.folder] = number + 1
        names = _busi_names(files, number)
        to_original.update({new: old for old, new in names.items()})
        by_virtual[names[files.path]] = files
    result = validate_corpus(
        sorted(to_original),
        read=lambda rel: read(to_original[rel]),
        size_of=lambda rel: size_of(to_original[rel]),
        cfg=cfg,
    )
    reasons_of = {entry["path"]: entry["reasons"] for entry in result.report["quarantined"]}
    # The same bytes under two classes: which label is right is the uploader's call, so no
    # copy is merged (validate-data would only note the conflict).
    hashed = result.manifest[result.manifest["sha256"].notna()]
    same_file = {
        sha: list(group["path"])
        for sha, group in hashed.groupby("sha256")
        if group["class"].nunique() > 1
    }
    original_id = {v.rsplit(".", 1)[0]: orig for v, orig in to_original.items()}

    def in_batch_words(text: str | None) -> str | None:
        # Details name images by their validation id; say the uploader's file name instead.
        return text and re.sub(
            r"[^\s/]+/[^\s/]+ \(\d+\)", lambda m: original_id.get(m[0], m[0]), text
        )

    counters = dict(next_free)
    for _, row in result.manifest.iterrows():
        files = by_virtual[row["path"]]
        all_files = [files.path] + [f"{files.folder}/{m}" for m in files.masks]
        reasons = [
            {**r, "detail": in_batch_words(r.get("detail"))} if r.get("detail") else dict(r)
            for r in reasons_of.get(row["path"], [])
        ]
        if isinstance(row["sha256"], str) and row["sha256"] in same_file:
            others = [to_original[p] for p in same_file[row["sha256"]] if p != row["path"]]
            reasons.append(
                {
                    "code": "label_conflict",
                    "message": BATCH_REASONS["label_conflict"],
                    "detail": f"same bytes as {', '.join(others)}",
                }
            )
        if isinstance(row["sha256"], str) and row["sha256"] in known:
            reasons.append(
                {
                    "code": "already_in_dataset",
                    "message": BATCH_REASONS["already_in_dataset"],
                    "detail": f"same bytes as {known[row['sha256']]}",
                }
            )
        if reasons:
            verdict.quarantined.append(_entry(files.path, all_files, reasons))
            continue
        number = counters.get(files.folder, 1)
        counters[files.folder] = number + 1
        verdict.accepted.append(
            {
                "path": files.path,
                "sha256": row["sha256"],
                "renamed": _busi_names(files, number),
                "notes": row["notes"] or None,
            }
        )
    return verdict


# ---------------------------------------------------------------- shell


@dataclass(frozen=True)
class BatchOutcome:
    name: str
    accepted: int
    quarantined: int
    moved_to: str  # the batch's folder under _done
    reports: tuple[str, ...]
    renamed: dict[str, str]  # original -> new path in data/busi, masks included
    reasons: dict[str, int]
    drift: dict = field(default_factory=dict)  # drift.check_accepted's report


@dataclass(frozen=True)
class IngestBatchResult:
    changed: bool  # a new data version was made
    new_version: str | None  # md5 of data/busi in data.dvc; None when nothing was merged
    previous_version: str | None
    batches: tuple[BatchOutcome, ...]  # the batches processed, in name order
    waiting: tuple[str, ...]  # batches not ready yet, left alone
    accepted: int
    quarantined: int
    reasons: dict[str, int]  # quarantine reason -> count
    reports: tuple[str, ...]
    message: str
    held: tuple[dict, ...] = ()  # batches left in the landing zone: drift with drift=block

    @property
    def version(self) -> str | None:
        return self.new_version or self.previous_version

    def to_dict(self) -> dict:
        return asdict(self)


@contextmanager
def workspace_lock(workspace: Path, timeout: float | None = None) -> Iterator[None]:
    """Hold the workspace's ingest lock; wait for another holder (at most ``timeout`` s)."""
    path = Path(workspace) / LOCK_FILE
    with path.open("a") as handle:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is None:
                    logger.info("another ingest holds %s: waiting for it", path)
                    fcntl.flock(handle, fcntl.LOCK_EX)
                    break
                if time.monotonic() >= deadline:
                    raise BusiError(
                        f"another ingest-batch still holds {path} after {timeout:g} s; "
                        "try again when it has finished"
                    ) from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _require_recorded(dvc: Dvc, workspace: Path) -> str:
    """The recorded data version; refuse when data/busi differs from it."""
    version = recorded_version(workspace / DVC_FILE)
    if version is None:
        raise BusiError(
            f"{workspace / DVC_FILE} records no data version: run `busi ingest-data SOURCE` "
            "first; ingest-batch adds to an existing dataset"
        )
    require_recorded(dvc, workspace / DATA_DIR, then=", then run ingest-batch again")
    return version


def _mark_unpushed(workspace: Path, version: str) -> Path:
    pending = workspace / PUSH_PENDING
    pending.parent.mkdir(parents=True, exist_ok=True)
    pending.write_text(version + "\n")
    return pending


def _push(dvc: Dvc, workspace: Path, version: str) -> None:
    """``dvc push`` the data version; until it succeeds, a marker makes the next run retry."""
    pending = _mark_unpushed(workspace, version)
    if dvc.default_remote() is None:
        dvc.configure_remote(default_remote_url(), None)  # as ingest-data does
    try:
        dvc("push", str(DVC_FILE))
    except BusiError as exc:
        raise BusiError(
            f"data version {version} is recorded in {DVC_FILE} but could not be pushed: {exc}\n"
            f"The next ingest-batch retries the push; or run `dvc push {DVC_FILE}`."
        ) from exc
    pending.unlink()


def _dataset_index(data_dir: Path) -> tuple[dict[str, str], dict[str, int]]:
    """sha256 -> path of every image in data/busi, and the next free number per class."""
    paths = list_files(data_dir)
    images, _, _ = group_files(paths)
    known = {sha256_bytes((data_dir / f.path).read_bytes()): f.path for f in images}
    return known, next_numbers(paths)


def _free_name(landing: LocalLanding | S3Landing, name: str) -> str:
    """``name``, or ``name~2``, ``name~3`` ... when an earlier batch of that name was kept."""
    candidate, k = name, 1
    while landing.taken(DONE, candidate) or landing.taken(QUARANTINE, candidate):
        k += 1
        candidate = f"{name}~{k}"
    return candidate


def _not_ready_words(batch: Batch, cfg: IngestBatchConfig, now: float) -> str:
    if not (batch.files or batch.links):
        return f"{batch.name} (empty)"
    return (
        f"{batch.name} (no {cfg.ready_marker}, last change {now - batch.newest:.0f} s ago, "
        f"settle_seconds={cfg.settle_seconds:g})"
    )


def ingest_batches(
    landing: str | Path,
    workspace: Path = Path("."),
    settle_seconds: float | None = None,
    *,
    params: Path | None = None,
    endpoint_url: str | None = None,
    lock_timeout: float | None = None,
    now: float | None = None,
) -> IngestBatchResult:
    """Merge every ready batch of ``landing`` (a folder or s3://bucket/prefix) into
    ``workspace``/data/busi, quarantine bad files, make and push a new data version.

    Settings come from the ``ingest_batch`` and ``validate_data`` sections of ``params``
    (default ``workspace``/params.yaml); ``settle_seconds`` overrides the former's."""
    workspace = Path(workspace)
    params = Path(params) if params else workspace / "params.yaml"
    cfg = load_section(params, "ingest_batch", IngestBatchConfig)
    if settle_seconds is not None:
        try:
            cfg = dataclasses.replace(cfg, settle_seconds=float(settle_seconds))
        except ValueError as exc:
            raise BusiError(f"settle_seconds: {exc}") from exc
    validate_cfg = load_section(params, "validate_data", ValidateConfig)
    if not (workspace / ".dvc").is_dir():
        raise BusiError(f"{workspace.resolve()} is not a DVC project: pass the project root")
    zone = open_landing(landing, endpoint_url)
    data_dir = workspace / DATA_DIR
    if isinstance(zone, LocalLanding):
        root, data = zone.root.resolve(), data_dir.resolve()
        # Either way round, filing batches away would move the dataset's own files.
        if root.is_relative_to(data) or data.is_relative_to(root):
            raise BusiError(
                f"the landing zone {zone} and the data folder {data_dir} overlap; use a "
                "landing folder outside the data (e.g. <project>/landing)"
            )

    with workspace_lock(workspace, lock_timeout):
        dvc = Dvc(workspace)
        previous = recorded_version(workspace / DVC_FILE)
        if (workspace / PUSH_PENDING).is_file() and previous:
            logger.info("pushing data version %s, left unpushed by an earlier run", previous)
            _push(dvc, workspace, previous)
        now = time.time() if now is None else now
        listed = zone.batches()
        ready = [b for b in listed if is_ready(b, cfg, now)]
        waiting = [b for b in listed if b not in ready]
        if not ready:
            why = (
                "not ready: " + "; ".join(_not_ready_words(b, cfg, now) for b in waiting)
                if waiting
                else f"no batch in {zone}"
            )
            return _result(previous, None, [], waiting, f"nothing to merge: {why}")
        previous = _require_recorded(dvc, workspace)
        return _merge(zone, ready, waiting, workspace, dvc, validate_cfg, cfg, previous)


def _merge(
    zone: LocalLanding | S3Landing,
    ready: list[Batch],
    waiting: list[Batch],
    workspace: Path,
    dvc: Dvc,
    validate_cfg: ValidateConfig,
    cfg: IngestBatchConfig,
    previous: str,
) -> IngestBatchResult:
    """Judge the ready batches, merge the accepted images, commit, file the batches away,
    push. Until the commit succeeds, a failure undoes the merge and leaves the landing zone
    as it was."""
    plans, drifts, held, new_version = _merge_into_data(
        zone, ready, workspace, dvc, validate_cfg, cfg
    )
    outcomes = _file_all_away(zone, plans, drifts, workspace, new_version, previous)
    if new_version:
        _push(dvc, workspace, new_version)
    message = _merge_message(outcomes, previous, new_version, dvc)
    return drift.with_held(_result(previous, new_version, outcomes, waiting, message), held)


def _merge_into_data(
    zone: LocalLanding | S3Landing,
    ready: list[Batch],
    workspace: Path,
    dvc: Dvc,
    validate_cfg: ValidateConfig,
    cfg: IngestBatchConfig,
) -> tuple[list[tuple[Batch, Verdict]], dict[str, dict], list[dict], str | None]:
    """Judge the ready batches, move the accepted files into data/busi and record the new
    version (None when nothing was accepted); a failure on the way removes what was moved
    and restores data.dvc. Returns the (batch, verdict) plans, the drift reports by batch,
    the batches held for drift and the new version."""
    staging = workspace / STAGING_DIR
    shutil.rmtree(staging, ignore_errors=True)  # what a killed run left
    merged: list[Path] = []
    dvc_text = (workspace / DVC_FILE).read_text()
    try:
        plans, drifts, held = _judge_ready(zone, ready, staging, workspace, validate_cfg, cfg)
        _move_accepted(plans, staging, workspace / DATA_DIR, merged)
        new_version = None
        if merged:
            dvc("commit", "--force", str(DVC_FILE))
            new_version = recorded_version(workspace / DVC_FILE)
    except BaseException:
        for path in merged:
            path.unlink(missing_ok=True)
        (workspace / DVC_FILE).write_text(dvc_text)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return plans, drifts, held, new_version


def _judge_ready(
    zone: LocalLanding | S3Landing,
    ready: list[Batch],
    staging: Path,
    workspace: Path,
    validate_cfg: ValidateConfig,
    cfg: IngestBatchConfig,
) -> tuple[list[tuple[Batch, Verdict]], dict[str, dict], list[dict]]:
    """Snapshot and judge every ready batch; nothing outside the staging folder changes.
    Validating and merging a copy makes what is merged exactly what was checked."""
    known, next_free = _dataset_index(workspace / DATA_DIR)
    plans: list[tuple[Batch, Verdict]] = []
    drifts: dict[str, dict] = {}
    held: list[dict] = []
    for batch in ready:
        snapshot = staging / batch.name
        files = [f for f in batch.files if f not in (cfg.ready_marker, drift.ACCEPT_MARKER)]
        for rel in filter(is_read, files):
            (snapshot / rel).parent.mkdir(parents=True, exist_ok=True)
            zone.fetch(batch, rel, snapshot / rel)
        verdict = judge_batch(
            files,
            read=lambda rel, s=snapshot: (s / rel).read_bytes(),
            size_of=lambda rel, s=snapshot: (s / rel).stat().st_size,
            cfg=validate_cfg,
            known=known,
            next_free=next_free,
            links=batch.links,
            folders=batch.folders,
        )
        report = drift.check_accepted(workspace, snapshot, batch, verdict, cfg.drift_config())
        if report.get("hold"):
            held.append(drift.hold(zone, batch, verdict, report))
            continue
        drifts[batch.name] = report
        # The next batch of this run sees these images as already in the dataset.
        for item in verdict.accepted:
            new_name = item["renamed"][item["path"]]
            known[item["sha256"]] = f"{new_name} (accepted from batch {batch.name})"
        next_free |= next_numbers(
            new for item in verdict.accepted for new in item["renamed"].values()
        )
        plans.append((batch, verdict))
    return plans, drifts, held


def _move_accepted(
    plans: list[tuple[Batch, Verdict]], staging: Path, data_dir: Path, merged: list[Path]
) -> None:
    """Move the accepted files from the staging folder into data/busi under their new
    names, adding each to ``merged`` as it lands (what an undo removes)."""
    for batch, verdict in plans:
        for item in verdict.accepted:
            for old, new in item["renamed"].items():
                target = data_dir / new
                if target.exists():
                    raise BusiError(f"{target} exists already; it was free a moment ago")
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging / batch.name / old, target)
                merged.append(target)


def _file_all_away(
    zone: LocalLanding | S3Landing,
    plans: list[tuple[Batch, Verdict]],
    drifts: dict[str, dict],
    workspace: Path,
    new_version: str | None,
    previous: str,
) -> list[BatchOutcome]:
    """Tidy the landing zone after the merge: bad files to _quarantine, the rest of each
    batch to _done. A failure here comes after the commit: it says what to move by hand."""
    outcomes = []
    try:
        for batch, verdict in plans:
            outcomes.append(
                _file_away(zone, batch, verdict, new_version or previous, drifts.get(batch.name))
            )
    except Exception as exc:
        if new_version:
            _mark_unpushed(workspace, new_version)  # the next run pushes it
            done = f"the accepted images were merged as data version {new_version}"
        else:
            done = "no image was accepted"
        raise BusiError(
            f"{done}, but filing the batches away in {zone} failed: {exc}. Move what is "
            f"left of them to {zone}/{DONE}/ by hand (a retry would judge them again, and "
            "quarantine merged images as already in the dataset)"
        ) from exc
    return outcomes


def _merge_message(
    outcomes: list[BatchOutcome], previous: str, new_version: str | None, dvc: Dvc
) -> str:
    if new_version:
        accepted = sum(o.accepted for o in outcomes)
        return (
            f"merged {accepted} images from {len(outcomes)} batches: new data version "
            f"{new_version} (was {previous}), pushed to remote '{dvc.default_remote()}'"
        )
    return "nothing to merge: no image accepted; " + "; ".join(
        f"batch {o.name}: {o.quarantined} quarantined ("
        + ", ".join(f"{code} {n}" for code, n in sorted(o.reasons.items()))
        + f"), see {o.reports[0]}"
        for o in outcomes
    )


def _file_away(
    zone: LocalLanding | S3Landing,
    batch: Batch,
    verdict: Verdict,
    version: str | None,
    drift_report: dict | None = None,
) -> BatchOutcome:
    """Move a judged batch's bad files to _quarantine and the rest to _done, with reports."""
    dest = _free_name(zone, batch.name)
    renamed = {old: new for item in verdict.accepted for old, new in item["renamed"].items()}
    report = {
        "batch": batch.name,
        "landing": str(zone),
        "processed_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "data_version": version,
        "moved_to": {"done": f"{zone}/{DONE}/{dest}", "quarantine": f"{zone}/{QUARANTINE}/{dest}"},
        "counts": {
            "accepted": len(verdict.accepted),
            "quarantined": len(verdict.quarantined),
            "reasons": dict(sorted(verdict.reasons.items())),
        },
        "accepted": [
            {
                "file": item["path"],
                "new_name": item["renamed"][item["path"]],
                "masks": {o: n for o, n in item["renamed"].items() if o != item["path"]},
                "notes": item["notes"],
            }
            for item in verdict.accepted
        ],
        "quarantined": verdict.quarantined,
        "drift": drift_report,
    }
    text = json.dumps(report, indent=2, default=str) + "\n"
    reports = []
    bad = {rel for entry in verdict.quarantined for rel in entry["files"]}
    for rel in sorted(bad):
        zone.move(batch, rel, QUARANTINE, dest)
    if bad:
        reports.append(zone.put_report(QUARANTINE, dest, text))
    for rel in batch.files:
        if rel not in bad:
            zone.move(batch, rel, DONE, dest)
    reports.append(zone.put_report(DONE, dest, text))
    zone.tidy(batch)
    logger.info(
        "batch %s: %d accepted, %d quarantined; moved to %s/%s/%s",
        batch.name,
        len(verdict.accepted),
        len(verdict.quarantined),
        zone,
        DONE,
        dest,
    )
    return BatchOutcome(
        name=batch.name,
        accepted=len(verdict.accepted),
        quarantined=len(verdict.quarantined),
        moved_to=f"{zone}/{DONE}/{dest}",
        reports=tuple(reports),
        renamed=renamed,
        reasons=dict(sorted(verdict.reasons.items())),
        drift=drift_report or {},
    )


def _result(previous, new_version, outcomes, waiting, message) -> IngestBatchResult:
    reasons: Counter = Counter()
    for outcome in outcomes:
        reasons.update(outcome.reasons)
    return IngestBatchResult(
        changed=new_version is not None,
        new_version=new_version,
        previous_version=previous,
        batches=tuple(outcomes),
        waiting=tuple(b.name for b in waiting),
        accepted=sum(o.accepted for o in outcomes),
        quarantined=sum(o.quarantined for o in outcomes),
        reasons=dict(sorted(reasons.items())),
        reports=tuple(r for o in outcomes for r in o.reports),
        message=message,
    )


def summarize(result: IngestBatchResult, limit: int = 10) -> str:
    """A short human summary for the console."""
    lines = []
    for outcome in result.batches:
        reasons = ", ".join(f"{code} {n}" for code, n in outcome.reasons.items())
        lines.append(
            f"batch {outcome.name}: {outcome.accepted} images accepted, {outcome.quarantined} "
            f"quarantined{f' ({reasons})' if reasons else ''}; report {outcome.reports[0]}"
        )
        pairs = list(outcome.renamed.items())
        lines += [f"  {old} -> {new}" for old, new in pairs[:limit]]
        if len(pairs) > limit:
            lines.append(f"  ... {len(pairs) - limit} more in the report")
        lines.append(f"  drift: {drift.words(outcome.drift)}")
    lines += [f"batch {h['batch']} HELD in the landing zone: {h['why']}" for h in result.held]
    if result.waiting and result.batches:
        lines.append(f"not ready yet: {', '.join(result.waiting)}")
    if result.changed:
        lines.append(f"NEW DATA: {result.message}.")
        lines.append(f"Commit {DVC_FILE} to git to record this version.")
    else:
        lines.append(f"NO NEW DATA: {result.message}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from busi.cli import parser_for

    parser = parser_for("ingest-batch")
    parser.add_argument(
        "--landing",
        default=os.environ.get("BUSI_LANDING"),
        help="the landing zone: a folder or s3://bucket/prefix (default: $BUSI_LANDING)",
    )
    parser.add_argument("--workspace", type=Path, default=Path("."), help="project root")
    parser.add_argument(
        "--settle-seconds",
        type=float,
        default=None,
        help="take a batch with no ready marker once nothing in it changed for this long "
        "(default: params.yaml ingest_batch.settle_seconds)",
    )
    parser.add_argument(
        "--params", type=Path, default=None, help="params file (default: WORKSPACE/params.yaml)"
    )
    parser.add_argument(
        "--endpoint-url",
        default=None,
        help="S3 API endpoint for an s3:// landing zone (default: $BUSI_S3_ENDPOINT_URL)",
    )
    parser.add_argument(
        "--lock-timeout",
        type=float,
        default=None,
        help="give up after waiting this many seconds for another ingest (default: wait)",
    )
    args = parser.parse_args(argv)
    if not args.landing:
        raise BusiError(
            "no landing zone given: pass --landing DIR or s3://bucket/prefix, or set BUSI_LANDING"
        )
    result = ingest_batches(
        args.landing,
        args.workspace,
        args.settle_seconds,
        params=args.params,
        endpoint_url=args.endpoint_url,
        lock_timeout=args.lock_timeout,
    )
    print(summarize(result))
    print(json.dumps(result.to_dict(), default=str))
    return 0
