"""Segmentation and classification metrics on arrays: pure functions, no I/O."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage
from sklearn import metrics as skm

logger = logging.getLogger(__name__)

# 8-connectivity: diagonal neighbours belong to the same blob.
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)

# Softmax outputs in float32 drift from 1 by ~1e-7; anything further is not a distribution.
_PROBA_SUM_TOL = 1e-3


# --- segmentation -------------------------------------------------------------------------------


def confusion_counts(true_mask: np.ndarray, pred_mask: np.ndarray) -> tuple[int, int, int, int]:
    """Pixel counts (TP, FP, FN, TN) of a predicted mask against the true mask.

    Both masks are 2-D and of the same shape; non-boolean input is read as ``!= 0``.
    """
    true_mask = np.asarray(true_mask)
    pred_mask = np.asarray(pred_mask)
    if true_mask.shape != pred_mask.shape:
        raise ValueError(
            f"mask shapes differ: true_mask {true_mask.shape} vs pred_mask {pred_mask.shape}"
        )
    if true_mask.ndim != 2:
        raise ValueError(f"masks must be 2-D, got shape {true_mask.shape}")
    t = true_mask.astype(bool)
    p = pred_mask.astype(bool)
    tp = int(np.count_nonzero(t & p))
    fp = int(np.count_nonzero(~t & p))
    fn = int(np.count_nonzero(t & ~p))
    tn = int(t.size - tp - fp - fn)
    return tp, fp, fn, tn


def dice(tp: int, fp: int, fn: int) -> float:
    """Dice = 2TP / (2TP + FP + FN); NaN when mask and prediction are both empty."""
    denom = 2 * tp + fp + fn
    return float("nan") if denom == 0 else 2.0 * tp / denom


def iou(tp: int, fp: int, fn: int) -> float:
    """IoU (Jaccard) = TP / (TP + FP + FN); NaN when mask and prediction are both empty."""
    denom = tp + fp + fn
    return float("nan") if denom == 0 else float(tp) / denom


def _nanmean(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=float)
    if arr.size == 0 or np.all(np.isnan(arr)):
        return float("nan")
    return float(np.nanmean(arr))


def _nanmedian(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=float)
    if arr.size == 0 or np.all(np.isnan(arr)):
        return float("nan")
    return float(np.nanmedian(arr))


def segmentation_metrics(
    true_masks: list[np.ndarray],
    pred_masks: list[np.ndarray],
    labels: list[str],
    lesion_min_area: float = 0.0,
) -> dict:
    """Per-image Dice/IoU and a summary over a set of images (sizes may differ per image).

    Summary keys:

    - ``dice_mean``, ``iou_mean``, ``dice_median``: over the ``n_lesion_images`` images whose
      true mask is non-empty (the "lesion Dice"). NaN when there are none.
    - ``n_undefined``: images where mask and prediction are both empty. Dice/IoU are NaN there
      (undefined, not 1 and not 0); they are counted here and left out of every mean.
      An empty mask with a non-empty prediction has Dice 0 (defined) but, having no lesion,
      is not in the lesion means either; it shows up in ``normal_false_lesion_rate``.
    - ``normal_false_lesion_rate``: share of the ``n_normal`` images labelled ``"normal"``
      whose prediction contains a lesion, i.e. whose predicted foreground fraction (foreground
      pixels / image pixels) is strictly greater than ``lesion_min_area``. With the default
      0.0 a single predicted pixel counts. NaN when ``n_normal`` is 0.
    - ``pixel_accuracy``: (TP + TN) / all pixels, pooled over all images. Secondary only:
      background dominates it, so an all-background prediction scores high.
    - ``per_image``: one dict per image, in input order, with ``dice``, ``iou``, ``tp``, ``fp``,
      ``fn``, ``pred_area_fraction`` and ``true_area_fraction``.

    The result may hold NaN; pass it through :func:`to_jsonable` before writing JSON.
    """
    if not (len(true_masks) == len(pred_masks) == len(labels)):
        raise ValueError(
            f"lengths differ: {len(true_masks)} true masks, {len(pred_masks)} predicted masks, "
            f"{len(labels)} labels"
        )
    if not 0.0 <= lesion_min_area < 1.0:
        raise ValueError(f"lesion_min_area is a fraction of the image in [0, 1): {lesion_min_area}")

    per_image: list[dict[str, Any]] = []
    lesion_dice: list[float] = []
    lesion_iou: list[float] = []
    n_undefined = 0
    n_normal = 0
    n_normal_with_lesion = 0
    correct_px = 0
    total_px = 0

    for i, (true_mask, pred_mask, label) in enumerate(
        zip(true_masks, pred_masks, labels, strict=True)
    ):
        try:
            tp, fp, fn, tn = confusion_counts(true_mask, pred_mask)
        except ValueError as exc:
            raise ValueError(f"image {i} ({label}): {exc}") from exc
        n_px = tp + fp + fn + tn
        d, j = dice(tp, fp, fn), iou(tp, fp, fn)
        pred_fraction = (tp + fp) / n_px if n_px else 0.0
        true_fraction = (tp + fn) / n_px if n_px else 0.0
        per_image.append(
            {
                "dice": d,
                "iou": j,
                "tp": tp,
                "fp": fp,
                "fn": fn,
                "pred_area_fraction": pred_fraction,
                "true_area_fraction": true_fraction,
            }
        )
        if tp + fn > 0:
            lesion_dice.append(d)
            lesion_iou.append(j)
        elif fp == 0:
            n_undefined += 1
        if label == "normal":
            n_normal += 1
            if pred_fraction > lesion_min_area:
                n_normal_with_lesion += 1
        correct_px += tp + tn
        total_px += n_px

    if not lesion_dice:
        logger.warning("no image with a non-empty true mask: lesion Dice/IoU are undefined")
    return {
        "dice_mean": _nanmean(lesion_dice),
        "iou_mean": _nanmean(lesion_iou),
        "dice_median": _nanmedian(lesion_dice),
        "n_lesion_images": len(lesion_dice),
        "n_undefined": n_undefined,
        "normal_false_lesion_rate": (n_normal_with_lesion / n_normal if n_normal else float("nan")),
        "n_normal": n_normal,
        "lesion_min_area": float(lesion_min_area),
        "pixel_accuracy": correct_px / total_px if total_px else float("nan"),
        "n_images": len(per_image),
        "per_image": per_image,
    }


# --- classification -----------------------------------------------------------------------------


def expected_calibration_error(y_true: np.ndarray, proba: np.ndarray, n_bins: int = 10) -> float:
    """ECE of the top-1 confidence: sum over bins of |accuracy - confidence| * share of samples.

    ``n_bins`` equal-width bins on [0, 1], closed on the right: (0.6, 0.7] holds 0.7; the first
    bin also holds 0. Empty bins contribute nothing.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=float)
    confidence = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y_true).astype(float)
    # i / n_bins is the correctly rounded edge (0.7, not 0.7000000000000001 as from i * 0.1).
    inner_edges = np.arange(1, n_bins) / n_bins
    bin_idx = np.searchsorted(inner_edges, confidence, side="left")
    n = len(confidence)
    ece = 0.0
    for b in range(n_bins):
        in_bin = bin_idx == b
        count = int(np.count_nonzero(in_bin))
        if count:
            gap = abs(correct[in_bin].mean() - confidence[in_bin].mean())
            ece += gap * count / n
    return float(ece)


def classification_metrics(
    y_true: list[int] | np.ndarray,
    proba: np.ndarray,
    class_names: list[str],
    positive: str = "malignant",
    n_bins: int = 10,
) -> dict:
    """Classification report from integer labels and class probabilities (n, k).

    Predictions are ``argmax(proba)``; column j of ``proba`` is ``class_names[j]`` and label j.
    Keys: ``n_samples``, ``accuracy``, ``macro_f1``, ``balanced_accuracy``, ``per_class``
    (class name -> precision, recall, f1, support), ``confusion_matrix`` (rows true, columns
    predicted, order ``class_names``), ``class_names``, ``roc_auc_<positive>_vs_rest`` (NaN
    when y_true holds only one side), ``roc_curve`` (positive, fpr, tpr; empty lists when
    undefined), ``ece`` (see :func:`expected_calibration_error`), ``n_bins`` and ``brier``
    (multi-class: mean over samples of the squared distance to the one-hot label, in [0, 2]).

    Precision/recall/F1 of a class with no samples and no predictions is 0, not skipped.
    """
    y = np.asarray(y_true)
    proba = np.asarray(proba, dtype=float)
    k = len(class_names)
    if proba.ndim != 2 or proba.shape[1] != k:
        raise ValueError(f"proba must have shape (n, {k}) for classes {class_names}: {proba.shape}")
    if y.ndim != 1 or len(y) != proba.shape[0]:
        raise ValueError(f"y_true shape {y.shape} does not match proba shape {proba.shape}")
    if len(y) == 0:
        raise ValueError("no samples")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y_true must hold integer class indices, got dtype {y.dtype}")
    if y.min() < 0 or y.max() >= k:
        raise ValueError(f"y_true holds labels outside 0..{k - 1}: {sorted(set(y.tolist()))}")
    if not np.all(np.isfinite(proba)) or proba.min() < 0:
        raise ValueError("proba must be finite and non-negative")
    row_sums = proba.sum(axis=1)
    if not np.allclose(row_sums, 1.0, atol=_PROBA_SUM_TOL):
        worst = float(row_sums[np.argmax(np.abs(row_sums - 1.0))])
        raise ValueError(f"proba rows must sum to 1 (one row sums to {worst:.6f})")
    if positive not in class_names:
        raise ValueError(f"positive class {positive!r} is not one of {class_names}")

    labels = list(range(k))
    y_pred = proba.argmax(axis=1)
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y, y_pred, labels=labels, zero_division=0.0
    )
    per_class = {
        name: {
            "precision": float(precision[j]),
            "recall": float(recall[j]),
            "f1": float(f1[j]),
            "support": int(support[j]),
        }
        for j, name in enumerate(class_names)
    }

    pos = class_names.index(positive)
    y_pos = (y == pos).astype(int)
    auc_key = f"roc_auc_{positive}_vs_rest"
    if 0 < y_pos.sum() < len(y_pos):
        auc = float(skm.roc_auc_score(y_pos, proba[:, pos]))
        fpr, tpr, _ = skm.roc_curve(y_pos, proba[:, pos])
        curve = {"positive": positive, "fpr": fpr.tolist(), "tpr": tpr.tolist()}
    else:
        logger.warning(
            "%s is undefined: y_true holds only one side of %s vs rest", auc_key, positive
        )
        auc = float("nan")
        curve = {"positive": positive, "fpr": [], "tpr": []}

    return {
        "n_samples": len(y),
        "accuracy": float(skm.accuracy_score(y, y_pred)),
        "macro_f1": float(f1.mean()),
        "balanced_accuracy": float(skm.balanced_accuracy_score(y, y_pred)),
        "per_class": per_class,
        "confusion_matrix": skm.confusion_matrix(y, y_pred, labels=labels).tolist(),
        "class_names": list(class_names),
        auc_key: auc,
        "roc_curve": curve,
        "ece": expected_calibration_error(y, proba, n_bins=n_bins),
        "n_bins": n_bins,
        "brier": float(skm.brier_score_loss(y, proba, labels=labels, scale_by_half=False)),
    }


# --- robustness figures -------------------------------------------------------------------------


def _auc(positive: np.ndarray, score: np.ndarray) -> float | None:
    positive = np.asarray(positive, dtype=bool)
    if not 0 < positive.sum() < len(positive):
        return None
    return float(skm.roc_auc_score(positive, score))


def _share(flags: np.ndarray) -> float | None:
    return float(np.mean(flags)) if len(flags) else None


def robustness_figures(
    true_masks: list[np.ndarray],
    labels: Sequence[str],
    pred_masks: list[np.ndarray],
    proba: np.ndarray,
    class_names: Sequence[str],
) -> dict:
    """What a shift or another site does to the chain, from its cleaned masks and class
    probabilities (columns in ``class_names`` order):

    - ``lesion_dice_mean`` / ``_median``: over images with a true lesion (as evaluation);
    - ``lesion_not_found``: share of lesion images whose predicted mask is empty;
    - ``lesion_called_normal``: share of lesion images classified normal;
    - ``malignant_recall``: share of malignant images classified malignant;
    - ``malignant_auc``: malignant vs rest over all images (evaluation's figure);
      ``benign_malignant_auc``: on the lesion images only, by the malignant probability;
    - ``normal_false_lesion_rate``: share of normal images with a predicted lesion;
    - ``accuracy``. Undefined figures (no such images, one class only) are None.
    """
    labels = np.asarray(labels)
    proba = np.asarray(proba, dtype=float)
    predicted = np.asarray(class_names)[proba.argmax(axis=1)] if len(proba) else labels
    seg = segmentation_metrics(true_masks, pred_masks, list(labels))
    lesion = np.array([m.any() for m in true_masks], dtype=bool)
    found = np.array([m.any() for m in pred_masks], dtype=bool)
    malignant = labels == "malignant"
    p_malignant = proba[:, list(class_names).index("malignant")]
    benign_or_malignant = np.isin(labels, ("benign", "malignant"))
    return {
        "n_images": len(labels),
        "n_lesion_images": int(lesion.sum()),
        "n_normal": int((labels == "normal").sum()),
        "lesion_dice_mean": None if math.isnan(seg["dice_mean"]) else seg["dice_mean"],
        "lesion_dice_median": None if math.isnan(seg["dice_median"]) else seg["dice_median"],
        "lesion_not_found": _share(~found[lesion]),
        "lesion_called_normal": _share(predicted[lesion] == "normal"),
        "malignant_recall": _share(predicted[malignant] == "malignant"),
        "malignant_auc": _auc(malignant, p_malignant),
        "benign_malignant_auc": _auc(
            malignant[benign_or_malignant], p_malignant[benign_or_malignant]
        ),
        "normal_false_lesion_rate": _share(found[labels == "normal"]),
        "accuracy": _share(predicted == labels),
    }


# --- mask post-processing -----------------------------------------------------------------------


def _label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    return ndimage.label(mask, structure=_EIGHT_CONNECTED)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep only the largest 8-connected blob; on a tie, the first in row-major order."""
    return keep_components(mask, 1, largest_only=True)


def remove_small_components(mask: np.ndarray, min_area_px: int) -> np.ndarray:
    """Drop 8-connected blobs with fewer than ``min_area_px`` pixels; keep the rest."""
    return keep_components(mask, min_area_px, largest_only=False)


def keep_components(mask: np.ndarray, min_area_px: int, largest_only: bool) -> np.ndarray:
    """Drop 8-connected blobs below ``min_area_px`` pixels and, if ``largest_only``, keep
    only the largest of the rest (ties: the first in row-major order). One labelling pass:
    the chain runs this on every full-size prediction."""
    if min_area_px < 0:
        raise ValueError(f"min_area_px must be >= 0, got {min_area_px}")
    labelled, n = _label(mask)
    if n == 0:
        return np.zeros(labelled.shape, dtype=bool)
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    if largest_only:
        # Labels follow row-major order, so argmax's first maximum is the tie rule of
        # largest_component; dropping smaller blobs first does not change which is largest.
        best = int(np.argmax(sizes))
        if sizes[best] < max(min_area_px, 1):
            return np.zeros(labelled.shape, dtype=bool)
        return labelled == best
    keep = sizes >= max(min_area_px, 1)
    return keep[labelled]


# --- serialisation ------------------------------------------------------------------------------


def to_jsonable(obj: Any) -> Any:
    """Recursively turn numpy values into Python ones and NaN/inf into None, for strict JSON."""
    if isinstance(obj, dict):
        return {_jsonable_key(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return obj


def _jsonable_key(key: Any) -> Any:
    if isinstance(key, np.generic):
        return key.item()
    return key
