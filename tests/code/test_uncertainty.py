"""Bootstrap intervals over near-duplicate groups, figures per lesion size and class, the
reliability bins and paired differences, on made-up per-image predictions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from busi.data.preprocess import CLASSES
from busi.data.synthetic import synthetic_predictions
from busi.model.metrics import classification_metrics, segmentation_metrics
from busi.model.uncertainty import (
    BootstrapConfig,
    figures_with_intervals,
    paired_differences,
    per_lesion_size,
    probability_at_least,
    reliability_bins,
    weighted_figures,
)
from components.evaluate_models import EvaluateConfig, interval_metrics, uncertainty_report

BOOT = BootstrapConfig(samples=500, seed=1)


def test_point_figures_equal_the_plain_metrics():
    table = synthetic_predictions(n_groups=45, accuracy=0.7, seed=3)
    # Scores that are not all ties, so the AUC means something.
    rng = np.random.default_rng(0)
    raw = table[[f"prob_{c}" for c in CLASSES]].to_numpy() + rng.uniform(0, 0.3, (len(table), 3))
    table[[f"prob_{c}" for c in CLASSES]] = raw / raw.sum(axis=1, keepdims=True)
    point = {k: v[0] for k, v in weighted_figures(table, np.ones((1, len(table)))).items()}
    y = table["class"].map(CLASSES.index).to_numpy()
    proba = table[[f"prob_{c}" for c in CLASSES]].to_numpy()
    cls = classification_metrics(y, proba, list(CLASSES))
    assert point["macro_f1"] == pytest.approx(cls["macro_f1"])
    assert point["accuracy"] == pytest.approx(cls["accuracy"])
    assert point["malignant_recall"] == pytest.approx(cls["per_class"]["malignant"]["recall"])
    assert point["malignant_auc"] == pytest.approx(cls["roc_auc_malignant_vs_rest"])
    assert point["ece"] == pytest.approx(cls["ece"])
    lesion = table[(table["tp"] + table["fn"]) > 0]
    assert point["lesion_dice"] == pytest.approx(lesion["dice"].mean())
    normal = table[table["class"] == "normal"]
    assert point["normal_false_lesion_rate"] == pytest.approx(
        (normal["pred_area_fraction"] > 0).mean()
    )


def test_segmentation_counts_match_segmentation_metrics():
    true = [np.zeros((10, 10), bool) for _ in range(3)]
    pred = [np.zeros((10, 10), bool) for _ in range(3)]
    true[0][2:6, 2:6] = True
    pred[0][3:7, 3:7] = True
    pred[2][0, 0] = True  # a false lesion on a normal image
    labels = ["benign", "benign", "normal"]
    seg = segmentation_metrics(true, pred, labels)
    from components.evaluate_models import per_image_table

    proba = np.eye(3)[[0, 0, 2]]
    table = per_image_table(["a", "b", "c"], ["a", "b", "c"], [0, 0, 2], proba, seg["per_image"])
    point = weighted_figures(table, np.ones((1, 3)))
    assert point["lesion_dice"][0] == pytest.approx(seg["dice_mean"])
    assert point["normal_false_lesion_rate"][0] == pytest.approx(1.0)


def test_interval_holds_the_value_and_groups_are_the_unit():
    table = synthetic_predictions(n_groups=60, seed=2)
    ci = figures_with_intervals(table, BOOT)
    for name in ("macro_f1", "accuracy", "lesion_dice", "malignant_recall"):
        entry = ci[name]
        assert entry["low"] <= entry["value"] <= entry["high"], name
        assert entry["high"] - entry["low"] > 0.02, name
    # Three near-identical copies of every image are one piece of evidence each: the same
    # interval as one copy. Counted as independent images they would narrow it wrongly.
    tripled = synthetic_predictions(n_groups=60, seed=2, group_size=3)
    same = figures_with_intervals(tripled, BOOT)
    assert same["macro_f1"]["low"] == pytest.approx(ci["macro_f1"]["low"])
    assert same["macro_f1"]["high"] == pytest.approx(ci["macro_f1"]["high"])
    independent = tripled.assign(dup_group=tripled["id"])
    narrow = figures_with_intervals(independent, BOOT)["macro_f1"]
    assert narrow["high"] - narrow["low"] < 0.75 * (ci["macro_f1"]["high"] - ci["macro_f1"]["low"])


def test_per_lesion_size_counts_the_missed_lesions():
    table = pd.DataFrame(
        synthetic_predictions(n_groups=6).to_dict("records")[:1]  # one benign row to copy
        * 4
    )
    table["id"] = ["s1", "s2", "m1", "l1"]
    table["dup_group"] = table["id"]
    table["true_area_fraction"] = [0.004, 0.008, 0.03, 0.2]
    table["tp"] = [0, 30, 200, 1500]
    table["fn"] = [40, 50, 100, 500]
    table["dice"] = [0.0, 0.5, 0.7, 0.8]
    sizes = per_lesion_size(table, BOOT)
    assert sizes["small_lt1pct"]["n_images"] == 2
    assert sizes["small_lt1pct"]["n_missed"] == 1
    assert sizes["small_lt1pct"]["lesion_dice"]["value"] == pytest.approx(0.25)
    assert sizes["medium_1to5pct"]["n_images"] == 1
    assert sizes["medium_1to5pct"]["n_missed"] == 0
    assert sizes["large_ge5pct"]["n_images"] == 1


def test_report_has_per_class_sizes_calibration_and_flat_metrics():
    table = synthetic_predictions(n_groups=30, seed=5)
    report = uncertainty_report(table, EvaluateConfig(bootstrap_samples=200))
    assert set(report["per_class"]) == set(CLASSES)
    assert report["per_class"]["malignant"]["n_images"] == 10
    assert set(report["per_lesion_size"]) == {"small_lt1pct", "medium_1to5pct", "large_ge5pct"}
    assert sum(b["n_images"] for b in report["calibration"]["bins"]) == len(table)
    flat = interval_metrics(report)
    assert flat["macro_f1_ci_low"] <= flat["macro_f1_ci_high"]
    assert "class.malignant.recall" in flat
    assert "size.small_lt1pct.n_missed" in flat


def test_reliability_bins_hold_confidence_and_accuracy():
    table = synthetic_predictions(n_groups=30, accuracy=0.5, seed=4)
    bins = reliability_bins(table, 10)
    full = [b for b in bins if b["n_images"]]
    assert len(full) == 1
    assert full[0]["low"] == pytest.approx(0.7)  # all at confidence 0.8
    assert full[0]["confidence"] == pytest.approx(0.8)
    assert 0.2 < full[0]["accuracy"] < 0.8


def test_paired_difference_of_a_model_with_itself_is_zero():
    table = synthetic_predictions(n_groups=60, seed=6)
    diff = paired_differences(table, table, ["macro_f1", "malignant_recall"], BOOT)
    assert diff["macro_f1"]["value"] == 0.0
    assert probability_at_least(diff["macro_f1"]["draws"], 0.0, strict=True) == 0.0
    assert probability_at_least(diff["malignant_recall"]["draws"], 0.0) == 1.0


def test_paired_difference_needs_common_images():
    a = synthetic_predictions(n_groups=10, seed=1)
    b = a.assign(id=a["id"] + "-other")
    with pytest.raises(ValueError, match="no common image"):
        paired_differences(a, b, ["macro_f1"], BOOT)
    with pytest.raises(ValueError, match="lacks the columns"):
        paired_differences(a.drop(columns=["dup_group"]), a, ["macro_f1"], BOOT)
