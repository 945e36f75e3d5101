"""bench/sweep_normal_veto.py: the classifier's veto on the U-Net's lesion."""

from __future__ import annotations

import numpy as np
import pytest

from bench.sweep_normal_veto import (
    call_figures,
    normal_call,
    p_normal_where_found,
    sweep,
    vetoed_masks,
)


def _chain():
    """A lesion image found whole (P(normal) 0.2), a lesion image found whole but read as
    likely normal (0.75), and a normal image with a false lesion (0.85)."""
    truth = [np.zeros((10, 10), bool) for _ in range(3)]
    truth[0][:4, :4] = truth[1][5:9, 5:9] = True
    found = [truth[0].copy(), truth[1].copy(), np.zeros((10, 10), bool)]
    found[2][2:6, 2:6] = True
    return truth, found, ["benign", "malignant", "normal"], np.array([0.2, 0.75, 0.85])


def test_a_veto_empties_the_masks_at_or_above_it_and_keeps_the_rest():
    _, found, _, p_normal = _chain()
    kept = vetoed_masks(found, p_normal, 0.8)
    assert kept[0] is found[0]
    assert kept[1] is found[1]
    assert not kept[2].any()
    assert all(a is b for a, b in zip(vetoed_masks(found, p_normal, 1.0), found, strict=True))


def test_the_veto_trades_false_lesions_for_lesions_not_found():
    truth, found, labels, p_normal = _chain()
    by_veto = {r["veto"]: r for r in sweep(truth, labels, found, p_normal)}
    assert by_veto[1.0]["normal_false_lesion_rate"] == 1.0
    assert by_veto[1.0]["lesion_not_found"] == 0.0
    assert by_veto[0.8]["normal_false_lesion_rate"] == 0.0
    assert by_veto[0.8]["lesion_dice_mean"] == pytest.approx(1.0)
    assert by_veto[0.7]["lesion_not_found"] == 0.5  # the second lesion is vetoed too
    assert by_veto[0.7]["lesion_dice_mean"] == pytest.approx(0.5)
    summary = p_normal_where_found(found, p_normal, labels)
    assert summary["normal"]["n_found"] == 1
    assert summary["normal"]["quantiles"][0.5] == pytest.approx(0.85)


def test_normal_call_calls_normal_only_at_the_level_and_else_the_likelier_lesion():
    classes = ["benign", "malignant", "normal"]
    proba = np.array([[0.3, 0.3, 0.4], [0.1, 0.3, 0.6], [0.05, 0.05, 0.9]])
    assert normal_call(proba, classes, 1.0).tolist() == [2, 2, 2]  # the argmax
    assert normal_call(proba, classes, 0.5).tolist() == [0, 2, 2]
    assert normal_call(proba, classes, 0.95).tolist() == [0, 1, 0]


def test_call_figures_trade_lesions_called_normal_for_normal_images_called_a_lesion():
    classes = ["benign", "malignant", "normal"]
    labels = ["benign", "malignant", "normal", "normal"]
    proba = np.array([[0.3, 0.2, 0.5], [0.1, 0.6, 0.3], [0.1, 0.1, 0.8], [0.35, 0.1, 0.55]])
    today = call_figures(proba, labels, classes, 1.0)
    assert today["lesion_called_normal"] == 0.5
    assert today["normal_called_lesion"] == 0.0
    assert today["accuracy"] == 0.75
    strict = call_figures(proba, labels, classes, 0.6)
    assert strict["lesion_called_normal"] == 0.0
    assert strict["normal_called_lesion"] == 0.5
    assert strict["accuracy"] == 0.75
    # benign F1 2/3, malignant 1, normal 2/3
    assert strict["macro_f1"] == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)


def test_the_sweep_gives_call_figures_per_level_when_given_the_probabilities():
    truth, found, labels, p_normal = _chain()
    proba = np.stack([(1 - p_normal) * 0.6, (1 - p_normal) * 0.4, p_normal], axis=1)
    rows = sweep(truth, labels, found, p_normal, proba, ["benign", "malignant", "normal"])
    by_veto = {r["veto"]: r for r in rows}
    assert by_veto[1.0]["call"]["lesion_called_normal"] == 0.5  # argmax: 0.75 is normal
    assert by_veto[0.8]["call"]["lesion_called_normal"] == 0.0
    assert by_veto[0.8]["call"]["normal_called_lesion"] == 0.0
    assert "call" not in sweep(truth, labels, found, p_normal)[0]
