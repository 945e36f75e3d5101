"""A small BUSI-like corpus for tests and the smoke profile: speckled tissue, elliptical lesions.

The layout and file formats mimic the real dataset (see the dataset README): one folder per
class, ``<class> (<n>).png`` images, ``<class> (<n>)_mask.png`` masks as 1-bit PNGs for
lesions and all-black RGB masks for normal images, a few RGB images, and one image with two
mask files. Benign lesions are smooth dark ellipses; malignant ones are irregular, darker and
cast an acoustic shadow, so a model has something to learn.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from busi.data.preprocess import CLASSES


@dataclass(frozen=True)
class SyntheticImage:
    image_id: str  # "<class>/<class> (<n>)", the id validate-data gives it
    label: str
    image_path: Path
    mask_paths: tuple[Path, ...]


def _smooth_field(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    coarse = rng.random((cells, cells)).astype(np.float32)
    img = Image.fromarray((coarse * 255).astype(np.uint8)).resize(
        (width, height), Image.Resampling.BICUBIC
    )
    return np.asarray(img, dtype=np.float32) / 255.0


def _lesion_mask(
    rng: np.random.Generator, height: int, width: int, irregular: bool
) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    cy = rng.uniform(0.35, 0.65) * height
    cx = rng.uniform(0.3, 0.7) * width
    ry = rng.uniform(0.10, 0.2) * height
    rx = rng.uniform(0.12, 0.25) * width
    yy, xx = np.mgrid[0:height, 0:width]
    dy, dx = (yy - cy) / ry, (xx - cx) / rx
    radius = np.sqrt(dy**2 + dx**2)
    if irregular:
        angle = np.arctan2(dy, dx)
        wobble = 1.0
        for k in (3, 5, 7):
            wobble = wobble + rng.uniform(0.06, 0.14) * np.sin(k * angle + rng.uniform(0, 6.3))
        radius = radius / wobble
    return radius <= 1.0, (cy, cx, ry, rx)


def synth_pair(
    rng: np.random.Generator, label: str, height: int, width: int, n_lesions: int = 1
) -> tuple[np.ndarray, list[np.ndarray]]:
    """One grayscale uint8 image and its lesion masks (empty list for normal)."""
    tissue = 0.25 + 0.5 * _smooth_field(rng, height, width, cells=int(rng.integers(3, 7)))
    # A brighter band near the top like the skin/fat layers of a breast scan.
    band = np.linspace(1.3, 0.8, height, dtype=np.float32)[:, None]
    tissue = tissue * band
    masks: list[np.ndarray] = []
    if label != "normal":
        for _ in range(n_lesions):
            mask, (cy, cx, ry, rx) = _lesion_mask(rng, height, width, label == "malignant")
            darkness = 0.25 if label == "benign" else 0.12
            tissue = np.where(mask, tissue * darkness, tissue)
            below = np.zeros_like(mask)
            y0 = int(min(height - 1, cy + ry))
            cols = slice(int(max(0, cx - rx)), int(min(width, cx + rx)))
            below[y0:, cols] = True
            # Benign cysts enhance what lies behind them; malignant masses shadow it.
            tissue = np.where(below & ~mask, tissue * (1.25 if label == "benign" else 0.55), tissue)
            masks.append(mask)
    speckle = rng.rayleigh(scale=0.8, size=(height, width)).astype(np.float32)
    img = np.clip(tissue * speckle * 255.0, 0, 255).astype(np.uint8)
    return img, masks


def make_busi_like(
    root: Path,
    n_per_class: int = 6,
    seed: int = 0,
    size_range: tuple[int, int] = (72, 112),
    rgb_every: int = 4,
    multi_mask: bool = True,
) -> list[SyntheticImage]:
    """Write a BUSI-layout corpus under ``root`` and return what was written."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    written: list[SyntheticImage] = []
    for label in CLASSES:
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(1, n_per_class + 1):
            height = int(rng.integers(*size_range))
            width = int(rng.integers(*size_range))
            n_lesions = 2 if (multi_mask and label == "benign" and n == 1) else 1
            img, masks = synth_pair(rng, label, height, width, n_lesions=n_lesions)
            stem = f"{label} ({n})"
            image_path = folder / f"{stem}.png"
            if rgb_every and n % rgb_every == 0:
                Image.fromarray(np.stack([img] * 3, axis=2)).save(image_path)
            else:
                Image.fromarray(img).save(image_path)
            mask_paths = []
            if label == "normal":
                path = folder / f"{stem}_mask.png"
                Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(path)
                mask_paths.append(path)
            for k, mask in enumerate(masks):
                suffix = "_mask" if k == 0 else f"_mask_{k}"
                path = folder / f"{stem}{suffix}.png"
                Image.fromarray(mask).convert("1").save(path)
                mask_paths.append(path)
            written.append(SyntheticImage(f"{label}/{stem}", label, image_path, tuple(mask_paths)))
    return written


def synthetic_predictions(
    n_groups: int = 60,
    accuracy: float = 0.75,
    seed: int = 0,
    group_size: int = 1,
) -> pd.DataFrame:
    """A per-image prediction table (``uncertainty.PER_IMAGE_COLUMNS``) of a made-up model
    on ``n_groups`` near-duplicate groups of ``group_size`` images each, classes in turn:
    the right class with probability ``accuracy``, lesions of 0.5-12 % of the image, one in
    six lesions missed."""
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(n_groups):
        label = CLASSES[g % len(CLASSES)]
        right = rng.random() < accuracy
        predicted = label if right else CLASSES[(CLASSES.index(label) + 1) % len(CLASSES)]
        proba = np.full(len(CLASSES), 0.1)
        proba[CLASSES.index(predicted)] = 0.8
        area = 0.0 if label == "normal" else float(rng.uniform(0.005, 0.12))
        missed = label != "normal" and g % 6 == 1
        pixels = 10_000
        true_px = int(area * pixels)
        tp = 0 if missed else int(true_px * rng.uniform(0.5, 0.9))
        fp = int(rng.integers(0, 40)) if (label == "normal" and g % 5 == 0) or tp else 0
        fn = true_px - tp
        dice = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else float("nan")
        iou = tp / (tp + fp + fn) if (tp + fp + fn) else float("nan")
        for k in range(group_size):
            rows.append(
                {
                    "id": f"{label}/{label} ({g}-{k})",
                    "dup_group": f"group-{g}",
                    "class": label,
                    "predicted": predicted,
                    **{f"prob_{c}": float(p) for c, p in zip(CLASSES, proba, strict=True)},
                    "dice": dice,
                    "iou": iou,
                    "tp": tp,
                    "fp": fp,
                    "fn": fn,
                    "true_area_fraction": area,
                    "pred_area_fraction": (tp + fp) / pixels,
                }
            )
    return pd.DataFrame(rows)
