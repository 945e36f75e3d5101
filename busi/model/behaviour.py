"""Behavioural checks of a trained chain: a blank image and lesion-free tissue get no lesion,
a flipped image gets the same answer, a drawn dark lesion is found.

Used on the smoke U-Net by ``tests/model`` and on the real-data model by evaluate_models,
whose result (``evaluation.json: behaviour``) register_model puts on the version and the
promotion guard reads. Pure apart from calling the models: images and models in, a
``CheckResult`` per check out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from busi.model.chain import RoiConfig, clean_mask, predict_chain, segment
from busi.model.metrics import confusion_counts, dice

CHECKS = ("blank_image", "lesion_free_tissue", "flip_invariance", "drawn_lesion")


@dataclass(frozen=True)
class BehaviourConfig:
    # Grey levels of the blank images. An all-black one (0) is left out: the smoke U-Net,
    # which learnt that dark means lesion, marks it whole.
    blank_levels: tuple[int, ...] = (96, 160, 255)
    # Lesion-free tissue: at most this share of the images may get a lesion.
    max_tissue_lesion_share: float = 0.2
    # Flip: the U-Net's probability (without test-time flipping) on the flipped image,
    # flipped back, differs from the direct one by at most this on average, the two cleaned
    # masks overlap by at least flip_min_iou (images where either has a lesion), and the
    # whole chain gives the same class on at least flip_min_class_agreement of the images.
    flip_max_mean_diff: float = 0.05
    flip_min_iou: float = 0.6
    flip_min_class_agreement: float = 0.9
    # A dark ellipse (tissue x drawn_darkness) drawn on lesion-free tissue is found when the
    # cleaned mask has Dice >= drawn_min_dice with it and its centre lies within
    # drawn_max_offset of the image side; it must be found on drawn_min_found of the images.
    drawn_darkness: float = 0.2
    drawn_min_dice: float = 0.7
    drawn_max_offset: float = 0.06
    drawn_min_found: float = 0.8
    max_images: int = 10  # tissue and flip images used, spread evenly over those given

    def __post_init__(self) -> None:
        if any(not 0 <= v <= 255 for v in self.blank_levels):
            raise ValueError("blank_levels are grey levels in [0, 255]")
        shares = (
            self.max_tissue_lesion_share,
            self.flip_min_iou,
            self.flip_min_class_agreement,
            self.drawn_darkness,
            self.drawn_min_dice,
            self.drawn_min_found,
        )
        if any(not 0 <= v <= 1 for v in shares) or self.max_images < 1:
            raise ValueError("shares and thresholds lie in [0, 1]; max_images >= 1")


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    value: float  # the measured figure the threshold applies to
    threshold: float
    detail: str


def spread(items: list, n: int) -> list:
    """At most ``n`` of ``items``, evenly spaced (a split sorted by id would otherwise give
    the first class only)."""
    if len(items) <= n:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, num=n).round().astype(int)]


def _probs(unet, images: list[np.ndarray], tta: bool) -> list[np.ndarray]:
    return segment(unet, images, unet.input_shape[1], tta_flip=tta)


def _masks(unet, images: list[np.ndarray], roi: RoiConfig, tta: bool, classifier=None) -> list:
    """The lesion masks shown for ``images``: the U-Net's cleaned masks, or with
    ``classifier`` the chain's (``predict_chain``: those the classifier vetoes, at
    ``roi.normal_veto``, emptied). With no veto (1.0) both are the same masks."""
    if classifier is None:
        return [clean_mask(p, roi) for p in _probs(unet, images, tta)]
    return predict_chain(images, unet, classifier, roi, tta).masks


def check_blank(
    unet, roi: RoiConfig, tta: bool, cfg: BehaviourConfig, classifier=None
) -> CheckResult:
    """Uniform images at each of ``blank_levels`` get no lesion (with ``classifier``: none
    shown by the chain)."""
    blanks = [np.full((100, 130), level, dtype=np.uint8) for level in cfg.blank_levels]
    found = [
        int(lvl)
        for lvl, m in zip(cfg.blank_levels, _masks(unet, blanks, roi, tta, classifier), strict=True)
        if m.any()
    ]
    return CheckResult(
        "blank_image",
        not found,
        float(len(found)),
        0.0,
        f"lesion found on blank images of level {found}" if found else "no lesion on any",
    )


def check_tissue(
    unet,
    tissue: list[np.ndarray],
    roi: RoiConfig,
    tta: bool,
    cfg: BehaviourConfig,
    classifier=None,
) -> CheckResult:
    """Lesion-free tissue images: the share that gets a lesion (with ``classifier``: that
    the chain shows) is at most the threshold."""
    tissue = spread(tissue, cfg.max_images)
    found = sum(m.any() for m in _masks(unet, tissue, roi, tta, classifier))
    share = found / len(tissue) if tissue else float("nan")
    return CheckResult(
        "lesion_free_tissue",
        bool(tissue) and share <= cfg.max_tissue_lesion_share,
        share,
        cfg.max_tissue_lesion_share,
        f"a lesion on {found} of {len(tissue)} lesion-free images",
    )


def check_flip(
    unet,
    images: list[np.ndarray],
    roi: RoiConfig,
    cfg: BehaviourConfig,
    classifier=None,
    tta: bool = True,
) -> CheckResult:
    """The U-Net (no test-time flip) on flipped images, flipped back, agrees with itself;
    with ``classifier``, the chain (its own ``tta``) gives the same class after a flip."""
    images = spread(images, cfg.max_images)
    flipped = [np.ascontiguousarray(img[:, ::-1]) for img in images]
    direct = _probs(unet, images, False)
    back = [p[:, ::-1] for p in _probs(unet, flipped, False)]
    diff = float(np.mean([np.abs(a - b).mean() for a, b in zip(direct, back, strict=True)]))
    ious = []
    for a, b in zip(direct, back, strict=True):
        ma, mb = clean_mask(a, roi), clean_mask(b, roi)
        if ma.any() or mb.any():
            ious.append((ma & mb).sum() / (ma | mb).sum())
    iou = float(np.min(ious)) if ious else 1.0
    agree = 1.0
    if classifier is not None:
        one = predict_chain(images, unet, classifier, roi, tta).proba.argmax(axis=1)
        two = predict_chain(flipped, unet, classifier, roi, tta).proba.argmax(axis=1)
        agree = float(np.mean(one == two))
    passed = (
        diff <= cfg.flip_max_mean_diff
        and iou >= cfg.flip_min_iou
        and agree >= cfg.flip_min_class_agreement
    )
    return CheckResult(
        "flip_invariance",
        passed,
        diff,
        cfg.flip_max_mean_diff,
        f"mean |p - flip(p(flip))| {diff:.3f} (<= {cfg.flip_max_mean_diff}), lowest mask IoU "
        f"{iou:.2f} (>= {cfg.flip_min_iou}), same class on {agree:.0%} "
        f"(>= {cfg.flip_min_class_agreement:.0%}) of {len(images)} images",
    )


def draw_lesion(tissue: np.ndarray, darkness: float) -> tuple[np.ndarray, np.ndarray]:
    """A dark (hypoechoic) ellipse drawn on ``tissue``, off-centre, about 9 % of the image:
    the image and the ellipse's mask."""
    h, w = tissue.shape
    yy, xx = np.mgrid[0:h, 0:w]
    ellipse = ((yy - 0.45 * h) / (0.14 * h)) ** 2 + ((xx - 0.58 * w) / (0.17 * w)) ** 2 <= 1
    image = np.where(ellipse, tissue.astype(np.float32) * darkness, tissue)
    return image.astype(np.uint8), ellipse


def check_drawn_lesion(
    unet,
    tissue: list[np.ndarray],
    roi: RoiConfig,
    tta: bool,
    cfg: BehaviourConfig,
    classifier=None,
) -> CheckResult:
    """A dark ellipse drawn on each lesion-free image is found where it was drawn (with
    ``classifier``: in the mask the chain shows, so a vetoed lesion is not found)."""
    drawn = [draw_lesion(t, cfg.drawn_darkness) for t in spread(tissue, cfg.max_images)]
    masks = _masks(unet, [d[0] for d in drawn], roi, tta, classifier)
    found, dices = 0, []
    for (image, ellipse), mask in zip(drawn, masks, strict=True):
        tp, fp, fn, _tn = confusion_counts(ellipse, mask)
        d = dice(tp, fp, fn)
        dices.append(d)
        if d >= cfg.drawn_min_dice:
            rows, cols = np.nonzero(mask)
            offset = max(
                abs(rows.mean() - 0.45 * image.shape[0]) / image.shape[0],
                abs(cols.mean() - 0.58 * image.shape[1]) / image.shape[1],
            )
            found += offset <= cfg.drawn_max_offset
    share = found / len(drawn) if drawn else float("nan")
    return CheckResult(
        "drawn_lesion",
        bool(drawn) and share >= cfg.drawn_min_found,
        share,
        cfg.drawn_min_found,
        f"found on {found} of {len(drawn)} images (median Dice "
        f"{np.median(dices) if dices else float('nan'):.2f})",
    )


def run_checks(
    unet,
    classifier,
    tissue: list[np.ndarray],
    images: list[np.ndarray],
    roi: RoiConfig,
    tta: bool,
    cfg: BehaviourConfig,
) -> dict:
    """All checks: ``tissue`` are lesion-free images (normal ones), ``images`` any images for
    the flip check. With ``classifier`` the blank, tissue and drawn-lesion checks judge the
    masks the chain shows (after ``roi.normal_veto``), as served; the flip check judges the
    U-Net's own masks and the chain's class. Returns {passed, failed: [names], checks: {name:
    result}, config}."""
    results = [
        check_blank(unet, roi, tta, cfg, classifier),
        check_tissue(unet, tissue, roi, tta, cfg, classifier),
        check_flip(unet, images, roi, cfg, classifier, tta),
        check_drawn_lesion(unet, tissue, roi, tta, cfg, classifier),
    ]
    failed = [r.name for r in results if not r.passed]
    return {
        "passed": not failed,
        "failed": failed,
        "checks": {r.name: asdict(r) for r in results},
        "config": asdict(cfg),
    }
