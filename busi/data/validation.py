"""The checks of validate_data and ingest_batch: the image manifest of a BUSI-layout
folder, gated with Great Expectations and pixel checks, and what cannot be used quarantined
(listed, never touched).

Core: ``inspect_corpus`` (files -> manifest rows), ``find_duplicates`` (exact and
near-duplicate groups), ``run_expectations`` (the GX suite -> quarantine reasons) and
``validate_corpus`` which chains them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from busi.data.imaging import (
    MIN_SIDE,
    ImageDecodeError,
    decode_image,
    decode_mask,
    hamming_matrix,
    perceptual_hash,
    sha256_bytes,
    too_small,
)

logger = logging.getLogger(__name__)

MASK_RE = re.compile(r"^(?P<stem>.+)_mask(?:_(?P<k>\d+))?$")
NUMBER_RE = re.compile(r"\((\d+)\)")


@dataclass(frozen=True)
class ValidateConfig:
    classes: tuple[str, ...] = ("benign", "malignant", "normal")
    lesion_classes: tuple[str, ...] = ("benign", "malignant")
    # File names as distributed: "benign (12).png"; masks add "_mask" or "_mask_<k>".
    name_pattern: str = r"^(?:benign|malignant|normal) \(\d+\)\.png$"
    min_side: int = MIN_SIDE
    max_pixels: int = 25_000_000  # decompression-bomb guard, checked from the header
    max_file_bytes: int = 50_000_000
    min_pixel_std: float = 1.0  # below this an image is (nearly) one flat colour
    # A mask marking at least this share of its image is not a lesion outline (BUSI's
    # largest lesion covers 56 % of its image).
    max_lesion_fraction: float = 0.99
    # Near-duplicates: pHash Hamming distance (of 64 bits) at most max_distance, or at most
    # confirm_distance with thumbnails correlated at least min_correlation. See
    # bench/results/data.md for how these were chosen on BUSI.
    near_duplicate_max_distance: int = 10
    near_duplicate_confirm_distance: int = 14
    near_duplicate_min_correlation: float = 0.85
    min_images_per_class: int = 10

    def __post_init__(self) -> None:
        if not set(self.lesion_classes) <= set(self.classes):
            raise ValueError("lesion_classes must be a subset of classes")
        if not 0 <= self.near_duplicate_max_distance < 64:
            raise ValueError("near_duplicate_max_distance must be in [0, 63]")
        if self.min_side < 1 or self.max_pixels < 1:
            raise ValueError("min_side and max_pixels must be positive")
        if not 0 < self.max_lesion_fraction <= 1:
            raise ValueError("max_lesion_fraction must be in (0, 1]")


# Every reason an image can be quarantined for, with the sentence the report shows.
REASONS: dict[str, str] = {
    "unknown_class": "the folder is not one of the known classes",
    "odd_filename": "the file name does not follow '<class> (<n>).png'",
    "name_class_mismatch": "the class in the file name differs from its folder",
    "undecodable": "the file cannot be decoded as an image",
    "too_small": "the image is smaller than the minimum side length",
    "blank_image": "the image is (nearly) one flat colour",
    "missing_mask": "no mask file '<name>_mask.png' belongs to this image",
    "mask_undecodable": "a mask file cannot be decoded",
    "mask_size_mismatch": "a mask has another size than its image",
    "mask_not_binary": "a mask has more than two values (expected 0 and one lesion value)",
    "empty_mask": "the mask is empty although the class has a lesion",
    "full_mask": "the mask covers (nearly) the whole image: it does not outline a lesion",
    "lesion_on_normal": "the mask marks a lesion although the class is normal",
    "exact_duplicate": "a byte-identical copy of another image of the same class",
}
# Files that are not images with masks.
FILE_REASONS: dict[str, str] = {
    "orphan_mask": "a mask with no image of that name in its folder",
    "unexpected_location": "a file outside the '<class>/<file>' layout",
    "folder_named_like_image": "a folder named like an image file; an image must be a file",
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class ImageFiles:
    """One image candidate and the mask files that name it, as paths relative to the root."""

    folder: str
    file_name: str
    masks: tuple[str, ...]

    @property
    def path(self) -> str:
        return f"{self.folder}/{self.file_name}"

    @property
    def stem(self) -> str:
        return Path(self.file_name).stem

    @property
    def image_id(self) -> str:
        return f"{self.folder}/{self.stem}"


def _natural_key(text: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text))


def group_files(relative_paths: Iterable[str]) -> tuple[list[ImageFiles], list[dict], list[str]]:
    """Pair images with their masks.

    Returns (images, stray file entries, ignored top-level files)."""
    by_folder: dict[str, list[str]] = {}
    stray: list[dict] = []
    ignored: list[str] = []
    for rel in relative_paths:
        parts = rel.split("/")
        if len(parts) == 1:
            ignored.append(rel)  # README, SHA256SUMS and the like beside the class folders
        elif len(parts) == 2:
            by_folder.setdefault(parts[0], []).append(parts[1])
        else:
            stray.append({"path": rel, "reasons": [_reason("unexpected_location", FILE_REASONS)]})
    images: list[ImageFiles] = []
    for folder in sorted(by_folder, key=_natural_key):
        names = by_folder[folder]
        masks_of: dict[str, list[str]] = {}
        candidates = []
        for name in names:
            match = MASK_RE.match(Path(name).stem)
            if match:
                masks_of.setdefault(match["stem"], []).append(name)
            else:
                candidates.append(name)
        stems = {Path(n).stem for n in candidates}
        for stem, mask_names in masks_of.items():
            if stem not in stems:
                for name in mask_names:
                    stray.append(
                        {
                            "path": f"{folder}/{name}",
                            "reasons": [_reason("orphan_mask", FILE_REASONS)],
                        }
                    )
        for name in sorted(candidates, key=_natural_key):
            masks = tuple(sorted(masks_of.get(Path(name).stem, []), key=_natural_key))
            images.append(ImageFiles(folder, name, masks))
    return images, stray, sorted(ignored)


def folder_entries(folders: Iterable[str]) -> list[dict]:
    """Quarantine entries for the folders named like an image (``benign (12).png/``): they hold
    no image, and listing files alone would pass over them without a word."""
    return [
        {"path": rel, "reasons": [_reason("folder_named_like_image", FILE_REASONS)]}
        for rel in folders
        if rel.rstrip("/").lower().endswith(IMAGE_SUFFIXES)
    ]


def _reason(code: str, table: dict[str, str] = REASONS, detail: str | None = None) -> dict:
    entry = {"code": code, "message": table[code]}
    if detail:
        entry["detail"] = detail
    return entry


def inspect_image(
    files: ImageFiles,
    read: Callable[[str], bytes],
    size_of: Callable[[str], int],
    cfg: ValidateConfig,
) -> dict:
    """Decode one image and its masks and return its manifest row (facts, no verdicts)."""
    name_match = re.match(r"^([a-z]+) \(\d+\)", files.stem)
    row: dict = {
        "id": files.image_id,
        "class": files.folder,
        "path": files.path,
        "file_name": files.file_name,
        "number": int(m.group(1)) if (m := NUMBER_RE.search(files.stem)) else None,
        "name_class": name_match.group(1) if name_match else None,
        "mask_files": ";".join(files.masks),
        "n_masks": len(files.masks),
        "width": None,
        "height": None,
        "min_side": None,
        "mode": None,
        "format": None,
        "conversion": None,
        "pixel_std": None,
        "sha256": None,
        "phash": None,
        "decode_error": None,
        "decode_detail": None,
        "mask_modes": None,
        "mask_error": None,
        "mask_size_ok": None,
        "mask_binary": None,
        "lesion_area_fraction": None,
    }
    size = size_of(files.path)
    if size > cfg.max_file_bytes:
        row["decode_error"] = "too_large"
        row["decode_detail"] = f"{size} bytes exceeds the limit of {cfg.max_file_bytes}"
        return row
    data = read(files.path)
    row["sha256"] = sha256_bytes(data)
    try:
        # BUSI is distributed as PNG; other containers here mean a mislabelled file.
        decoded = decode_image(data, max_pixels=cfg.max_pixels, allowed_formats=("PNG",))
    except ImageDecodeError as exc:
        row["decode_error"], row["decode_detail"] = exc.reason, exc.detail
        return row
    height, width = decoded.pixels.shape
    row.update(
        width=width,
        height=height,
        min_side=min(width, height),
        mode=decoded.mode,
        format=decoded.fmt,
        conversion=decoded.conversion,
        pixel_std=float(decoded.pixels.std()),
        phash=f"{perceptual_hash(decoded.pixels):016x}",
        _thumbnail=thumbnail(decoded.pixels),
    )
    if not files.masks:
        return row
    combined = np.zeros((height, width), dtype=bool)
    modes, size_ok, binary = [], True, True
    for mask_name in files.masks:
        try:
            mask, is_binary, mode = decode_mask(
                read(f"{files.folder}/{mask_name}"), max_pixels=cfg.max_pixels
            )
        except ImageDecodeError as exc:
            row["mask_error"] = f"{mask_name}: {exc.reason}: {exc.detail}"
            return row
        modes.append(mode)
        binary = binary and is_binary
        if mask.shape != combined.shape:
            size_ok = False
            continue
        combined |= mask  # several masks of one image are one lesion set
    row.update(mask_modes=";".join(modes), mask_size_ok=size_ok, mask_binary=binary)
    if size_ok:
        row["lesion_area_fraction"] = float(combined.mean())
    return row


def inspect_corpus(
    images: list[ImageFiles],
    read: Callable[[str], bytes],
    size_of: Callable[[str], int],
    cfg: ValidateConfig,
    progress: Callable[[Iterable], Iterable] = iter,
) -> tuple[pd.DataFrame, dict[int, np.ndarray]]:
    """The manifest, and each decoded image's thumbnail by row position (for the
    near-duplicate search; too big for a column)."""
    rows = [inspect_image(files, read, size_of, cfg) for files in progress(images)]
    thumbs = {i: row.pop("_thumbnail") for i, row in enumerate(rows) if "_thumbnail" in row}
    return pd.DataFrame(rows).reset_index(drop=True), thumbs


def thumbnail(pixels: np.ndarray, side: int = 64) -> np.ndarray:
    """A standardised side x side thumbnail (zero mean, unit variance) for correlations."""
    from PIL import Image

    small = np.asarray(
        Image.fromarray(pixels).resize((side, side), Image.Resampling.BILINEAR), dtype=np.float32
    ).ravel()
    std = small.std()
    return (small - small.mean()) / (std if std > 0 else 1.0)


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)


def find_duplicates(
    manifest: pd.DataFrame,
    max_distance: int,
    confirm_distance: int | None = None,
    min_correlation: float = 1.0,
    thumbnails: dict[int, np.ndarray] | None = None,
) -> pd.DataFrame:
    """Add duplicate_of (exact copy within a class), dup_group (near-duplicate group, named by
    its first member), dup_group_size and label_conflict (group spans classes)."""
    df = manifest.copy()
    df["duplicate_of"] = None
    df["dup_group"] = df["id"]
    df["dup_group_size"] = 1
    df["label_conflict"] = False
    # Manifest order is natural order, so the first copy found is the one kept.
    first_by_key: dict[tuple[str, str], str] = {}
    for idx, row in df[df["sha256"].notna() & df["decode_error"].isna()].iterrows():
        key = (row["class"], row["sha256"])
        if key in first_by_key:
            df.at[idx, "duplicate_of"] = first_by_key[key]
        else:
            first_by_key[key] = row["id"]
    hashed = df[df["phash"].notna()].index.to_list()
    if len(hashed) > 1:
        hashes = [int(df.at[i, "phash"], 16) for i in hashed]
        dist = hamming_matrix(hashes)
        uf = _UnionFind(len(hashed))
        for a, b in zip(*np.nonzero(np.triu(dist <= max_distance, k=1)), strict=True):
            uf.union(int(a), int(b))
        # Views of one lesion taken a moment apart can differ in more hash bits than a
        # re-saved copy; between the two distances, their pixels must also agree.
        thumbs = thumbnails or {}
        if confirm_distance is not None and confirm_distance > max_distance and thumbs:
            band = np.triu((dist > max_distance) & (dist <= confirm_distance), k=1)
            for a, b in zip(*np.nonzero(band), strict=True):
                ta, tb = thumbs.get(hashed[a]), thumbs.get(hashed[b])
                if (
                    ta is not None
                    and tb is not None
                    and float(ta @ tb) / ta.size >= min_correlation
                ):
                    uf.union(int(a), int(b))
        members: dict[int, list[int]] = {}
        for pos in range(len(hashed)):
            members.setdefault(uf.find(pos), []).append(hashed[pos])
        for group in members.values():
            if len(group) < 2:
                continue
            name = df.at[group[0], "id"]
            conflict = df.loc[group, "class"].nunique() > 1
            for idx in group:
                df.at[idx, "dup_group"] = name
                df.at[idx, "dup_group_size"] = len(group)
                df.at[idx, "label_conflict"] = conflict
    return df


def _expectations(cfg: ValidateConfig) -> list:
    """The GX suite: one expectation per quarantine reason, the reason stored in its meta."""
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    def meta(code: str) -> dict:
        return {"reason": code, "notes": REASONS[code]}

    return [
        gxe.ExpectColumnValuesToBeInSet(
            column="class", value_set=list(cfg.classes), meta=meta("unknown_class")
        ),
        gxe.ExpectColumnValuesToMatchRegex(
            column="file_name", regex=cfg.name_pattern, meta=meta("odd_filename")
        ),
        gxe.ExpectColumnPairValuesToBeEqual(
            column_A="class",
            column_B="name_class",
            ignore_row_if="either_value_is_missing",
            meta=meta("name_class_mismatch"),
        ),
        gxe.ExpectColumnValuesToBeNull(column="decode_error", meta=meta("undecodable")),
        gxe.ExpectColumnValuesToBeBetween(
            column="min_side", min_value=cfg.min_side, meta=meta("too_small")
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="pixel_std", min_value=cfg.min_pixel_std, meta=meta("blank_image")
        ),
        gxe.ExpectColumnValuesToBeBetween(column="n_masks", min_value=1, meta=meta("missing_mask")),
        gxe.ExpectColumnValuesToBeNull(column="mask_error", meta=meta("mask_undecodable")),
        gxe.ExpectColumnValuesToBeInSet(
            column="mask_size_ok", value_set=[True], meta=meta("mask_size_mismatch")
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="mask_binary", value_set=[True], meta=meta("mask_not_binary")
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="lesion_area_fraction",
            min_value=0.0,
            strict_min=True,
            max_value=1.0,
            row_condition=Column("class").is_in(list(cfg.lesion_classes)),
            meta=meta("empty_mask"),
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="lesion_area_fraction",
            min_value=0.0,
            max_value=0.0,
            row_condition=Column("class").is_in(
                [c for c in cfg.classes if c not in cfg.lesion_classes]
            ),
            meta=meta("lesion_on_normal"),
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="lesion_area_fraction",
            max_value=cfg.max_lesion_fraction,
            strict_max=True,
            meta=meta("full_mask"),
        ),
        gxe.ExpectColumnValuesToBeNull(column="duplicate_of", meta=meta("exact_duplicate")),
        # Integrity of the manifest itself; a failure here is a bug, not a bad file.
        gxe.ExpectColumnValuesToBeUnique(column="id", meta={"integrity": True}),
        gxe.ExpectColumnValuesToMatchRegex(
            column="sha256", regex=r"^[0-9a-f]{64}$", meta={"integrity": True}
        ),
    ]


def run_expectations(
    manifest: pd.DataFrame, cfg: ValidateConfig
) -> tuple[dict[int, list[str]], dict]:
    """Validate the manifest with GX. Returns reasons per row position and a suite summary."""
    # GX logs hundreds of INFO lines while it imports; quiet it before the import.
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch_definition = (
        context.data_sources.add_pandas("busi")
        .add_dataframe_asset("manifest")
        .add_batch_definition_whole_dataframe("whole_manifest")
    )
    suite = gx.ExpectationSuite(name="busi_manifest")
    for expectation in _expectations(cfg):
        suite.add_expectation(expectation)
    frame = manifest.reset_index(drop=True)
    batch = batch_definition.get_batch(batch_parameters={"dataframe": frame})
    result = batch.validate(suite, result_format={"result_format": "COMPLETE"})
    reasons: dict[int, list[str]] = {}
    summary = {"expectations": len(result.results), "failed": []}
    for res in result.results:
        config = res.expectation_config
        if res.exception_info and res.exception_info.get("raised_exception"):
            raise RuntimeError(
                f"GX expectation {config.type} raised: {res.exception_info['exception_message']}"
            )
        if res.success:
            continue
        summary["failed"].append(
            {
                "expectation": config.type,
                "column": config.kwargs.get("column"),
                "reason": config.meta.get("reason"),
                "unexpected_count": res.result.get("unexpected_count"),
            }
        )
        if config.meta.get("integrity"):
            raise RuntimeError(f"manifest integrity check failed: {config.type} {config.kwargs}")
        for position in res.result.get("unexpected_index_list") or []:
            reasons.setdefault(int(position), []).append(config.meta["reason"])
    return reasons, summary


def _detail(code: str, row: pd.Series, cfg: ValidateConfig) -> str | None:
    details = {
        "undecodable": lambda: f"{row['decode_error']}: {row['decode_detail']}",
        "too_small": lambda: too_small(row["width"], row["height"], cfg.min_side),
        "blank_image": lambda: f"pixel standard deviation {row['pixel_std']:.2f}",
        "mask_undecodable": lambda: row["mask_error"],
        "mask_size_mismatch": lambda: f"image is {row['width']}x{row['height']}",
        "exact_duplicate": lambda: f"same bytes as {row['duplicate_of']}",
        "full_mask": lambda: (
            f"the mask covers {row['lesion_area_fraction']:.1%} of the image; "
            f"the limit is below {cfg.max_lesion_fraction:.0%}"
        ),
        "name_class_mismatch": lambda: f"name says {row['name_class']}, folder says {row['class']}",
        "unknown_class": lambda: f"folder '{row['class']}', known: {', '.join(cfg.classes)}",
    }
    return details[code]() if code in details else None


def _notes(row: pd.Series) -> list[str]:
    notes = []
    if isinstance(row["conversion"], str):
        notes.append(f"converted {row['conversion']}")
    if row["n_masks"] > 1:
        notes.append(f"{row['n_masks']} masks combined with OR")
    if row["label_conflict"]:
        notes.append(f"label conflict: near-duplicate group {row['dup_group']} spans classes")
    return notes


@dataclass
class ValidationResult:
    manifest: pd.DataFrame
    report: dict

    @property
    def accepted(self) -> pd.DataFrame:
        return self.manifest[self.manifest["status"] == "accepted"]


def validate_corpus(
    relative_paths: Iterable[str],
    read: Callable[[str], bytes],
    size_of: Callable[[str], int],
    cfg: ValidateConfig,
    progress: Callable[[Iterable], Iterable] = iter,
    folders: Iterable[str] = (),
) -> ValidationResult:
    """The whole check: pair files, inspect pixels, group duplicates, run the GX suite.
    ``folders``: the relative paths of the folders under the root (only those named like an
    image are reported)."""
    images, stray, ignored = group_files(relative_paths)
    stray += folder_entries(folders)
    manifest, thumbnails = inspect_corpus(images, read, size_of, cfg, progress)
    if manifest.empty:
        manifest = pd.DataFrame(columns=["id", "class", "path", "sha256", "phash", "decode_error"])
    manifest = find_duplicates(
        manifest,
        cfg.near_duplicate_max_distance,
        cfg.near_duplicate_confirm_distance,
        cfg.near_duplicate_min_correlation,
        thumbnails,
    )
    reasons, suite_summary = run_expectations(manifest, cfg) if len(manifest) else ({}, {})
    manifest["quarantine_reasons"] = [";".join(reasons.get(i, [])) for i in range(len(manifest))]
    manifest["status"] = np.where(manifest["quarantine_reasons"] != "", "quarantined", "accepted")
    manifest["notes"] = [" | ".join(_notes(row)) for _, row in manifest.iterrows()]

    quarantined = [
        {
            "id": row["id"],
            "path": row["path"],
            "mask_files": [m for m in row["mask_files"].split(";") if m],
            "reasons": [_reason(c, detail=_detail(c, row, cfg)) for c in reasons[i]],
        }
        for i, row in manifest.iterrows()
        if i in reasons
    ]
    accepted = manifest[manifest["status"] == "accepted"]
    groups = accepted[accepted["dup_group_size"] > 1].groupby("dup_group")
    conflict_groups = [
        {"group": name, "members": {r["id"]: r["class"] for _, r in g.iterrows()}}
        for name, g in groups
        if g["class"].nunique() > 1
    ]
    decoded = manifest[manifest["sha256"].notna()] if len(manifest) else manifest
    same_bytes = [sorted(g["id"]) for _, g in decoded.groupby("sha256") if g["class"].nunique() > 1]
    reason_counts: dict[str, int] = {}
    for entry in quarantined + stray:
        for reason in entry["reasons"]:
            reason_counts[reason["code"]] = reason_counts.get(reason["code"], 0) + 1
    report = {
        "config": asdict(cfg),
        "counts": {
            "images_found": len(manifest),
            "mask_files_found": int(manifest["n_masks"].sum()) if len(manifest) else 0,
            "accepted": len(accepted),
            "quarantined_images": len(quarantined),
            "quarantined_files": len(stray),
            "accepted_per_class": {c: int((accepted["class"] == c).sum()) for c in cfg.classes},
            "quarantine_reasons": dict(sorted(reason_counts.items())),
            "converted": int(accepted["conversion"].notna().sum()) if len(accepted) else 0,
            "multi_mask_images": int((accepted["n_masks"] > 1).sum()) if len(accepted) else 0,
            "near_duplicate_groups": int(groups.ngroups),
            "images_in_near_duplicate_groups": int((accepted["dup_group_size"] > 1).sum()),
            "label_conflict_groups": len(conflict_groups),
            "same_image_in_two_classes": len(same_bytes),
        },
        "quarantined": quarantined + stray,
        "label_conflicts": conflict_groups,
        # Byte-identical files filed under different classes (BUSI: benign 433 = malignant 145).
        "same_image_in_two_classes": same_bytes,
        "conversions": sorted(
            f"{r['path']}: {r['conversion']}"
            for _, r in accepted.iterrows()
            if isinstance(r["conversion"], str)
        ),
        "multi_mask_images": [
            {"id": r["id"], "mask_files": r["mask_files"].split(";")}
            for _, r in accepted.iterrows()
            if r["n_masks"] > 1
        ],
        "ignored_files": ignored,
        "expectation_suite": suite_summary,
    }
    return ValidationResult(manifest=manifest, report=report)


def trainability_problems(report: dict, cfg: ValidateConfig) -> list[str]:
    """Why what remains cannot train, or an empty list."""
    per_class = report["counts"]["accepted_per_class"]
    if report["counts"]["accepted"] == 0:
        return ["no usable image remains (see the quarantine list above)"]
    return [
        f"class '{c}' has {n} usable images, "
        f"fewer than min_images_per_class={cfg.min_images_per_class}"
        for c, n in per_class.items()
        if n < cfg.min_images_per_class
    ]


def summarize(report: dict, limit: int = 15) -> str:
    """A short human summary of the report for the console."""
    counts = report["counts"]
    lines = [
        f"{counts['images_found']} images, {counts['mask_files_found']} mask files found; "
        f"{counts['accepted']} accepted, {counts['quarantined_images']} images and "
        f"{counts['quarantined_files']} other files quarantined.",
        "accepted per class: "
        + ", ".join(f"{c} {n}" for c, n in counts["accepted_per_class"].items()),
        f"{counts['converted']} converted to 8-bit grayscale, {counts['multi_mask_images']} with "
        f"several masks (combined), {counts['near_duplicate_groups']} near-duplicate groups "
        f"({counts['images_in_near_duplicate_groups']} images), "
        f"{counts['label_conflict_groups']} label conflicts.",
    ]
    for ids in report["same_image_in_two_classes"]:
        lines.append(f"  same file under two classes: {' = '.join(ids)}")
    for conflict in report["label_conflicts"][:limit]:
        members = ", ".join(f"{i} ({c})" for i, c in conflict["members"].items())
        lines.append(f"  label conflict: {members}")
    if report["quarantined"]:
        lines.append("quarantined:")
        for entry in report["quarantined"][:limit]:
            codes = ", ".join(r["code"] for r in entry["reasons"])
            lines.append(f"  {entry['path']}: {codes}")
        if len(report["quarantined"]) > limit:
            lines.append(f"  ... {len(report['quarantined']) - limit} more in the JSON report")
    return "\n".join(lines)


def list_files(root: Path) -> list[str]:
    """Every regular file under root, as POSIX paths relative to it; links are not followed."""
    files = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            files.append(path.relative_to(root).as_posix())
    return files


def list_folders(root: Path) -> list[str]:
    """Every folder under root (links not followed), as POSIX paths relative to it."""
    return [
        path.relative_to(root).as_posix()
        for path in sorted(root.rglob("*"))
        if path.is_dir() and not path.is_symlink()
    ]
