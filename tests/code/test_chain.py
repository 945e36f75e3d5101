"""The inference chain: mask cleaning, ROI geometry, crops and the classifier input."""

from __future__ import annotations

import numpy as np
import pytest

from busi.model.chain import (
    RoiConfig,
    classifier_input,
    clean_mask,
    crop_roi,
    peak_box,
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
    assert crop.min() == 200
    assert mask_crop.all()


def test_clean_mask_drops_specks_and_keeps_the_largest():
    prob = np.zeros((100, 100), dtype=np.float32)
    prob[10:30, 10:30] = 0.9  # 400 px
    prob[60:70, 60:70] = 0.8  # 100 px
    prob[90, 90] = 0.99  # 1 px speck
    cfg = RoiConfig(threshold=0.5, min_area=0.005, keep="all")  # 50 px minimum
    kept = clean_mask(prob, cfg)
    assert kept.sum() == 500
    assert not kept[90, 90]
    largest = clean_mask(prob, RoiConfig(threshold=0.5, min_area=0.005, keep="largest"))
    assert largest.sum() == 400
    assert not clean_mask(prob * 0.5, cfg).any()  # below the threshold: no lesion


def test_shape_features_and_classifier_input():
    feats = shape_features(_mask())
    assert feats["aspect"] == pytest.approx(0.5)
    assert feats["extent"] == pytest.approx(1.0)
    assert shape_features(np.zeros((5, 5), bool))["area"] == 0.0
    images = [np.full((100, 200), 255, np.uint8), np.zeros((80, 60), np.uint8)]
    masks = [_mask(), np.zeros((80, 60), bool)]
    crops, mask_crops, boxes, _ = rois_from_masks(images, masks, RoiConfig(crop_size=16))
    assert crops.shape == (2, 16, 16)
    assert boxes[1].tolist() == [0, 0, 80, 60]
    x = classifier_input(crops, mask_crops)
    assert x.shape == (2, 16, 16, 2)
    assert x.dtype == np.float32
    assert x[0, ..., 0].max() == pytest.approx(1.0)
    assert x[1, ..., 1].max() == 0.0


def test_probability_channel_is_the_probability_over_the_mask_box():
    image = np.arange(100 * 200, dtype=np.uint32).reshape(100, 200).astype(np.uint8)
    mask = _mask()  # rows 40-59, cols 50-89
    prob = np.zeros((100, 200), np.float32)
    prob[40:60, 50:90] = 0.9
    prob[45:50, 60:70] = 0.3  # a dip the threshold would cut: the channel keeps it
    faint = np.zeros((100, 200), np.float32)
    faint[10:20, 10:20] = 0.4  # a lesion below the threshold: no mask, whole image
    cfg = RoiConfig(margin=0.0, crop_size=20, mask_channel="probability")
    crops, channel, boxes, _ = rois_from_masks(
        [image, image], [mask, np.zeros_like(mask)], cfg, probs=[prob, faint]
    )
    assert boxes.tolist() == [[40, 50, 60, 90], [0, 0, 100, 200]]
    assert channel.dtype == np.float32
    assert channel.shape == (2, 20, 20)
    plain = RoiConfig(margin=0.0, crop_size=20)
    binary_crops, binary, _, _ = rois_from_masks([image], [mask], plain)
    np.testing.assert_array_equal(crops[:1], binary_crops)  # same box, same image crop
    assert binary[0].min() == 1  # the mask fills its own box ...
    assert channel[0].max() == pytest.approx(0.9)
    assert channel[0].min() < 0.5  # ... the dip shows
    # The whole-image crop of the missed lesion still carries its faint probability.
    assert 0.1 < channel[1].max() <= 0.4
    assert channel[1][10:, 10:].max() < 0.05
    with pytest.raises(ValueError, match="probs"):
        rois_from_masks([image], [mask], cfg)


def test_peak_box_is_a_square_around_the_highest_probability_kept_inside():
    prob = np.zeros((100, 200), np.float32)
    prob[30, 150] = 0.4
    assert peak_box(prob, 0.2) == (20, 140, 40, 160)  # 20 px: 0.2 of the 100 rows
    corner = np.zeros((100, 200), np.float32)
    corner[2, 198] = 0.3
    assert peak_box(corner, 0.2) == (0, 180, 20, 200)
    assert peak_box(np.zeros((100, 200), np.float32), 0.5) == (25, 75, 75, 125)  # centred
    assert peak_box(prob, 1.0) == (0, 100, 100, 200)


def test_an_empty_mask_crops_at_the_peak_when_asked():
    image = np.zeros((100, 200), np.uint8)
    image[25:35, 145:155] = 200  # the missed lesion under the peak
    faint = np.zeros((100, 200), np.float32)
    faint[28:32, 148:152] = 0.3  # below the threshold: no mask
    prob = np.zeros((100, 200), np.float32)
    prob[40:60, 50:90] = 0.9
    cfg = RoiConfig(
        margin=0.0, crop_size=20, mask_channel="probability", empty_crop="peak", peak_window=0.2
    )
    crops, channel, boxes, _ = rois_from_masks(
        [image, image], [np.zeros((100, 200), bool), _mask()], cfg, probs=[faint, prob]
    )
    # the square around the peak's first pixel (28, 148) where nothing was found; the
    # mask's box where a lesion was
    assert boxes.tolist() == [[18, 138, 38, 158], [40, 50, 60, 90]]
    assert crops[0].max() == 200  # the classifier sees the lesion, not the whole image
    assert channel[0].max() == pytest.approx(0.3, abs=0.05)
    binary = RoiConfig(crop_size=20, empty_crop="peak")
    with pytest.raises(ValueError, match="empty_crop 'peak' needs the probability maps"):
        rois_from_masks([image], [np.zeros((100, 200), bool)], binary)


def test_bad_roi_settings_are_refused():
    with pytest.raises(ValueError, match="empty_crop"):
        RoiConfig(empty_crop="centre")
    with pytest.raises(ValueError, match="peak_window"):
        RoiConfig(peak_window=0.0)
    with pytest.raises(ValueError, match="margin"):
        RoiConfig(margin=-0.1)
    with pytest.raises(ValueError, match="mask_channel"):
        RoiConfig(mask_channel="soft")
    with pytest.raises(ValueError, match="context"):
        RoiConfig(context="crop")
    with pytest.raises(ValueError):
        RoiConfig(keep="biggest")
    with pytest.raises(ValueError):
        RoiConfig(threshold=1.5)


def test_crop_settings_written_before_the_channel_existed_mean_binary(tmp_path):
    import json

    from busi.errors import BusiError
    from busi.model.loading import chain_settings
    from components.train_classifier import load_rois

    old = {"threshold": 0.5, "min_area": 0.002, "keep": "largest", "margin": 0.15}
    (tmp_path / "summary.json").write_text(json.dumps({"config": old}))
    assert chain_settings(tmp_path / "summary.json").roi.mask_channel == "binary"
    # Crops written by an older crop-rois have no channel: say so rather than guess.
    np.savez(tmp_path / "train.npz", crops=np.zeros((1, 4, 4)), masks=np.zeros((1, 4, 4)))
    with pytest.raises(BusiError, match="older crop-rois"):
        load_rois(tmp_path / "train.npz")


def test_crop_rois_stores_the_probability_channel():
    from busi.model.chain import CropConfig
    from components.crop_rois import rois_for_split

    images = [np.full((40, 60), 120, np.uint8), np.full((50, 50), 80, np.uint8)]
    truth = [np.zeros((40, 60), bool), np.zeros((50, 50), bool)]
    truth[0][10:20, 20:40] = True

    def predict(imgs):
        probs = [np.zeros(i.shape, np.float32) for i in imgs]
        probs[0][10:20, 20:40] = 0.8
        probs[1][5:10, 5:10] = 0.3  # under the threshold: no lesion, a faint trace
        return probs

    cfg = CropConfig(crop_size=16, margin=0.0, mask_channel="probability", train_masks="both")
    out = rois_for_split(images, truth, [0, 2], ["a", "b"], predict, cfg, "train")
    assert out["channel"].shape == (4, 16, 16)
    assert out["channel"].dtype == np.float16
    assert out["mask_source"].tolist() == ["predicted"] * 2 + ["ground_truth"] * 2
    assert float(out["channel"][0].max()) == pytest.approx(0.8, abs=1e-3)
    assert 0 < float(out["channel"][1].max()) <= 0.3
    assert out["area"][1] == 0  # whole image
    # The ground-truth crop's channel is still the U-Net's probability over its box.
    assert float(out["channel"][2].min()) == pytest.approx(0.8, abs=1e-3)


def _faint_lesions_and_noisy_normals():
    """Four lesion images whose lesion the U-Net sees at 0.35 (one at 0.55), and four
    normal images with a blob of 0.25 on two of them."""
    probs, masks, labels = [], [], []
    for i in range(4):
        prob = np.zeros((40, 40), np.float32)
        prob[10:20, 10:20] = 0.55 if i == 0 else 0.35
        mask = np.zeros((40, 40), bool)
        mask[10:20, 10:20] = True
        probs.append(prob)
        masks.append(mask)
        labels.append("benign")
    for i in range(4):
        prob = np.zeros((40, 40), np.float32)
        if i < 2:
            prob[5:15, 25:35] = 0.25
        probs.append(prob)
        masks.append(np.zeros((40, 40), bool))
        labels.append("normal")
    return probs, masks, labels


def test_the_val_threshold_finds_the_most_lesions_within_the_false_lesion_limit():
    from busi.model.chain import CropConfig
    from components.crop_rois import choose_threshold

    probs, masks, labels = _faint_lesions_and_noisy_normals()
    cfg = CropConfig(threshold_choice="val", threshold_grid=(0.2, 0.3, 0.5), min_area=0.01)
    chosen, rows = choose_threshold(probs, masks, labels, cfg)
    by_t = {r["threshold"]: r for r in rows}
    assert by_t[0.5]["lesions_missed"] == 0.75
    assert by_t[0.3]["lesions_missed"] == 0.0
    assert by_t[0.2]["normal_false_lesion_rate"] == 0.5
    assert chosen == 0.3  # 0.2 finds them all too, but calls half the normal images lesions
    strict = CropConfig(
        threshold_choice="val", threshold_grid=(0.2,), max_val_false_lesion_rate=0.0
    )
    assert choose_threshold(probs, masks, labels, strict)[0] == 0.2  # the only candidate


def test_a_bad_threshold_choice_is_refused():
    from busi.model.chain import CropConfig

    with pytest.raises(ValueError, match="threshold_choice"):
        CropConfig(threshold_choice="test")
    with pytest.raises(ValueError, match="threshold_grid"):
        CropConfig(threshold_grid=(0.0, 1.0))


def test_crop_rois_records_the_threshold_it_chose_on_val(tmp_path):
    import json
    from types import SimpleNamespace

    import pandas as pd

    from busi.model.chain import CropConfig
    from components.crop_rois import _crop_all
    from tests.conftest import dark_lesion_splits

    rows = dark_lesion_splits(tmp_path)

    class FaintUnet:  # sees a dark lesion, but only at 0.35
        input_shape = (None, 32, 32, 1)

        def predict(self, batch, batch_size=32, verbose=0):
            return np.where(batch < 0.25, 0.35, 0.0).astype(np.float32)

    args = SimpleNamespace(data_dir=tmp_path, out=tmp_path / "rois")
    cfg = CropConfig(crop_size=16, tta_flip=False, threshold_choice="val", min_area=0.01)
    summary = _crop_all(pd.DataFrame(rows), FaintUnet(), args, cfg)
    assert summary["config"]["threshold"] == 0.3  # the highest that finds the lesion
    written = json.loads((tmp_path / "rois" / "summary.json").read_text())
    assert written["config"]["threshold"] == 0.3
    assert [r["threshold"] for r in written["threshold_search"]] == [0.2, 0.3, 0.4, 0.5, 0.6]
    assert summary["splits"]["test"]["no_lesion_found_per_class"]["benign"] == 0


def test_context_adds_the_whole_image_and_probability_map_as_channels_3_and_4():
    from busi.model.chain import CropConfig, context_maps
    from components.crop_rois import rois_for_split

    image = np.zeros((40, 80), np.uint8)
    image[:, 40:] = 200  # right half bright
    prob = np.zeros((40, 80), np.float32)
    prob[10:30, 50:70] = 0.9
    whole, maps = context_maps([image], [prob], 16)
    assert whole.shape == (1, 16, 16)
    assert whole.dtype == np.uint8
    assert whole[0, :, :6].max() == 0  # the whole width, squeezed to 16 columns
    assert whole[0, :, 10:].min() == 200
    assert maps.shape == (1, 16, 16)
    assert float(maps.max()) == pytest.approx(0.9, abs=1e-3)
    assert maps[0, :, :8].max() == 0

    crops = np.full((1, 16, 16), 51, np.uint8)
    channel = np.zeros((1, 16, 16), np.float32)
    x = classifier_input(crops, channel, (whole, maps))
    assert x.shape == (1, 16, 16, 4)
    np.testing.assert_allclose(x[..., 0], 0.2)
    np.testing.assert_allclose(x[..., 2], whole / 255.0)
    np.testing.assert_allclose(x[..., 3], maps)
    assert classifier_input(crops, channel).shape == (1, 16, 16, 2)

    cfg = CropConfig(crop_size=16, mask_channel="probability", context="image")
    out = rois_for_split([image], [prob > 0.5], [0], ["a"], lambda imgs: [prob], cfg, "train")
    np.testing.assert_array_equal(out["context_image"], whole)
    np.testing.assert_allclose(out["context_prob"], maps, atol=1e-3)
    plain = rois_for_split(
        [image], [prob > 0.5], [0], ["a"], lambda imgs: [prob], CropConfig(crop_size=16), "val"
    )
    assert "context_image" not in plain


def test_the_chain_feeds_the_context_to_a_classifier_trained_with_it():
    from busi.model.chain import predict_chain

    class Unet:
        input_shape = (None, 16, 16, 1)

        def predict(self, batch, batch_size=32, verbose=0):
            prob = np.zeros_like(batch)
            prob[:, 4:8, 4:8] = 0.9
            return prob

    class Classifier:
        def predict(self, x, verbose=0):
            self.seen = x
            return np.tile([[0.2, 0.3, 0.5]], (len(x), 1)).astype(np.float32)

    images = [np.full((30, 40), 90, np.uint8), np.full((20, 20), 30, np.uint8)]
    for context, channels in (("none", 2), ("image", 4)):
        classifier = Classifier()
        roi = RoiConfig(crop_size=8, mask_channel="probability", context=context)
        result = predict_chain(images, Unet(), classifier, roi, tta_flip=False)
        assert classifier.seen.shape == (2, 8, 8, channels)
        assert result.proba.shape == (2, 3)
    np.testing.assert_allclose(classifier.seen[1, ..., 2], 30 / 255, atol=1e-6)
    assert classifier.seen[0, ..., 3].max() > 0.5  # the U-Net's lesion, resized twice
    assert classifier.seen[0, 7, 7, 3] == 0


def test_the_classifier_s_veto_empties_the_lesion_of_an_image_it_reads_as_normal():
    from busi.model.chain import CropConfig, predict_chain, veto_masks

    class Unet:
        input_shape = (None, 16, 16, 1)

        def predict(self, batch, batch_size=32, verbose=0):
            prob = np.zeros_like(batch)
            prob[:, 4:8, 4:8] = 0.9  # a lesion on every image
            return prob

    class Classifier:
        def predict(self, x, verbose=0):
            # P(normal) 0.1 for the first image, 0.6 for the second (CLASSES order)
            return np.array([[0.6, 0.3, 0.1], [0.3, 0.1, 0.6]], np.float32)

    images = [np.full((30, 40), 90, np.uint8), np.full((20, 20), 30, np.uint8)]
    plain = predict_chain(images, Unet(), Classifier(), RoiConfig(crop_size=8), tta_flip=False)
    assert all(m.any() for m in plain.masks)  # no veto by default
    for veto, found in ((0.7, [True, True]), (0.6, [True, False]), (0.05, [False, False])):
        roi = RoiConfig(crop_size=8, normal_veto=veto)
        result = predict_chain(images, Unet(), Classifier(), roi, tta_flip=False)
        assert [bool(m.any()) for m in result.masks] == found
        # the class, the box and the crop are the chain's without the veto
        np.testing.assert_array_equal(result.proba, plain.proba)
        np.testing.assert_array_equal(result.boxes, plain.boxes)
        np.testing.assert_array_equal(result.crops, plain.crops)
        assert all(m.shape == img.shape for m, img in zip(result.masks, images, strict=True))
    masks = [np.ones((2, 2), bool)]
    assert veto_masks(masks, np.array([[0.0, 0.0, 1.0]]), 1.0) is masks  # 1.0: never
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="normal_veto"):
            RoiConfig(normal_veto=bad)
    assert CropConfig(normal_veto=0.5).roi.normal_veto == 0.5
