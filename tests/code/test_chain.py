"""The inference chain: mask cleaning, ROI geometry, crops and the classifier input."""

from __future__ import annotations

import numpy as np
import pytest

from components.chain import (
    RoiConfig,
    classifier_input,
    clean_mask,
    crop_roi,
    roi_box,
    rois_from_masks,
    shape_features,
)


def _mask(shape=(100, 200), box=(40, 50, 60, 90)) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    top, left, bottom, right = box
    m[top:bottom, left:right] = True
    return m


def test_box_with_margin():
    # a 20 x 40 box, 25 % margin -> 5 rows and 10 columns more on each side
    assert roi_box(_mask(), 0.25) == (35, 40, 65, 100)
    assert roi_box(_mask(), 0.0) == (40, 50, 60, 90)


def test_box_is_clipped_at_the_borders():
    corner = _mask(box=(0, 0, 10, 20))
    assert roi_box(corner, 0.5) == (0, 0, 15, 30)
    far = _mask(box=(90, 180, 100, 200))
    assert roi_box(far, 1.0) == (80, 160, 100, 200)


def test_empty_mask_gives_the_whole_image():
    assert roi_box(np.zeros((70, 50), dtype=bool), 0.2) == (0, 0, 70, 50)


def test_crop_has_the_requested_size_and_follows_the_box():
    image = np.zeros((100, 200), dtype=np.uint8)
    image[40:60, 50:90] = 200
    crop, mask_crop = crop_roi(image, _mask(), (40, 50, 60, 90), 32)
    assert crop.shape == mask_crop.shape == (32, 32)
    assert crop.min() == 200 and mask_crop.all()


def test_clean_mask_drops_specks_and_keeps_the_largest():
    prob = np.zeros((100, 100), dtype=np.float32)
    prob[10:30, 10:30] = 0.9  # 400 px
    prob[60:70, 60:70] = 0.8  # 100 px
    prob[90, 90] = 0.99  # 1 px speck
    cfg = RoiConfig(threshold=0.5, min_area=0.005, keep="all")  # 50 px minimum
    kept = clean_mask(prob, cfg)
    assert kept.sum() == 500 and not kept[90, 90]
    largest = clean_mask(prob, RoiConfig(threshold=0.5, min_area=0.005, keep="largest"))
    assert largest.sum() == 400
    assert not clean_mask(prob * 0.5, cfg).any()  # below the threshold: no lesion


def test_shape_features_and_classifier_input():
    feats = shape_features(_mask())
    assert feats["aspect"] == pytest.approx(0.5) and feats["extent"] == pytest.approx(1.0)
    assert shape_features(np.zeros((5, 5), bool))["area"] == 0.0
    images = [np.full((100, 200), 255, np.uint8), np.zeros((80, 60), np.uint8)]
    masks = [_mask(), np.zeros((80, 60), bool)]
    crops, mask_crops, boxes, _ = rois_from_masks(images, masks, RoiConfig(crop_size=16))
    assert crops.shape == (2, 16, 16) and boxes[1].tolist() == [0, 0, 80, 60]
    x = classifier_input(crops, mask_crops)
    assert x.shape == (2, 16, 16, 2) and x.dtype == np.float32
    assert x[0, ..., 0].max() == pytest.approx(1.0) and x[1, ..., 1].max() == 0.0


def test_bad_roi_settings_are_refused():
    with pytest.raises(ValueError):
        RoiConfig(keep="biggest")
    with pytest.raises(ValueError):
        RoiConfig(threshold=1.5)
