"""What the chain calls a lesion: the U-Net's lesion probability thresholded, cleaned of specks.

Apart from ``busi.model.chain`` (the crop and the classifier's input) because the U-Net's
training stops on these figures: how the chain crops must not make a trained U-Net stale
(dvc.yaml lists this module, not the chain, as a dependency of train_unet).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from busi.model.metrics import keep_components


@dataclass(frozen=True)
class LesionRule:
    """A lesion is a connected component of ``probability >= threshold`` covering at least
    ``min_area`` of the image (smaller specks are dropped, and a normal image with none counts
    as lesion-free); ``keep``: the ``largest`` component or ``all``."""

    threshold: float = 0.5
    min_area: float = 0.002
    keep: str = "largest"  # largest | all

    def __post_init__(self) -> None:
        if self.keep not in ("largest", "all"):
            raise ValueError("keep must be 'largest' or 'all'")
        if not 0 <= self.threshold <= 1 or not 0 <= self.min_area < 1:
            raise ValueError("threshold and min_area must lie in [0, 1]")


def clean_mask(prob: np.ndarray, rule) -> np.ndarray:
    """Threshold, drop components below ``min_area``, keep the largest if asked. ``rule``: a
    ``LesionRule`` or anything with its three fields (the chain's ``RoiConfig``)."""
    mask = prob >= rule.threshold
    min_px = int(np.ceil(rule.min_area * mask.size))
    return keep_components(mask, max(min_px, 1), largest_only=rule.keep == "largest")
