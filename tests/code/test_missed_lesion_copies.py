"""crop_rois.missed_lesions: train lesion images given one more example made as the chain
makes it when the U-Net finds nothing (a faded map, no mask, the peak crop, their class)."""

from __future__ import annotations

import numpy as np
import pytest

from busi.data.preprocess import CLASSES
from busi.model.chain import CropConfig
from components.crop_rois import missed_copy, rois_for_split

BENIGN, MALIGNANT, NORMAL = (CLASSES.index(c) for c in ("benign", "malignant", "normal"))


def _split(n_lesion: int = 6, n_normal: int = 3):
    """Lesion images whose lesion the U-Net finds at 0.9 (a 10 x 10 square at a place of
    its own), normal images with a faint trace at 0.3."""
    images, masks, labels, ids, probs = [], [], [], [], []
    for i in range(n_lesion + n_normal):
        image = np.full((60, 80), 60 + i, np.uint8)
        prob = np.zeros((60, 80), np.float32)
        mask = np.zeros((60, 80), bool)
        if i < n_lesion:
            top, left = 5 + 5 * i, 10 + 8 * i
            image[top : top + 10, left : left + 10] = 200
            prob[top : top + 10, left : left + 10] = 0.9
            mask[top : top + 10, left : left + 10] = True
            labels.append(BENIGN if i % 2 else MALIGNANT)
        else:
            prob[30:34, 30:34] = 0.3
            labels.append(NORMAL)
        images.append(image)
        masks.append(mask)
        ids.append(f"img-{i}")
        probs.append(prob)
    return images, masks, labels, ids, probs


def _cfg(**kw) -> CropConfig:
    base = dict(
        crop_size=16,
        margin=0.0,
        threshold=0.4,
        mask_channel="probability",
        empty_crop="peak",
        peak_window=0.35,
        context="image",
    )
    return CropConfig(**{**base, **kw})


def test_every_train_lesion_image_gets_a_copy_as_if_nothing_were_found():
    images, masks, labels, ids, probs = _split()
    out = rois_for_split(
        images, masks, labels, ids, lambda _: probs, _cfg(missed_lesions=1.0), "train"
    )
    source = out["mask_source"]
    assert source.tolist() == ["predicted"] * 9 + ["missed"] * 6
    missed = source == "missed"
    assert out["ids"][missed].tolist() == ids[:6]
    assert out["labels"][missed].tolist() == labels[:6]  # each keeps its class, none normal
    assert (out["area"][missed] == 0).all()  # no lesion found
    for key in ("crops", "channel", "context_image", "context_prob"):
        assert out[key].shape[0] == 15
    # The faded map peaks under half the threshold, in the crop and in the context channel.
    assert float(out["channel"][missed].max()) < 0.2
    assert float(out["context_prob"][missed].max()) < 0.2
    assert float(out["context_prob"][~missed].max()) > 0.8
    # The copy's crop is the peak crop: a square of 0.35 of 60 px (21) around the lesion,
    # which stays inside it (a bright square in the crop).
    for n, i in enumerate(np.flatnonzero(missed)):
        top, left, bottom, right = out["boxes"][i]
        assert bottom - top == 21
        assert right - left == 21
        assert out["crops"][i].max() == 200
        # the same image's own (found) crop is the lesion's box
        assert out["boxes"][n].tolist() != out["boxes"][i].tolist()
    # the whole image in the context channel is the same in both examples
    np.testing.assert_array_equal(out["context_image"][missed], out["context_image"][:6])


def test_no_copies_when_off_or_outside_the_train_split():
    images, masks, labels, ids, probs = _split()
    off = rois_for_split(images, masks, labels, ids, lambda _: probs, _cfg(), "train")
    assert set(off["mask_source"].tolist()) == {"predicted"}
    assert len(off["ids"]) == 9
    for split in ("val", "test"):
        out = rois_for_split(
            images, masks, labels, ids, lambda _: probs, _cfg(missed_lesions=1.0), split
        )
        assert set(out["mask_source"].tolist()) == {"predicted"}
        assert len(out["ids"]) == 9


def test_copies_follow_ground_truth_crops_when_both_are_asked():
    images, masks, labels, ids, probs = _split(n_lesion=2, n_normal=1)
    cfg = _cfg(missed_lesions=1.0, train_masks="both")
    out = rois_for_split(images, masks, labels, ids, lambda _: probs, cfg, "train")
    assert out["mask_source"].tolist() == ["predicted"] * 3 + ["ground_truth"] * 3 + ["missed"] * 2


def test_which_images_get_a_copy_and_how_faint_follows_from_the_id_alone():
    ids = [f"benign ({i})" for i in range(2000)]
    levels = [missed_copy(i, 0.25, 0.4) for i in ids]
    chosen = [lv for lv in levels if lv is not None]
    assert 0.22 < len(chosen) / len(ids) < 0.28
    assert min(chosen) >= 0.0
    assert max(chosen) < 0.2
    assert 0.08 < float(np.mean(chosen)) < 0.12  # uniform under threshold / 2
    assert [missed_copy(i, 0.25, 0.4) for i in reversed(ids)] == levels[::-1]
    # a larger share keeps every image chosen at the smaller one (the same draw per id)
    wider = {i for i in ids if missed_copy(i, 0.5, 0.4) is not None}
    assert {i for i, lv in zip(ids, levels, strict=True) if lv is not None} <= wider
    assert all(missed_copy(i, 0.0, 0.4) is None for i in ids[:100])


def test_a_share_outside_0_1_is_refused():
    with pytest.raises(ValueError, match="missed_lesions must lie in"):
        CropConfig(missed_lesions=1.5)
    with pytest.raises(ValueError, match="missed_lesions must lie in"):
        CropConfig(missed_lesions=-0.1)


def test_crop_rois_writes_the_copies_and_counts_them_apart(tmp_path):
    import json
    from types import SimpleNamespace

    import pandas as pd

    from components.crop_rois import _crop_all
    from tests.conftest import dark_lesion_splits

    rows = dark_lesion_splits(tmp_path)

    class DarkUnet:  # finds the dark lesion
        input_shape = (None, 32, 32, 1)

        def predict(self, batch, batch_size=32, verbose=0):
            return np.where(batch < 0.25, 0.9, 0.0).astype(np.float32)

    args = SimpleNamespace(data_dir=tmp_path, out=tmp_path / "rois")
    cfg = _cfg(crop_size=16, tta_flip=False, min_area=0.01, missed_lesions=1.0)
    summary = _crop_all(pd.DataFrame(rows), DarkUnet(), args, cfg)
    written = json.loads((tmp_path / "rois" / "summary.json").read_text())
    assert written["config"]["missed_lesions"] == 1.0
    train = summary["splits"]["train"]
    assert train["missed_lesion_copies"] == 1
    assert train["rows"] == 3
    assert train["no_lesion_found"] == 1  # the normal image; the copy is not counted
    assert summary["splits"]["val"]["missed_lesion_copies"] == 0
    saved = np.load(tmp_path / "rois" / "train.npz")
    assert saved["mask_source"].tolist() == ["predicted", "predicted", "missed"]
    assert saved["ids"][2] == "benign/benign (train)"
    assert saved["labels"][2] == BENIGN
