"""stress_test_models: the whole chain on the frozen test split under the shifts other
hospitals' images bring: a tighter field of view (crops of 40-70 % of the image that keep
the lesion, portrait ones too), other pixel sizes, gain, gamma and contrast, blur, stronger
speckle and JPEG re-compression. Per shift: lesion Dice, lesion not found, lesion called
normal, malignant AUC, and the change from the unshifted images, against the bars of
issue 13 (Dice drops by at most ``max_dice_drop``, at most ``max_called_normal`` of the
lesion images called normal).

Each shift is a pure, seeded function (image, mask, rng) -> (image, mask): the same
configuration gives the same shifted images. Scoring is evaluate_models' chain
(chain.predict_chain with the crop_rois settings) and metrics.robustness_figures.

Core: ``shifts`` and ``stress_test``. Shell: ``main`` writes ``metrics/stress_test.json``
(shown by ``dvc metrics show``) and logs the figures to MLflow (``<shift>.<figure>``).
"""

from __future__ import annotations

import io
import json
import logging
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from busi.config import load_section
from busi.data.preprocess import CLASSES
from busi.model.chain import RoiConfig, predict_chain
from busi.model.metrics import robustness_figures, to_jsonable

logger = logging.getLogger(__name__)

Shift = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]
# Figures whose change from the unshifted images is reported: a drop for the first two, a
# rise for the others.
DROPS = ("lesion_dice_mean", "malignant_auc")
RISES = ("lesion_not_found", "lesion_called_normal", "normal_false_lesion_rate")


@dataclass(frozen=True)
class StressConfig:
    split: str = "test"
    seed: int = 0
    crop_area: tuple[float, float] = (0.4, 0.7)  # share of the image a crop keeps
    portrait_aspect: tuple[float, float] = (1.2, 1.6)  # height / width of portrait crops
    scales: tuple[float, ...] = (0.5, 1.5)  # < 1: larger pixels; > 1: smaller pixels
    gains: tuple[float, ...] = (0.7, 1.4)
    gammas: tuple[float, ...] = (0.6, 1.6)
    contrasts: tuple[float, ...] = (0.6,)  # around the image's mean
    blur_sigma: float = 1.5  # px
    speckle: float = 0.5  # std of a mean-1 multiplicative gamma noise
    jpeg_quality: int = 30
    max_dice_drop: float = 0.05
    max_called_normal: float = 0.10

    def __post_init__(self) -> None:
        low, high = self.crop_area
        if not 0 < low <= high <= 1:
            raise ValueError("crop_area is (low, high) with 0 < low <= high <= 1")
        if any(v <= 0 for v in (*self.scales, *self.gains, *self.gammas, *self.contrasts)):
            raise ValueError("scales, gains, gammas and contrasts must be > 0")
        if not 1 <= self.jpeg_quality <= 95 or self.blur_sigma <= 0 or self.speckle <= 0:
            raise ValueError("jpeg_quality in [1, 95], blur_sigma and speckle > 0")


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def crop_view(
    image: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    area: tuple[float, float],
    aspect: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A crop of ``area`` of the image (height/width ratio drawn from ``aspect``; the image's
    own when None), placed at random but always keeping the whole lesion (the crop grows
    when the lesion is larger)."""
    h, w = image.shape
    share = rng.uniform(*area)
    ratio = rng.uniform(*aspect) if aspect else h / w
    ch = int(min(h, max(1, round(np.sqrt(share * h * w * ratio)))))
    cw = int(min(w, max(1, round(np.sqrt(share * h * w / ratio)))))
    rows, cols = np.nonzero(mask)
    if rows.size:
        top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        ch, cw = max(ch, bottom - top), max(cw, right - left)
        y = rng.integers(max(0, bottom - ch), min(top, h - ch) + 1)
        x = rng.integers(max(0, right - cw), min(left, w - cw) + 1)
    else:
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    return image[y : y + ch, x : x + cw].copy(), mask[y : y + ch, x : x + cw].copy()


def rescale(image: np.ndarray, mask: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """Another pixel size: both resized by ``factor`` (the mask by nearest neighbour)."""
    h, w = image.shape
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    img = Image.fromarray(image).resize(size, Image.Resampling.BILINEAR)
    msk = Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)
    return np.asarray(img), np.asarray(msk) > 127


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"))


def shifts(cfg: StressConfig) -> dict[str, Shift]:
    """The shifts by name, in a fixed order."""
    out: dict[str, Shift] = {
        "crop": lambda i, m, r: crop_view(i, m, r, cfg.crop_area),
        "crop_portrait": lambda i, m, r: crop_view(i, m, r, cfg.crop_area, cfg.portrait_aspect),
    }
    for f in cfg.scales:
        out[f"scale_{f:g}"] = lambda i, m, r, f=f: rescale(i, m, f)
    for g in cfg.gains:
        out[f"gain_{g:g}"] = lambda i, m, r, g=g: (_to_uint8(i.astype(np.float32) * g), m)
    for g in cfg.gammas:
        out[f"gamma_{g:g}"] = lambda i, m, r, g=g: (
            _to_uint8(255.0 * (i.astype(np.float32) / 255.0) ** g),
            m,
        )
    for c in cfg.contrasts:
        out[f"contrast_{c:g}"] = lambda i, m, r, c=c: (
            _to_uint8(i.mean() + c * (i.astype(np.float32) - i.mean())),
            m,
        )
    out[f"blur_{cfg.blur_sigma:g}"] = lambda i, m, r: (
        np.asarray(Image.fromarray(i).filter(ImageFilter.GaussianBlur(cfg.blur_sigma))),
        m,
    )
    k = 1.0 / cfg.speckle**2  # gamma(k, 1/k): mean 1, std speckle
    out[f"speckle_{cfg.speckle:g}"] = lambda i, m, r: (
        _to_uint8(i.astype(np.float32) * r.gamma(k, 1.0 / k, size=i.shape)),
        m,
    )
    out[f"jpeg_{cfg.jpeg_quality}"] = lambda i, m, r: (jpeg(i, cfg.jpeg_quality), m)
    return out


def apply_shift(name: str, shift: Shift, images, masks, seed: int):
    """The shift on every image, each with its own generator seeded by (seed, shift name,
    image index): the result does not depend on which other shifts run."""
    salt = zlib.crc32(name.encode())
    pairs = [
        shift(img, msk, np.random.default_rng([seed, salt, i]))
        for i, (img, msk) in enumerate(zip(images, masks, strict=True))
    ]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _change(shifted: dict, base: dict) -> dict:
    out = {}
    for key in DROPS:
        if shifted[key] is not None and base[key] is not None:
            out[f"{key}_drop"] = base[key] - shifted[key]
    for key in RISES:
        if shifted[key] is not None and base[key] is not None:
            out[f"{key}_rise"] = shifted[key] - base[key]
    return out


def stress_test(
    images, masks, labels, unet, classifier, roi: RoiConfig, tta_flip: bool, cfg: StressConfig
) -> dict:
    """The figures unshifted and under each shift, the change, and the bars."""

    def score(imgs, msks) -> dict:
        chain = predict_chain(imgs, unet, classifier, roi, tta_flip)
        return robustness_figures(msks, labels, chain.masks, chain.proba, CLASSES)

    base = score(images, masks)
    report = {"unshifted": base, "shifts": {}}
    for name, shift in shifts(cfg).items():
        figures = score(*apply_shift(name, shift, images, masks, cfg.seed))
        change = _change(figures, base)
        dice_ok = change.get("lesion_dice_mean_drop", 0.0) <= cfg.max_dice_drop + 1e-12
        called = figures["lesion_called_normal"]
        normal_ok = called is None or called <= cfg.max_called_normal + 1e-12
        report["shifts"][name] = {**figures, **change, "meets_bars": dice_ok and normal_ok}
        logger.info("%s: %s", name, change)
    worst = {
        key: max(
            (s.get(key) for s in report["shifts"].values() if s.get(key) is not None),
            default=None,
        )
        for key in ("lesion_dice_mean_drop", "malignant_auc_drop", "lesion_called_normal")
    }
    report["worst"] = worst
    report["shifts_meeting_bars"] = sum(s["meets_bars"] for s in report["shifts"].values())
    report["n_shifts"] = len(report["shifts"])
    return report


def flat_metrics(report: dict) -> dict[str, float]:
    """MLflow metrics: ``unshifted.<figure>``, ``<shift>.<figure>``, ``worst.<figure>``."""
    out = {}
    for prefix, figures in (
        ("unshifted", report["unshifted"]),
        ("worst", report["worst"]),
        *report["shifts"].items(),
    ):
        for key, value in figures.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[f"{prefix}.{key}"] = float(value)
    return out


def main(argv: list[str] | None = None) -> int:
    from busi.cli import parser_for

    parser = parser_for(
        "stress-test-models",
        "--data-dir",
        "--manifest",
        "--splits",
        "--unet",
        "--classifier",
        "--rois",
        "--params",
    )
    parser.add_argument(
        "--metrics",
        type=Path,
        default=Path("metrics/stress_test.json"),
        help="where to write the step's figures (JSON) (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    cfg = load_section(args.params, "stress_test_models", StressConfig)
    from busi import tracking
    from busi.model.loading import load_chain_and_split

    unet, classifier, crop, part, images, masks = load_chain_and_split(args, cfg.split)
    with tracking.step_run("stress_test_models", asdict(cfg)):
        report = stress_test(
            images,
            masks,
            list(part["class"]),
            unet,
            classifier,
            crop.roi,
            crop.tta_flip,
            cfg,
        )
        report = {"split": cfg.split, "n_images": len(images), **report, "config": asdict(cfg)}
        args.metrics.parent.mkdir(parents=True, exist_ok=True)
        args.metrics.write_text(json.dumps(to_jsonable(report), indent=2, allow_nan=False) + "\n")
        tracking.log_metrics(flat_metrics(report))
        tracking.log_step_outputs({}, artifacts=[args.metrics])
    print(
        f"{cfg.split} split, {len(images)} images; change from unshifted (Dice drop, called "
        "normal, malignant AUC drop):"
    )
    for name, s in report["shifts"].items():
        print(
            f"  {name:<16} {_fmt(s.get('lesion_dice_mean_drop'))}  "
            f"{_fmt(s['lesion_called_normal'], '.3f')}  {_fmt(s.get('malignant_auc_drop'))}"
            f"{'' if s['meets_bars'] else '  (misses the bars)'}"
        )
    return 0


def _fmt(value, spec: str = "+.3f") -> str:
    return "n/a" if value is None else format(value, spec)
