"""stress_test_models: the shifts are seeded pure functions that keep the lesion, and the
step scores the smoke chain under each of them, as evaluate_models scores it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from busi.data.preprocess import CLASSES
from busi.data.synthetic import synth_pair
from busi.model.metrics import robustness_figures
from components.stress_test_models import StressConfig, apply_shift, crop_view, shifts

CFG = StressConfig()


@pytest.fixture(scope="module")
def pairs():
    rng = np.random.default_rng(5)
    out = []
    for label in ("benign", "malignant", "normal") * 2:
        image, masks = synth_pair(rng, label, 90, 120)
        out.append((image, masks[0] if masks else np.zeros(image.shape, bool), label))
    return out


def test_every_shift_is_seeded_and_keeps_types(pairs):
    images, masks = [p[0] for p in pairs], [p[1] for p in pairs]
    for name, shift in shifts(CFG).items():
        a_img, a_msk = apply_shift(name, shift, images, masks, seed=0)
        b_img, _ = apply_shift(name, shift, images, masks, seed=0)
        for a, b, m in zip(a_img, b_img, a_msk, strict=True):
            assert a.dtype == np.uint8, name
            assert m.dtype == bool, name
            assert a.shape == m.shape, name
            assert np.array_equal(a, b), f"{name} is not deterministic"
        changed = any(not np.array_equal(a, i) for a, i in zip(a_img, images, strict=True))
        assert changed, f"{name} changed nothing"
    assert len(shifts(CFG)) == 12


def test_crops_keep_the_whole_lesion_and_portrait_ones_stand_up(pairs):
    for seed in range(20):
        for image, mask, _ in pairs:
            rng = np.random.default_rng(seed)
            img, msk = crop_view(image, mask, rng, CFG.crop_area)
            assert msk.sum() == mask.sum()  # nothing of the lesion cut away
            share = img.size / image.size
            assert 0.3 <= share <= 0.75 or mask.any()
            img, msk = crop_view(image, mask, rng, CFG.crop_area, CFG.portrait_aspect)
            assert msk.sum() == mask.sum()
            if not mask.any():
                assert img.shape[0] > img.shape[1]


def test_rescale_changes_the_pixel_size_of_image_and_mask(pairs):
    image, mask, _ = pairs[0]
    fns = shifts(CFG)
    small, small_mask = fns["scale_0.5"](image, mask, np.random.default_rng(0))
    assert small.shape == (45, 60)
    assert small_mask.shape == (45, 60)
    assert abs(small_mask.mean() - mask.mean()) < 0.02


def test_robustness_figures_on_a_known_answer():
    full = np.ones((4, 4), bool)
    empty = np.zeros((4, 4), bool)
    true = [full, full, full, empty]
    pred = [full, empty, full, full]
    labels = ["benign", "malignant", "malignant", "normal"]
    proba = np.array([[0.8, 0.1, 0.1], [0.1, 0.2, 0.7], [0.1, 0.8, 0.1], [0.2, 0.3, 0.5]])
    f = robustness_figures(true, labels, pred, proba, CLASSES)
    assert f["lesion_dice_mean"] == pytest.approx(2 / 3)
    assert f["lesion_not_found"] == pytest.approx(1 / 3)
    assert f["lesion_called_normal"] == pytest.approx(1 / 3)
    assert f["malignant_recall"] == 0.5
    assert f["normal_false_lesion_rate"] == 1.0
    assert f["benign_malignant_auc"] == 1.0  # both malignant above the benign one
    none = robustness_figures(true[:1], labels[:1], pred[:1], proba[:1], CLASSES)
    assert none["malignant_auc"] is None
    assert none["normal_false_lesion_rate"] is None


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="crop_area"):
        StressConfig(crop_area=(0.8, 0.4))
    with pytest.raises(ValueError, match="> 0"):
        StressConfig(scales=(0.0,))


@pytest.mark.slow
def test_the_stage_ran_in_the_smoke_pipeline_and_dvc_shows_its_metrics(smoke_run):
    import subprocess
    import sys

    ws = smoke_run["workspace"]
    report = json.loads((ws / "metrics" / "stress_test.json").read_text())
    assert report["n_shifts"] == len(report["shifts"]) == 12
    base = report["unshifted"]
    evaluation = smoke_run["evaluation"]["headline"]
    # the same chain as evaluate_models: the unshifted figures are its figures
    assert base["lesion_dice_mean"] == pytest.approx(evaluation["lesion_dice"])
    assert base["malignant_auc"] == pytest.approx(evaluation["malignant_auc"])
    gain = report["shifts"]["gain_1.4"]
    assert gain["lesion_dice_mean_drop"] == pytest.approx(
        base["lesion_dice_mean"] - gain["lesion_dice_mean"]
    )
    shown = subprocess.run(
        [sys.executable, "-m", "dvc", "metrics", "show", "--json"],
        cwd=ws,
        env=smoke_run["env"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "stress_test.json" in shown.stdout
    assert "lesion_dice_mean_drop" in shown.stdout
