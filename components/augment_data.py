"""augment_data: turn the split images into training inputs for the segmenter: grayscale,
resized, with their combined masks, and, for the train split only, augmented copies
(flips, small rotations and scaling, brightness/contrast, speckle noise and, when set, the
shifts of other sites: tighter fields of view, gamma, blur). Written as one
TFRecord file per split that training streams with tf.data.

Core: ``augment_pair`` (one image and mask -> an augmented copy) and ``prepare_split``
(arrays in, arrays out). Shell: ``main`` reads the manifest, splits and images and writes
``data/prepared/{train,val,test}.tfrecord`` and ``data/prepared/meta.json``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from busi.config import load_section
from busi.data.preprocess import CLASSES, load_pair, resize_gray, resize_mask
from busi.data.splits import load_split_rows
from busi.data.tfrecords import write_tfrecord

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AugmentConfig:
    image_size: int = 128
    copies: int = 3  # augmented copies per train image, beside the original
    hflip: float = 0.5  # probabilities; the original work flipped both ways
    # Ultrasound has the probe at the top: vertical flips make images that never occur,
    # so they are off by default (set 0.5 to follow the original work).
    vflip: float = 0.0
    rotate_degrees: float = 10.0
    scale: float = 0.1  # zoom in or out by up to this fraction
    brightness: float = 0.1  # added, as a fraction of the range
    contrast: float = 0.15  # multiplied around the mean
    speckle: float = 0.1  # std of multiplicative noise
    seed: int = 0
    # Shifts other sites' images bring (the stress tests of stress_test_models), all off
    # at 0. A copy is, with probability crop, a tighter field of view: a crop of
    # crop_area[0]..1 of the image with a height/width ratio in crop_aspect, holding the
    # whole lesion where it fits, resized back (zoom and aspect change together); gamma:
    # the exponent's log drawn from +-gamma; blur: a Gaussian of sigma up to blur_sigma px.
    crop: float = 0.0
    crop_area: tuple[float, float] = (0.4, 1.0)
    crop_aspect: tuple[float, float] = (0.75, 1.6)
    gamma: float = 0.0
    blur_sigma: float = 0.0

    def __post_init__(self) -> None:
        if self.image_size < 16 or self.image_size % 16:
            raise ValueError("image_size must be a multiple of 16 (the U-Net halves it 4 times)")
        if self.copies < 0:
            raise ValueError("copies must be >= 0")
        if not 0 <= self.crop <= 1:
            raise ValueError("crop is a probability in [0, 1]")
        low, high = self.crop_area
        if not 0 < low <= high <= 1:
            raise ValueError("crop_area must be [low, high] with 0 < low <= high <= 1")
        if not 0 < self.crop_aspect[0] <= self.crop_aspect[1]:
            raise ValueError("crop_aspect must be [low, high] with 0 < low <= high")
        if self.gamma < 0 or self.blur_sigma < 0:
            raise ValueError("gamma and blur_sigma must be >= 0")


def field_of_view(
    mask: np.ndarray,
    rng: np.random.Generator,
    area: tuple[float, float],
    aspect: tuple[float, float],
) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of a random crop of ``area`` of the image with a
    height/width ratio in ``aspect`` (log-uniform), placed to hold the whole lesion where the
    crop is large enough, else centred on it; the whole image is kept if nothing fits."""
    height, width = mask.shape
    share = rng.uniform(*area)
    ratio = np.exp(rng.uniform(np.log(aspect[0]), np.log(aspect[1])))
    h = round(min(height, float(np.sqrt(share * height * width * ratio))))
    w = round(min(width, share * height * width / max(h, 1)))
    if h < 8 or w < 8:
        return 0, 0, height, width
    rows, cols = np.nonzero(mask)

    def place(size: int, full: int, lo: int | None, hi: int | None) -> int:
        if lo is None:
            return int(rng.integers(0, full - size + 1))
        first, last = max(0, hi - size), min(lo, full - size)  # lesion [lo, hi) inside
        if first <= last:
            return int(rng.integers(first, last + 1))
        return int(np.clip((lo + hi - size) // 2, 0, full - size))  # too small: centre it

    has = rows.size > 0
    top = place(h, height, rows.min() if has else None, rows.max() + 1 if has else None)
    left = place(w, width, cols.min() if has else None, cols.max() + 1 if has else None)
    return top, left, top + h, left + w


def augment_pair(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig
) -> tuple[np.ndarray, np.ndarray]:
    """One random augmented copy of a uint8 image and its boolean mask (same geometry)."""
    img = image.astype(np.float32)
    msk = mask.astype(np.float32)
    if cfg.crop and rng.random() < cfg.crop:
        top, left, bottom, right = field_of_view(mask, rng, cfg.crop_area, cfg.crop_aspect)
        size = img.shape
        img = resize_gray(image[top:bottom, left:right], size[0]).astype(np.float32)
        msk = resize_mask(mask[top:bottom, left:right], size[0]).astype(np.float32)
    if rng.random() < cfg.hflip:
        img, msk = img[:, ::-1], msk[:, ::-1]
    if rng.random() < cfg.vflip:
        img, msk = img[::-1, :], msk[::-1, :]
    angle = np.deg2rad(rng.uniform(-cfg.rotate_degrees, cfg.rotate_degrees))
    zoom = 1.0 + rng.uniform(-cfg.scale, cfg.scale)
    if angle or zoom != 1.0:
        c, s = np.cos(angle) / zoom, np.sin(angle) / zoom
        matrix = np.array([[c, -s], [s, c]])
        centre = (np.array(img.shape) - 1) / 2.0
        offset = centre - matrix @ centre
        img = ndimage.affine_transform(img, matrix, offset, order=1, mode="reflect")
        msk = ndimage.affine_transform(msk, matrix, offset, order=0, mode="constant")
    mean = img.mean()
    img = (img - mean) * (1.0 + rng.uniform(-cfg.contrast, cfg.contrast)) + mean
    img = img + rng.uniform(-cfg.brightness, cfg.brightness) * 255.0
    if cfg.gamma:
        exponent = float(np.exp(rng.uniform(-cfg.gamma, cfg.gamma)))
        img = 255.0 * (np.clip(img, 0, 255) / 255.0) ** exponent
    if cfg.blur_sigma:
        img = ndimage.gaussian_filter(img, rng.uniform(0, cfg.blur_sigma))
    if cfg.speckle > 0:
        img = img * rng.normal(1.0, cfg.speckle, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8), msk > 0.5


def prepare_split(
    images: list[np.ndarray],
    masks: list[np.ndarray],
    augment: bool,
    cfg: AugmentConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resize (and for train, augment) a split. Returns images uint8 [N,S,S], masks uint8
    [N,S,S] in {0,1}, and the index of the source image of each row."""
    out_images, out_masks, source = [], [], []
    for i, (image, mask) in enumerate(zip(images, masks, strict=True)):
        small = resize_gray(image, cfg.image_size)
        small_mask = resize_mask(mask, cfg.image_size)
        out_images.append(small)
        out_masks.append(small_mask)
        source.append(i)
        for _ in range(cfg.copies if augment else 0):
            aug_image, aug_mask = augment_pair(small, small_mask, rng, cfg)
            out_images.append(aug_image)
            out_masks.append(aug_mask)
            source.append(i)
    return (
        np.stack(out_images).astype(np.uint8),
        np.stack(out_masks).astype(np.uint8),
        np.array(source, dtype=np.int64),
    )


def run(data_dir: Path, manifest: Path, splits: Path, out_dir: Path, cfg: AugmentConfig) -> dict:
    from tqdm import tqdm

    rows = load_split_rows(manifest, splits)
    rng = np.random.default_rng(cfg.seed)
    out_dir = Path(out_dir)
    meta: dict = {"config": asdict(cfg), "classes": list(CLASSES), "splits": {}}
    for split in ("train", "val", "test"):
        part = rows[rows["split"] == split]
        images, masks = [], []
        for _, row in tqdm(
            part.iterrows(), total=len(part), desc=f"augment-data {split}", unit="img", leave=False
        ):
            image, mask = load_pair(data_dir, row["path"], row["mask_files"])
            images.append(image)
            masks.append(mask)
        arr_images, arr_masks, source = prepare_split(images, masks, split == "train", cfg, rng)
        labels = [CLASSES.index(c) for c in part["class"].iloc[source]]
        ids = part["id"].iloc[source].to_list()
        augmented = np.r_[0, (np.diff(source) == 0).astype(int)] if len(source) else []
        write_tfrecord(out_dir / f"{split}.tfrecord", arr_images, arr_masks, labels, ids, augmented)
        meta["splits"][split] = {
            "images": len(part),
            "records": len(source),
            "per_class": {c: int((part["class"] == c).sum()) for c in CLASSES},
        }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def main(argv: list[str] | None = None) -> int:
    from busi.cli import parser_for

    parser = parser_for("augment-data", "--data-dir", "--manifest", "--splits", "--params")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("data/prepared"),
        help="the folder for the TFRecords and meta.json (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    cfg = load_section(args.params, "augment_data", AugmentConfig)
    from busi import tracking

    with tracking.step_run("augment_data", asdict(cfg)):
        meta = run(args.data_dir, args.manifest, args.splits, args.out, cfg)
        tracking.log_step_outputs(
            {f"{s}_records": v["records"] for s, v in meta["splits"].items()},
            artifacts=[args.out / "meta.json"],
        )
    for split, info in meta["splits"].items():
        print(f"{split}: {info['images']} images -> {info['records']} records")
    print(f"written to {args.out}/")
    return 0
