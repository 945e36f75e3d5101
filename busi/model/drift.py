"""drift: does a batch of new images look like the data the model was trained on?

Each image is described by simple features (height, width, aspect, intensity mean, spread
and percentiles, lesion area from its mask) and, when a trained U-Net is at hand, by an
embedding from its encoder (the bottleneck, averaged over space). The batch is compared
with the training images by a two-sample test: the maximum mean discrepancy (MMD, Gaussian
kernel, bandwidth by the median heuristic) with a permutation p-value, once on the
standardised features and once on the embedding. Each feature is also tested on its own
(Kolmogorov-Smirnov, Bonferroni over the features) and its shift reported in reference
standard deviations, so the report says what drifted and by how much.

Core: ``image_features``, ``mmd_test``, ``compare`` (arrays in, a report out). Shell:
``reference_images``, ``encoder`` and ``check_batch`` (files and models), which
ingest_batch calls for each batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

FEATURES = (
    "height",
    "width",
    "aspect",
    "intensity_mean",
    "intensity_std",
    "intensity_p05",
    "intensity_p95",
    "lesion_area",
)
MODES = ("warn", "block", "off")
# A person who has looked at a drifted batch and wants it merged puts this file in it.
ACCEPT_MARKER = "_ACCEPT_DRIFT"


@dataclass(frozen=True)
class DriftConfig:
    mode: str = "warn"  # warn: merge and report | block: hold the batch | off
    alpha: float = 0.01  # a test with p below this says "drifted"
    permutations: int = 500
    reference_size: int = 300  # training images compared with (a fixed random subset)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"drift must be one of {MODES}, got {self.mode!r}")
        if not 0 < self.alpha < 0.5:
            raise ValueError(f"drift_alpha must be in (0, 0.5), got {self.alpha}")
        if self.permutations < 99 or self.reference_size < 10:
            raise ValueError("drift_permutations must be >= 99 and drift_reference_size >= 10")


def image_features(pixels: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """The feature vector (``FEATURES`` order) of a uint8 grayscale image and its mask."""
    pixels = np.asarray(pixels)
    h, w = pixels.shape[:2]
    p05, p95 = np.percentile(pixels, [5, 95])
    area = float(np.asarray(mask, bool).mean()) if mask is not None else 0.0
    return np.array([h, w, w / h, pixels.mean(), pixels.std(), p05, p95, area], dtype=float)


def _standardise(reference: np.ndarray, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, sd = reference.mean(axis=0), reference.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    return (reference - mean) / sd, (batch - mean) / sd


def mmd_test(x: np.ndarray, y: np.ndarray, permutations: int, seed: int = 0) -> dict:
    """Unbiased MMD^2 between samples ``x`` (n, d) and ``y`` (m, d) with a Gaussian kernel
    (bandwidth: median pairwise distance), and the permutation p-value
    (1 + #{permuted >= observed}) / (1 + permutations)."""
    x, y = np.atleast_2d(x).astype(float), np.atleast_2d(y).astype(float)
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        raise ValueError(f"the MMD test needs two samples of >= 2 each, got {n} and {m}")
    pooled = np.vstack([x, y])
    sq = np.maximum(((pooled[:, None, :] - pooled[None, :, :]) ** 2).sum(-1), 0.0)
    off = sq[np.triu_indices(len(pooled), 1)]
    bandwidth = float(np.median(off[off > 0])) if np.any(off > 0) else 1.0
    k = np.exp(-sq / bandwidth)
    diag = np.diag(k)

    def stat(members: np.ndarray) -> np.ndarray:  # members: (p, N) 1 for x, 0 for y
        other = 1.0 - members
        kx = members @ k
        xx = ((kx * members).sum(1) - members @ diag) / (n * (n - 1))
        ky = other @ k
        yy = ((ky * other).sum(1) - other @ diag) / (m * (m - 1))
        xy = (kx * other).sum(1) / (n * m)
        return xx + yy - 2 * xy

    observed = stat(np.r_[np.ones(n), np.zeros(m)][None, :])[0]
    rng = np.random.default_rng(seed)
    members = np.zeros((permutations, n + m))
    for i in range(permutations):
        members[i, rng.permutation(n + m)[:n]] = 1.0
    permuted = stat(members)
    p = (1 + int((permuted >= observed - 1e-12).sum())) / (1 + permutations)
    return {"mmd2": float(observed), "p_value": float(p), "bandwidth": bandwidth}


def compare(
    reference: np.ndarray,
    batch: np.ndarray,
    cfg: DriftConfig,
    reference_embedding: np.ndarray | None = None,
    batch_embedding: np.ndarray | None = None,
) -> dict:
    """The drift report of a batch's feature rows against the reference's."""
    from scipy.stats import ks_2samp

    reference, batch = np.asarray(reference, float), np.asarray(batch, float)
    ref_z, batch_z = _standardise(reference, batch)
    # One test per feature: Bonferroni, so that eight features do not make one false alarm.
    per_feature_alpha = cfg.alpha / len(FEATURES)
    features = {}
    for j, name in enumerate(FEATURES):
        ref_sd = float(reference[:, j].std())
        shift = float(batch[:, j].mean() - reference[:, j].mean())
        p = float(ks_2samp(reference[:, j], batch[:, j]).pvalue)
        features[name] = {
            "reference_mean": float(reference[:, j].mean()),
            "batch_mean": float(batch[:, j].mean()),
            "shift_sd": shift / ref_sd if ref_sd > 0 else (0.0 if shift == 0 else float("inf")),
            "p_value": p,
            "drifted": p < per_feature_alpha,
        }
    tests = {"features": mmd_test(ref_z, batch_z, cfg.permutations, cfg.seed)}
    if reference_embedding is not None and batch_embedding is not None:
        ref_e, batch_e = _standardise(np.asarray(reference_embedding), np.asarray(batch_embedding))
        tests["embedding"] = mmd_test(ref_e, batch_e, cfg.permutations, cfg.seed)
    else:
        tests["embedding"] = {"skipped": "no trained U-Net in the workspace (models/unet.keras)"}
    for entry in tests.values():
        if "p_value" in entry:
            entry["drifted"] = entry["p_value"] < cfg.alpha
    drifted = any(entry.get("drifted") for entry in tests.values())
    moved = [
        f"{name} {e['batch_mean']:.3g} vs {e['reference_mean']:.3g} "
        f"({e['shift_sd']:+.1f} sd, p={e['p_value']:.3g})"
        for name, e in features.items()
        if e["drifted"]
    ]
    words = [
        f"{name} MMD p={entry['p_value']:.3g}"
        for name, entry in tests.items()
        if "p_value" in entry
    ]
    summary = ("DRIFT: " if drifted else "no drift: ") + ", ".join(words)
    if moved:
        summary += "; moved: " + "; ".join(moved)
    return {
        "drifted": bool(drifted),
        "alpha": cfg.alpha,
        "alpha_per_feature": per_feature_alpha,
        "reference_images": len(reference),
        "batch_images": len(batch),
        "tests": tests,
        "features": features,
        "summary": summary,
    }


# ---------------------------------------------------------------- shell


def reference_images(
    workspace: Path, cfg: DriftConfig
) -> tuple[list[tuple[Path, list[Path]]], str]:
    """(image, masks) of the current training data, and where they come from: the train
    split of data/splits.csv when there is one, else every image in data/busi."""
    import pandas as pd

    data = workspace / "data" / "busi"
    splits = workspace / "data" / "splits.csv"
    if splits.is_file():
        rows = pd.read_csv(splits)
        paths = [data / p for p in rows.loc[rows["split"] == "train", "path"]]
        source = "the train split of data/splits.csv"
    else:
        paths = sorted(p for p in data.rglob("*.png") if "_mask" not in p.name)
        source = "all images in data/busi (no split yet)"
    paths = [p for p in paths if p.is_file()]
    if len(paths) > cfg.reference_size:
        rng = np.random.default_rng(cfg.seed)
        paths = [paths[i] for i in sorted(rng.choice(len(paths), cfg.reference_size, False))]
    return [(p, sorted(p.parent.glob(f"{p.stem}_mask*.png"))) for p in paths], source


def load_image_and_mask(image: Path, masks: list[Path]) -> tuple[np.ndarray, np.ndarray | None]:
    """A grayscale image and the union of its masks of the same shape (None without one)."""
    from busi.data.imaging import decode_image, decode_mask
    from busi.data.preprocess import MAX_PIXELS

    pixels = decode_image(image.read_bytes(), max_pixels=MAX_PIXELS).pixels
    mask = None
    for path in masks:
        m = decode_mask(path.read_bytes(), max_pixels=MAX_PIXELS)[0]
        if m.shape == pixels.shape:
            mask = m if mask is None else (mask | m)
    return pixels, mask


def encoder(unet_path: Path):
    """A function images -> embeddings: the U-Net's bottleneck averaged over space (for an
    average of U-Nets, its first member's), or None when there is no trained U-Net (or the
    model holds no up-convolution to find its bottleneck by)."""
    if not unet_path.is_file():
        return None
    from busi.data.preprocess import prepare_image
    from busi.model.unet import load_unet, unet_bottleneck

    unet = load_unet(unet_path)
    bottleneck = unet_bottleneck(unet)
    if bottleneck is None:
        return None
    size = unet.input_shape[1]

    def embed(images: list[np.ndarray]) -> np.ndarray:
        batch = np.stack([prepare_image(i, size) for i in images])
        return np.asarray(bottleneck.predict(batch, verbose=0)).mean(axis=(1, 2))

    return embed


def check_batch(
    workspace: Path, batch_files: list[tuple[Path, list[Path]]], cfg: DriftConfig
) -> dict:
    """The drift report of a batch's accepted images (image, masks) against the workspace's
    training data; ``checked`` is False (with the reason) when there is nothing to compare."""
    if cfg.mode == "off":
        return {"checked": False, "why": "drift check off (params.yaml ingest_batch.drift)"}
    refs, source = reference_images(workspace, cfg)
    if len(refs) < 2 or len(batch_files) < 2:
        return {
            "checked": False,
            "why": f"too few images to compare: {len(refs)} reference, {len(batch_files)} new",
        }
    ref_loaded = [load_image_and_mask(i, m) for i, m in refs]
    new_loaded = [load_image_and_mask(i, m) for i, m in batch_files]
    ref_x = np.stack([image_features(p, m) for p, m in ref_loaded])
    new_x = np.stack([image_features(p, m) for p, m in new_loaded])
    embed = encoder(workspace / "models" / "unet.keras")
    ref_e = embed([p for p, _ in ref_loaded]) if embed else None
    new_e = embed([p for p, _ in new_loaded]) if embed else None
    report = compare(ref_x, new_x, cfg, ref_e, new_e)
    return {"checked": True, "mode": cfg.mode, "reference": source, **report}


def words(report: dict) -> str:
    """One line for the console and the task log."""
    if not report:
        return "not checked"
    if not report.get("checked"):
        return f"not checked: {report.get('why')}"
    return report["summary"]


def check_accepted(workspace: Path, snapshot: Path, batch, verdict, cfg: DriftConfig) -> dict:
    """The drift report of a judged batch's accepted images (read from its snapshot), with
    ``hold`` set when the batch must wait for a person (drift=block, drifted, and no
    ``_ACCEPT_DRIFT`` file in the batch)."""
    files = [
        (
            snapshot / item["path"],
            [snapshot / old for old in item["renamed"] if old != item["path"]],
        )
        for item in verdict.accepted
    ]
    try:
        report = (
            check_batch(Path(workspace), files, cfg)
            if files
            else {"checked": False, "why": "no accepted image"}
        )
    except Exception as exc:  # a broken model or file must not stop the ingest
        logger.exception("batch %s: the drift check failed", batch.name)
        report = {"checked": False, "why": f"the check failed: {type(exc).__name__}: {exc}"}
    accepted_by_hand = ACCEPT_MARKER in batch.files
    report["hold"] = bool(cfg.mode == "block" and report.get("drifted") and not accepted_by_hand)
    if report.get("drifted"):
        what = (
            "held for a person"
            if report["hold"]
            else (
                f"merged ({ACCEPT_MARKER} present)" if accepted_by_hand else "merged (drift=warn)"
            )
        )
        logger.warning("batch %s: %s; %s", batch.name, report["summary"], what)
    else:
        logger.info("batch %s: drift %s", batch.name, words(report))
    return report


HELD = "_held"


def hold(zone, batch, verdict, report: dict) -> dict:
    """Leave a drifted batch where it is (nothing moved, nothing merged) and write why in
    ``<landing>/_held/<batch>/report.json``."""
    import json
    from datetime import UTC, datetime

    why = (
        f"{report['summary']}. Look at the images; to merge them anyway put a file named "
        f"{ACCEPT_MARKER} in the batch (or set params.yaml ingest_batch.drift: warn); to "
        "drop the batch, delete it"
    )
    text = json.dumps(
        {
            "batch": batch.name,
            "landing": str(zone),
            "checked_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "status": "held: drift from the training data",
            "why": why,
            "would_accept": len(verdict.accepted),
            "would_quarantine": len(verdict.quarantined),
            "drift": report,
        },
        indent=2,
        default=str,
    )
    where = zone.put_report(HELD, batch.name, text + "\n")
    return {"batch": batch.name, "why": why, "report": where, "drift": report}


def with_held(result, held: list[dict]):
    """The ingest result with the held batches and a message that names them."""
    import dataclasses

    if not held:
        return result
    text = "; ".join(f"batch {h['batch']} held (drift), see {h['report']}" for h in held)
    message = f"{result.message}; {text}" if result.batches else f"nothing to merge: {text}"
    return dataclasses.replace(result, held=tuple(held), message=message)
