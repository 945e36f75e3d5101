"""metrics: hand-computed segmentation, classification and calibration cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from busi.model.metrics import (
    classification_metrics,
    confusion_counts,
    dice,
    expected_calibration_error,
    iou,
    keep_components,
    largest_component,
    remove_small_components,
    segmentation_metrics,
    to_jsonable,
)

CLASSES = ["benign", "malignant", "normal"]


def _square(shape: tuple[int, int], top: int, left: int, size: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + size, left : left + size] = True
    return mask


# --- confusion counts, Dice, IoU ----------------------------------------------------------------


def test_counts_dice_iou_on_a_4x4_hand_example():
    true = np.zeros((4, 4), dtype=bool)
    true[0, 0:3] = True  # (0,0) (0,1) (0,2)
    pred = np.zeros((4, 4), dtype=bool)
    pred[0, 0:2] = True  # (0,0) (0,1): both hits
    pred[1, 1] = True  # a false positive; (0,2) is missed
    assert confusion_counts(true, pred) == (2, 1, 1, 12)
    assert dice(2, 1, 1) == pytest.approx(4 / 6)
    assert iou(2, 1, 1) == pytest.approx(0.5)


def test_identical_masks_score_one_and_disjoint_masks_zero():
    a = _square((8, 8), 1, 1, 3)
    b = _square((8, 8), 5, 5, 2)
    assert dice(*confusion_counts(a, a)[:3]) == 1.0
    assert iou(*confusion_counts(a, a)[:3]) == 1.0
    assert dice(*confusion_counts(a, b)[:3]) == 0.0
    assert iou(*confusion_counts(a, b)[:3]) == 0.0


def test_empty_mask_and_empty_prediction_are_undefined_not_one():
    empty = np.zeros((4, 4), dtype=bool)
    assert confusion_counts(empty, empty) == (0, 0, 0, 16)
    assert math.isnan(dice(0, 0, 0))
    assert math.isnan(iou(0, 0, 0))


def test_empty_truth_with_a_prediction_scores_zero_not_nan():
    empty = np.zeros((4, 4), dtype=bool)
    speck = _square((4, 4), 0, 0, 1)
    tp, fp, fn, _ = confusion_counts(empty, speck)
    assert (tp, fp, fn) == (0, 1, 0)
    assert dice(tp, fp, fn) == 0.0
    assert iou(tp, fp, fn) == 0.0


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(4, 4\).*\(4, 5\)"):
        confusion_counts(np.zeros((4, 4), bool), np.zeros((4, 5), bool))


# --- segmentation_metrics -----------------------------------------------------------------------


def _segmentation_set():
    """Five 32x32 images: two lesions (hit, miss) and three normals (clean, speck, blob)."""
    shape = (32, 32)
    empty = np.zeros(shape, dtype=bool)
    lesion = _square(shape, 4, 4, 8)
    true_masks = [lesion, lesion, empty, empty, empty]
    pred_masks = [
        lesion.copy(),  # perfect: Dice 1
        _square(shape, 20, 20, 8),  # disjoint: Dice 0
        empty,  # empty/empty: undefined
        _square(shape, 0, 0, 2),  # 4 px = 0.39 % of the image
        _square(shape, 10, 10, 10),  # 100 px = 9.8 % of the image
    ]
    labels = ["malignant", "benign", "normal", "normal", "normal"]
    return true_masks, pred_masks, labels


def test_lesion_dice_excludes_undefined_images_and_counts_them():
    res = segmentation_metrics(*_segmentation_set())
    dices = [row["dice"] for row in res["per_image"]]
    assert dices[0] == 1.0
    assert dices[1] == 0.0
    assert math.isnan(dices[2])
    assert dices[3] == 0.0
    assert dices[4] == 0.0  # empty truth + prediction: defined, 0
    assert res["n_lesion_images"] == 2
    assert res["n_undefined"] == 1
    assert res["dice_mean"] == pytest.approx(0.5)
    assert res["iou_mean"] == pytest.approx(0.5)
    assert res["dice_median"] == pytest.approx(0.5)
    assert res["n_normal"] == 3


def test_per_image_rows_carry_counts_and_area_fractions():
    res = segmentation_metrics(*_segmentation_set())
    row = res["per_image"][1]
    assert (row["tp"], row["fp"], row["fn"]) == (0, 64, 64)
    assert row["pred_area_fraction"] == pytest.approx(64 / 1024)
    assert row["true_area_fraction"] == pytest.approx(64 / 1024)
    assert res["per_image"][3]["pred_area_fraction"] == pytest.approx(4 / 1024)
    assert set(row) == {"dice", "iou", "tp", "fp", "fn", "pred_area_fraction", "true_area_fraction"}


@pytest.mark.parametrize(
    ("lesion_min_area", "expected_rate"),
    [
        (0.0, 2 / 3),  # any predicted pixel counts: speck and blob
        (0.01, 1 / 3),  # the 0.39 % speck is below the threshold, the 9.8 % blob above
        (0.2, 0.0),  # neither reaches 20 %
    ],
)
def test_normal_false_lesion_rate_respects_the_area_threshold(lesion_min_area, expected_rate):
    res = segmentation_metrics(*_segmentation_set(), lesion_min_area=lesion_min_area)
    assert res["normal_false_lesion_rate"] == pytest.approx(expected_rate)


def test_pixel_accuracy_is_high_for_an_all_background_prediction_on_a_lesion():
    # Why pixel accuracy is not a headline figure: 36 lesion pixels out of 1024.
    true = _square((32, 32), 10, 10, 6)
    res = segmentation_metrics([true], [np.zeros_like(true)], ["malignant"])
    assert res["pixel_accuracy"] == pytest.approx(988 / 1024)
    assert res["pixel_accuracy"] > 0.9
    assert res["dice_mean"] == 0.0


def test_pixel_accuracy_is_pooled_over_images_of_different_sizes():
    big_true = _square((32, 32), 0, 0, 4)  # 16 px lesion, predicted exactly
    small_true = _square((16, 24), 0, 0, 4)  # 16 px lesion, missed
    res = segmentation_metrics(
        [big_true, small_true], [big_true.copy(), np.zeros((16, 24), bool)], ["benign", "benign"]
    )
    # Pooled: (1024 + 384 - 16) / (1024 + 384), not the mean of the two per-image accuracies.
    assert res["pixel_accuracy"] == pytest.approx(1392 / 1408)
    assert res["dice_mean"] == pytest.approx(0.5)


def test_no_lesion_images_gives_nan_means_and_no_normals_nan_rate():
    empty = np.zeros((8, 8), bool)
    res = segmentation_metrics([empty], [empty], ["benign"])
    assert math.isnan(res["dice_mean"])
    assert math.isnan(res["dice_median"])
    assert res["n_lesion_images"] == 0
    assert math.isnan(res["normal_false_lesion_rate"])


def test_segmentation_inputs_are_checked():
    a = np.zeros((8, 8), bool)
    with pytest.raises(ValueError, match="lengths differ"):
        segmentation_metrics([a, a], [a], ["normal", "normal"])
    with pytest.raises(ValueError, match=r"image 0 \(normal\).*\(8, 8\).*\(8, 9\)"):
        segmentation_metrics([a], [np.zeros((8, 9), bool)], ["normal"])


# --- classification_metrics ---------------------------------------------------------------------


def _proba_for(y_pred, k: int = 3, top: float = 0.6) -> np.ndarray:
    """Predicted class gets ``top``, the rest share what is left equally."""
    proba = np.full((len(y_pred), k), (1.0 - top) / (k - 1))
    proba[np.arange(len(y_pred)), y_pred] = top
    return proba


def test_three_class_report_matches_hand_arithmetic():
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 1, 1, 0, 2]
    res = classification_metrics(y_true, _proba_for(y_pred), CLASSES)

    assert res["confusion_matrix"] == [[2, 1, 0], [1, 1, 0], [0, 0, 1]]
    assert res["class_names"] == CLASSES
    assert res["accuracy"] == pytest.approx(4 / 6)
    # benign P=R=2/3, malignant P=R=1/2, normal P=R=1 -> F1 = 2/3, 1/2, 1.
    assert res["per_class"]["benign"]["precision"] == pytest.approx(2 / 3)
    assert res["per_class"]["malignant"]["recall"] == pytest.approx(1 / 2)
    assert res["per_class"]["malignant"]["f1"] == pytest.approx(1 / 2)
    assert res["per_class"]["normal"]["f1"] == pytest.approx(1.0)
    assert [res["per_class"][c]["support"] for c in CLASSES] == [3, 2, 1]
    assert res["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert res["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    # All confidences 0.6 in one bin, accuracy 4/6: ECE = |4/6 - 0.6|.
    assert res["ece"] == pytest.approx(4 / 6 - 0.6)
    # Right row: 0.4^2 + 2 * 0.2^2 = 0.24; wrong row: 0.8^2 + 0.6^2 + 0.2^2 = 1.04.
    assert res["brier"] == pytest.approx((4 * 0.24 + 2 * 1.04) / 6)


def test_macro_f1_differs_from_accuracy_under_imbalance():
    # Everything called benign: accuracy 0.8 but two classes have F1 0.
    y_true = [0] * 8 + [1, 2]
    res = classification_metrics(y_true, _proba_for([0] * 10), CLASSES)
    assert res["accuracy"] == pytest.approx(0.8)
    benign_f1 = 2 * 0.8 * 1.0 / 1.8
    assert res["macro_f1"] == pytest.approx(benign_f1 / 3)
    assert res["balanced_accuracy"] == pytest.approx(1 / 3)


def test_auc_is_one_for_a_perfectly_separating_malignant_score():
    y_true = np.array([0, 1, 2, 1, 0, 2])
    proba = np.array(
        [
            [0.7, 0.2, 0.1],
            [0.1, 0.8, 0.1],
            [0.2, 0.1, 0.7],
            [0.3, 0.6, 0.1],
            [0.5, 0.3, 0.2],
            [0.45, 0.25, 0.3],
        ]
    )
    res = classification_metrics(y_true, proba, CLASSES)
    assert res["roc_auc_malignant_vs_rest"] == pytest.approx(1.0)
    curve = res["roc_curve"]
    assert curve["positive"] == "malignant"
    assert len(curve["fpr"]) == len(curve["tpr"]) >= 2
    assert curve["fpr"][0] == 0.0
    assert curve["tpr"][-1] == 1.0


def test_auc_is_one_half_for_constant_scores():
    y_true = [0, 1, 2, 1, 0, 2]
    res = classification_metrics(y_true, np.full((6, 3), 1 / 3), CLASSES)
    assert res["roc_auc_malignant_vs_rest"] == pytest.approx(0.5)


def test_auc_is_nan_when_only_one_side_is_present():
    res = classification_metrics([0, 2, 0], _proba_for([0, 2, 0]), CLASSES)
    assert math.isnan(res["roc_auc_malignant_vs_rest"])
    assert res["roc_curve"]["fpr"] == []
    assert res["roc_curve"]["tpr"] == []


def test_auc_key_follows_the_positive_class():
    res = classification_metrics([0, 1, 2], _proba_for([0, 1, 2]), CLASSES, positive="normal")
    assert res["roc_auc_normal_vs_rest"] == pytest.approx(1.0)
    assert "roc_auc_malignant_vs_rest" not in res


def test_classification_inputs_are_checked():
    proba = _proba_for([0, 1])
    with pytest.raises(ValueError, match="shape"):
        classification_metrics([0, 1], proba[:, :2], CLASSES)
    with pytest.raises(ValueError, match="positive class"):
        classification_metrics([0, 1], proba, CLASSES, positive="cancer")
    with pytest.raises(ValueError, match="sum to 1"):
        classification_metrics([0, 1], proba * 2, CLASSES)
    with pytest.raises(ValueError, match="outside"):
        classification_metrics([0, 3], proba, CLASSES)


# --- calibration --------------------------------------------------------------------------------


def test_ece_is_zero_when_confident_and_always_right():
    y = np.array([0, 1, 2, 1])
    proba = np.eye(3)[y]
    assert expected_calibration_error(y, proba) == 0.0
    assert classification_metrics(y, proba, CLASSES)["ece"] == 0.0
    assert classification_metrics(y, proba, CLASSES)["brier"] == 0.0


def test_ece_is_zero_when_80_percent_confident_and_80_percent_right():
    y_true = np.array([0] * 8 + [1] * 2)
    proba = _proba_for([0] * 10, top=0.8)
    assert expected_calibration_error(y_true, proba) == pytest.approx(0.0, abs=1e-12)


def test_ece_hand_computed_over_two_bins():
    # Bin (0.8, 0.9]: conf 0.9, acc 1/2 -> gap 0.4; bin (0.5, 0.6]: conf 0.55, acc 1 -> gap 0.45.
    y_true = np.array([0, 1, 0, 0])
    proba = np.array([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.55, 0.25, 0.2], [0.55, 0.2, 0.25]])
    assert expected_calibration_error(y_true, proba, n_bins=10) == pytest.approx(
        0.5 * 0.4 + 0.5 * 0.45
    )


def test_ece_bins_are_closed_on_the_right():
    # 0.7 shares the bin (0.6, 0.7] with 0.65: acc 1/2, conf 0.675 -> ECE 0.175.
    # Had 0.7 landed in (0.7, 0.8], ECE would be 0.5 * 0.3 + 0.5 * 0.65 = 0.475.
    y_true = np.array([0, 1])
    proba = np.array([[0.7, 0.2, 0.1], [0.65, 0.2, 0.15]])
    assert expected_calibration_error(y_true, proba) == pytest.approx(0.175)


def test_ece_with_one_bin_is_the_gap_of_the_means():
    y_true = np.array([0, 1, 0, 0])
    proba = np.array([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.55, 0.25, 0.2], [0.55, 0.2, 0.25]])
    assert expected_calibration_error(y_true, proba, n_bins=1) == pytest.approx(abs(0.75 - 0.725))


# --- connected components -----------------------------------------------------------------------


def _blobs() -> np.ndarray:
    mask = np.zeros((16, 16), dtype=bool)
    mask[1:5, 1:5] = True  # 16 px
    mask[10:12, 10:12] = True  # 4 px
    mask[14, 1] = True  # 1 px speck
    mask[8, 7] = mask[9, 8] = True  # 2 px, joined only diagonally
    return mask


def test_largest_component_keeps_only_the_biggest_blob():
    out = largest_component(_blobs())
    assert out.dtype == bool
    expected = np.zeros((16, 16), dtype=bool)
    expected[1:5, 1:5] = True
    np.testing.assert_array_equal(out, expected)


def test_remove_small_components_drops_specks_with_8_connectivity():
    mask = _blobs()
    out = remove_small_components(mask, min_area_px=2)
    assert out.dtype == bool
    assert not out[14, 1]  # the 1 px speck is gone
    assert out[8, 7]
    assert out[9, 8]  # diagonal pair is one 2 px blob under 8-connectivity
    assert out.sum() == 16 + 4 + 2
    only_big = remove_small_components(mask, min_area_px=5)
    np.testing.assert_array_equal(only_big, largest_component(mask))


@pytest.mark.parametrize("fn", [largest_component, lambda m: remove_small_components(m, 3)])
def test_empty_mask_in_empty_mask_out(fn):
    out = fn(np.zeros((5, 7), dtype=bool))
    assert out.dtype == bool
    assert out.shape == (5, 7)
    assert not out.any()


@pytest.mark.parametrize("largest_only", [True, False])
def test_keep_components_matches_a_brute_force_clean_up(largest_only):
    from scipy import ndimage

    rng = np.random.default_rng(3)
    for trial in range(40):
        mask = rng.random((24, 31)) < rng.uniform(0.05, 0.6)
        min_px = int(rng.integers(0, 12))
        # Brute force: each 8-connected blob by itself, in label (row-major) order.
        labelled, n = ndimage.label(mask, structure=np.ones((3, 3)))
        blobs = [labelled == i for i in range(1, n + 1)]
        kept = [b for b in blobs if b.sum() >= max(min_px, 1)]
        if largest_only and kept:
            kept = [max(kept, key=lambda b: b.sum())]  # max() keeps the first on a tie
        expected = np.logical_or.reduce(kept) if kept else np.zeros_like(mask)
        got = keep_components(mask, min_px, largest_only)
        np.testing.assert_array_equal(got, expected, err_msg=f"trial {trial}, min_px {min_px}")
    # Ties go to the first blob in row-major order.
    tie = np.zeros((6, 6), dtype=bool)
    tie[0, 4:6] = tie[4, 0:2] = True
    assert keep_components(tie, 1, True)[0, 4]
    assert not keep_components(tie, 1, True)[4, 0]
    # A largest blob below the minimum area leaves nothing.
    assert not keep_components(tie, 3, True).any()


# --- to_jsonable --------------------------------------------------------------------------------


def test_to_jsonable_makes_strict_json_from_numpy_and_nan():
    obj = {
        "n": np.int64(3),
        "x": np.float32(0.5),
        "nan": float("nan"),
        "np_nan": np.float64("nan"),
        "inf": float("inf"),
        "flag": np.bool_(True),
        "arr": np.array([1.0, np.nan]),
        "nested": [(np.int32(1), {"y": np.nan})],
    }
    out = to_jsonable(obj)
    assert out["n"] == 3
    assert type(out["n"]) is int
    assert out["x"] == 0.5
    assert type(out["x"]) is float
    assert out["nan"] is None
    assert out["np_nan"] is None
    assert out["inf"] is None
    assert out["flag"] is True
    assert out["arr"] == [1.0, None]
    assert out["nested"] == [[1, {"y": None}]]
    json.dumps(out, allow_nan=False)


def test_full_reports_serialise_with_allow_nan_false():
    seg = segmentation_metrics(*_segmentation_set())
    cls = classification_metrics([0, 2, 0], _proba_for([0, 2, 0]), CLASSES)  # NaN AUC
    with pytest.raises(ValueError):
        json.dumps(seg, allow_nan=False)
    text = json.dumps(to_jsonable({"segmentation": seg, "classification": cls}), allow_nan=False)
    back = json.loads(text)
    assert back["segmentation"]["per_image"][2]["dice"] is None
    assert back["classification"]["roc_auc_malignant_vs_rest"] is None
