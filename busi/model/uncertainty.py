"""Bootstrap intervals and paired comparisons of the chain's figures, computed from a table
of per-image predictions: pure functions on a pandas frame and numpy arrays, no I/O.

The resampling unit is the near-duplicate group of split_data (``dup_group``), not the
image: two near-identical scans are one piece of evidence, and resampling them apart
would make the intervals too narrow. A bootstrap replicate draws as many groups as there
are, with replacement; every figure is then a weighted figure over the images, the weight
of an image being how often its group was drawn. The point estimate is the same formula
with all weights 1, so it equals the plain figure.

The per-image table (``PER_IMAGE_COLUMNS``) is what evaluate_models writes as
``per_image.csv`` and what promote_model compares a challenger and a champion on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

PER_IMAGE_COLUMNS = (
    "id",
    "dup_group",
    "class",
    "predicted",
    "prob_benign",
    "prob_malignant",
    "prob_normal",
    "dice",
    "iou",
    "tp",
    "fp",
    "fn",
    "true_area_fraction",
    "pred_area_fraction",
)
CLASS_ORDER = ("benign", "malignant", "normal")
POSITIVE = "malignant"
# Figures that get an interval; the headline of evaluate_models plus the promotion's guard.
FIGURES = (
    "lesion_dice",
    "lesion_iou",
    "normal_false_lesion_rate",
    "accuracy",
    "macro_f1",
    "malignant_recall",
    "malignant_auc",
    "ece",
)


@dataclass(frozen=True)
class BootstrapConfig:
    samples: int = 2000
    level: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if self.samples < 100:
            raise ValueError(f"bootstrap samples must be >= 100, got {self.samples}")
        if not 0.5 <= self.level < 1.0:
            raise ValueError(f"interval level must be in [0.5, 1), got {self.level}")


def check_table(table: pd.DataFrame, where: str = "per-image table") -> pd.DataFrame:
    missing = [c for c in PER_IMAGE_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{where} lacks the columns {missing}")
    if table.empty:
        raise ValueError(f"{where} has no rows")
    if table["id"].duplicated().any():
        raise ValueError(f"{where} lists an image twice: {table['id'][table['id'].duplicated()]}")
    unknown = set(table["class"]) - set(CLASS_ORDER)
    if unknown:
        raise ValueError(f"{where} has unknown classes {sorted(unknown)}")
    return table


def group_weights(groups: Sequence[str], cfg: BootstrapConfig) -> np.ndarray:
    """(samples, n_images) weights: how often each image's group was drawn in a replicate."""
    codes, uniques = pd.factorize(pd.Series(list(groups), dtype=str))
    rng = np.random.default_rng(cfg.seed)
    n_groups = len(uniques)
    counts = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=cfg.samples)
    return counts[:, codes].astype(float)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _mean_over(weights: np.ndarray, values: np.ndarray, subset: np.ndarray) -> np.ndarray:
    w = weights[:, subset]
    return _ratio(w @ values[subset], w.sum(axis=1))


def weighted_figures(table: pd.DataFrame, weights: np.ndarray, n_bins: int = 10) -> dict:
    """Each figure as an array with one value per row of ``weights`` (samples, n_images).

    Lesion Dice/IoU: mean over images with a true lesion (Dice is defined there).
    False lesion rate: share of normal images with any predicted foreground (the masks are
    already cleaned of components below the lesion size). Classification: from the
    weighted confusion matrix; AUC from the weighted Mann-Whitney statistic; ECE of the
    top-1 confidence (bins closed on the right, as metrics.expected_calibration_error)."""
    weights = np.atleast_2d(np.asarray(weights, dtype=float))
    k = len(CLASS_ORDER)
    y = table["class"].map(CLASS_ORDER.index).to_numpy()
    proba = table[[f"prob_{c}" for c in CLASS_ORDER]].to_numpy(dtype=float)
    pred = proba.argmax(axis=1)
    lesion = (table["tp"] + table["fn"]).to_numpy() > 0
    normal = y == CLASS_ORDER.index("normal")
    out = {
        "lesion_dice": _mean_over(weights, table["dice"].fillna(0).to_numpy(float), lesion),
        "lesion_iou": _mean_over(weights, table["iou"].fillna(0).to_numpy(float), lesion),
        "normal_false_lesion_rate": _mean_over(
            weights, (table["pred_area_fraction"].to_numpy(float) > 0).astype(float), normal
        ),
    }
    pairs = np.zeros((len(y), k * k))
    pairs[np.arange(len(y)), y * k + pred] = 1.0
    cm = (weights @ pairs).reshape(-1, k, k)  # (samples, true, predicted)
    tp = np.einsum("sii->si", cm)
    recall = _ratio(tp, cm.sum(axis=2))
    precision = _ratio(tp, cm.sum(axis=1))
    f1 = _ratio(2 * tp, cm.sum(axis=2) + cm.sum(axis=1))
    # As sklearn with zero_division=0: a class never seen nor predicted scores 0.
    out["macro_f1"] = np.nan_to_num(f1, nan=0.0).mean(axis=1)
    out["accuracy"] = _ratio(tp.sum(axis=1), cm.sum(axis=(1, 2)))
    for j, name in enumerate(CLASS_ORDER):
        out[f"{name}_recall"] = recall[:, j]
        out[f"{name}_precision"] = precision[:, j]
        out[f"{name}_f1"] = f1[:, j]
    pos = y == CLASS_ORDER.index(POSITIVE)
    score = proba[:, CLASS_ORDER.index(POSITIVE)]
    s_pos, s_neg = score[pos][:, None], score[~pos][None, :]
    wins = (s_pos > s_neg) + 0.5 * (s_pos == s_neg)  # (n_pos, n_neg)
    w_pos, w_neg = weights[:, pos], weights[:, ~pos]
    out["malignant_auc"] = _ratio(
        np.einsum("sp,pn,sn->s", w_pos, wins, w_neg), w_pos.sum(axis=1) * w_neg.sum(axis=1)
    )
    conf = proba.max(axis=1)
    correct = (pred == y).astype(float)
    bins = np.searchsorted(np.arange(1, n_bins) / n_bins, conf, side="left")
    onehot = np.zeros((len(y), n_bins))
    onehot[np.arange(len(y)), bins] = 1.0
    count = weights @ onehot
    gap = np.abs(weights @ (onehot * correct[:, None]) - weights @ (onehot * conf[:, None]))
    out["ece"] = _ratio(gap.sum(axis=1), count.sum(axis=1))
    return out


def _interval(values: np.ndarray, level: float) -> tuple[float | None, float | None]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None, None
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def _summary(point: float, draws: np.ndarray, level: float) -> dict:
    low, high = _interval(draws, level)
    value = float(point) if np.isfinite(point) else None
    return {"value": value, "low": low, "high": high}


def figures_with_intervals(
    table: pd.DataFrame, cfg: BootstrapConfig, names: Sequence[str] = FIGURES, n_bins: int = 10
) -> dict:
    """{figure: {value, low, high}} with a percentile interval over group resamples."""
    check_table(table)
    point = weighted_figures(table, np.ones((1, len(table))), n_bins)
    draws = weighted_figures(table, group_weights(table["dup_group"], cfg), n_bins)
    return {name: _summary(point[name][0], draws[name], cfg.level) for name in names}


SIZE_BUCKETS = (
    ("small_lt1pct", 0.0, 0.01),
    ("medium_1to5pct", 0.01, 0.05),
    ("large_ge5pct", 0.05, 1.01),
)
SIZE_LABELS = {
    "small_lt1pct": "under 1 % of the image",
    "medium_1to5pct": "1-5 % of the image",
    "large_ge5pct": "5 % of the image or more",
}


def per_lesion_size(table: pd.DataFrame, cfg: BootstrapConfig) -> dict:
    """Images with a true lesion, by the lesion's share of the image: how many, how many
    the segmenter missed (no predicted pixel on the lesion), Dice and class accuracy with
    intervals."""
    check_table(table)
    lesion = table[(table["tp"] + table["fn"]) > 0]
    out = {}
    for name, low, high in SIZE_BUCKETS:
        part = lesion[(lesion["true_area_fraction"] >= low) & (lesion["true_area_fraction"] < high)]
        entry: dict = {"n_images": len(part), "n_missed": int((part["tp"] == 0).sum())}
        if len(part):
            point = weighted_figures(part, np.ones((1, len(part))))
            draws = weighted_figures(part, group_weights(part["dup_group"], cfg))
            for figure in ("lesion_dice", "accuracy"):
                entry[figure] = _summary(point[figure][0], draws[figure], cfg.level)
        out[name] = entry
    return out


def per_class(table: pd.DataFrame, cfg: BootstrapConfig) -> dict:
    """Precision, recall and F1 of each class with intervals, and its image count."""
    check_table(table)
    names = [f"{c}_{m}" for c in CLASS_ORDER for m in ("precision", "recall", "f1")]
    figures = figures_with_intervals(table, cfg, names)
    return {
        c: {"n_images": int((table["class"] == c).sum())}
        | {m: figures[f"{c}_{m}"] for m in ("precision", "recall", "f1")}
        for c in CLASS_ORDER
    }


def reliability_bins(table: pd.DataFrame, n_bins: int = 10) -> list[dict]:
    """The reliability diagram's data: per confidence bin, the images, their mean top-1
    confidence and how many of them were right."""
    proba = table[[f"prob_{c}" for c in CLASS_ORDER]].to_numpy(dtype=float)
    y = table["class"].map(CLASS_ORDER.index).to_numpy()
    conf, correct = proba.max(axis=1), proba.argmax(axis=1) == y
    bins = np.searchsorted(np.arange(1, n_bins) / n_bins, conf, side="left")
    out = []
    for b in range(n_bins):
        sel = bins == b
        n = int(sel.sum())
        out.append(
            {
                "low": b / n_bins,
                "high": (b + 1) / n_bins,
                "n_images": n,
                "confidence": float(conf[sel].mean()) if n else None,
                "accuracy": float(correct[sel].mean()) if n else None,
            }
        )
    return out


def paired_differences(
    challenger: pd.DataFrame,
    champion: pd.DataFrame,
    names: Sequence[str],
    cfg: BootstrapConfig,
) -> dict:
    """Challenger minus champion on the images both were scored on, with the same group
    resamples for both: {figure: {value, low, high, p_positive, p_draws}} where
    ``p_positive`` is the share of replicates in which the difference is > 0.

    Raises ValueError when the two tables share no image."""
    check_table(challenger, "the challenger's per-image table")
    check_table(champion, "the champion's per-image table")
    common = challenger[["id"]].merge(champion[["id"]], on="id")["id"]
    if common.empty:
        raise ValueError("the challenger and the champion were scored on no common image")
    a = challenger.set_index("id").loc[common].reset_index()
    b = champion.set_index("id").loc[common].reset_index()
    weights = group_weights(a["dup_group"], cfg)
    ones = np.ones((1, len(a)))
    point_a, point_b = weighted_figures(a, ones), weighted_figures(b, ones)
    draws_a, draws_b = weighted_figures(a, weights), weighted_figures(b, weights)
    out = {"n_images": len(a), "n_groups": int(a["dup_group"].nunique())}
    for name in names:
        diff = draws_a[name] - draws_b[name]
        finite = diff[np.isfinite(diff)]
        entry = _summary(point_a[name][0] - point_b[name][0], diff, cfg.level)
        entry["draws"] = finite
        out[name] = entry
    return out


def probability_at_least(draws: np.ndarray, threshold: float, strict: bool = False) -> float:
    """Share of bootstrap draws above ``threshold`` (NaN-free draws; 0 when there are none)."""
    if draws.size == 0:
        return 0.0
    hit = draws > threshold if strict else draws >= threshold - 1e-12
    return float(hit.mean())
