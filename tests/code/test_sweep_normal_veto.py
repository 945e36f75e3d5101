"""bench/sweep_normal_veto.py: the classifier's veto on the U-Net's lesion."""

from __future__ import annotations

import numpy as np
import pytest

from bench.sweep_normal_veto import p_normal_where_found, sweep, vetoed_masks


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
