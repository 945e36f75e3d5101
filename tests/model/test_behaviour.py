"""Behavioural checks of the U-Net trained in the smoke profile (synthetic data, where
lesions are dark, hypoechoic ellipses, as in real scans)."""

from __future__ import annotations

import numpy as np
import pytest

from components.chain import RoiConfig, clean_mask, segment
from components.metrics import confusion_counts, dice
from components.synthetic import synth_pair

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def unet(smoke_run):
    import keras

    from components.train_unet import CUSTOM_OBJECTS

    path = smoke_run["workspace"] / "models" / "unet.keras"
    return keras.models.load_model(path, custom_objects=CUSTOM_OBJECTS)


def _predict(unet, image: np.ndarray, tta: bool = False) -> np.ndarray:
    return segment(unet, [image], unet.input_shape[1], tta_flip=tta)[0]


def test_predictions_are_flip_invariant_within_tolerance(unet):
    rng = np.random.default_rng(7)
    for label in ("benign", "malignant", "normal"):
        image, _ = synth_pair(rng, label, 90, 120)
        direct = _predict(unet, image)
        via_flip = _predict(unet, np.ascontiguousarray(image[:, ::-1]))[:, ::-1]
        assert np.abs(direct - via_flip).mean() < 0.05, label
        if label != "normal":
            a, b = clean_mask(direct, RoiConfig()), clean_mask(via_flip, RoiConfig())
            assert (a & b).sum() / max((a | b).sum(), 1) > 0.6, label


@pytest.mark.parametrize("level", [96, 160, 255])
def test_a_blank_image_gets_no_lesion(unet, level):
    blank = np.full((100, 130), level, dtype=np.uint8)
    assert not clean_mask(_predict(unet, blank, tta=True), RoiConfig()).any()


def test_tissue_without_a_lesion_gets_none(unet):
    rng = np.random.default_rng(3)
    found = [
        clean_mask(_predict(unet, synth_pair(rng, "normal", 96, 112)[0], True), RoiConfig()).any()
        for _ in range(10)
    ]
    assert sum(found) <= 2


def test_a_drawn_lesion_is_found(unet):
    rng = np.random.default_rng(11)
    tissue, _ = synth_pair(rng, "normal", 100, 120)
    yy, xx = np.mgrid[0:100, 0:120]
    ellipse = ((yy - 45) / 14) ** 2 + ((xx - 70) / 20) ** 2 <= 1
    image = np.where(ellipse, tissue * 0.2, tissue).astype(np.uint8)
    mask = clean_mask(_predict(unet, image, tta=True), RoiConfig())
    tp, fp, fn, _tn = confusion_counts(ellipse, mask)
    assert dice(tp, fp, fn) > 0.7
    rows, cols = np.nonzero(mask)
    assert abs(rows.mean() - 45) < 6 and abs(cols.mean() - 70) < 6
