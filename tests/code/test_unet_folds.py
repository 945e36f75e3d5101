"""Out-of-fold crops: train_unet_folds trains K U-Nets on the train split minus one fold of
whole near-duplicate groups, and crop_rois (train_segmenter: out_of_fold) segments each train
image with the fold U-Net that did not see it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from busi.errors import BusiError
from busi.model.chain import CropConfig
from components.crop_rois import out_of_fold_predict
from components.train_unet_folds import FoldsConfig, assign_folds, fold_records


def _split_rows() -> pd.DataFrame:
    """30 train images in 20 near-duplicate groups over three classes, plus val and test."""
    rows = []
    for cls, groups in (("benign", 9), ("malignant", 6), ("normal", 5)):
        for g in range(groups):
            members = 3 if g == 0 else (2 if g % 3 == 1 else 1)
            for m in range(members):
                rows.append((f"{cls}/{cls} ({g}-{m})", cls, f"{cls}/g{g}", "train"))
    rows += [("benign/v", "benign", "benign/v", "val"), ("normal/t", "normal", "normal/t", "test")]
    return pd.DataFrame(rows, columns=["id", "class", "dup_group", "split"])


def test_folds_keep_groups_whole_and_share_classes_evenly():
    rows = _split_rows()
    fold_of = assign_folds(rows, 3, seed=0)
    train = rows[rows["split"] == "train"]
    assert set(fold_of) == set(train["id"])  # every train image, nothing of val or test
    assert set(fold_of.values()) == {0, 1, 2}
    for _, members in train.groupby("dup_group"):
        assert len({fold_of[i] for i in members["id"]}) == 1  # a group never straddles folds
    groups = train.drop_duplicates("dup_group")
    per_fold = groups["id"].map(fold_of).value_counts()
    assert per_fold.max() - per_fold.min() <= 1  # groups dealt round-robin: 7, 7, 6
    for _, cls_groups in groups.groupby("class"):
        counts = cls_groups["id"].map(fold_of).value_counts().reindex(range(3), fill_value=0)
        assert counts.max() - counts.min() <= 1  # each class spread over the folds


def test_folds_are_seeded():
    rows = _split_rows()
    assert assign_folds(rows, 2, seed=4) == assign_folds(rows, 2, seed=4)
    assert assign_folds(rows, 2, seed=4) != assign_folds(rows, 2, seed=5)


def test_too_few_groups_or_a_bad_fold_count_is_refused():
    rows = _split_rows()
    with pytest.raises(BusiError, match="cannot fill 21 folds"):
        assign_folds(rows, 21, seed=0)
    with pytest.raises(BusiError, match="no train rows"):
        assign_folds(rows[rows["split"] != "train"], 2, seed=0)
    for bad in (1, -1, 11):
        with pytest.raises(ValueError, match="one fold"):
            FoldsConfig(folds=bad)
    assert FoldsConfig().folds == 0  # off by default
    with pytest.raises(ValueError, match="train_segmenter"):
        CropConfig(train_segmenter="folds")


def _example(image_id: str) -> bytes:
    import tensorflow as tf

    feature = {"id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_id.encode()]))}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def test_a_fold_unet_trains_on_the_other_folds_with_the_augmented_copies():
    # augment_data writes each augmented copy under its original's id
    ids = ["a", "a", "a", "b", "c", "c", "d"]
    records = [_example(i) for i in ids]
    fold_of = {"a": 0, "b": 1, "c": 0, "d": 1}
    assert fold_records(records, fold_of, 0) == [records[3], records[6]]
    assert fold_records(records, fold_of, 1) == records[:3] + records[4:6]
    with pytest.raises(BusiError, match="'e' is not in the split's train rows"):
        fold_records([*records, _example("e")], fold_of, 0)


def test_each_image_is_segmented_by_its_own_fold_unet():
    images = [np.full((4, 4), n, dtype=np.float32) for n in range(5)]
    ids = ["p", "q", "r", "s", "t"]
    fold_of = {"p": 1, "q": 0, "r": 1, "s": 0, "t": 2}
    calls = []

    def fold_unet(fold):
        def predict(batch):
            calls.append((fold, [float(b[0, 0]) for b in batch]))
            return [b * 0 + fold for b in batch]  # a map that says which fold made it

        return predict

    probs = out_of_fold_predict(ids, fold_of, [fold_unet(k) for k in range(3)])(images)
    assert [float(p[0, 0]) for p in probs] == [1, 0, 1, 0, 2]
    # one call per fold U-Net, with only its own images, in order
    assert calls == [(0, [1.0, 3.0]), (1, [0.0, 2.0]), (2, [4.0])]
    with pytest.raises(BusiError, match="1 train images have no fold"):
        out_of_fold_predict([*ids, "u"], fold_of, [fold_unet(k) for k in range(3)])


def test_out_of_fold_without_fold_unets_says_what_to_do(tmp_path):
    from components.crop_rois import _load_fold_unets

    (tmp_path / "folds.json").write_text('{"folds": 0}')
    with pytest.raises(BusiError, match=r"set train_unet_folds\.folds"):
        _load_fold_unets(tmp_path, CropConfig())


@pytest.mark.slow
def test_fold_unets_train_and_crop_the_train_split_out_of_fold(smoke_run, tmp_path):
    """The steps on the smoke run's data: two fold U-Nets, then crop_rois with and without
    them. Val and test crops are the U-Net's either way; the train crops are not."""
    from components import crop_rois, train_unet_folds

    ws = smoke_run["workspace"]
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["train_unet"].update(epochs=2, patience=100)
    params["train_unet_folds"] = {"folds": 2}
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(params))
    folds_dir = tmp_path / "unet_folds"
    metrics = tmp_path / "train_unet_folds.json"
    args = ["--data", str(ws / "data/prepared"), "--splits", str(ws / "data/splits.csv")]
    args += ["--backup-dir", str(tmp_path / "backup"), "--params", str(params_path)]
    assert train_unet_folds.main([*args, "--out", str(folds_dir), "--metrics", str(metrics)]) == 0
    summary = json.loads(metrics.read_text())
    assert [r["fold"] for r in summary["per_fold"]] == [0, 1]
    assert all(r["epochs_run"] == 2 for r in summary["per_fold"])
    table = pd.read_csv(folds_dir / "folds.csv")
    splits = pd.read_csv(ws / "data/splits.csv")
    train = splits[splits["split"] == "train"]
    assert sorted(table["id"]) == sorted(train["id"])
    left_out = [r["left_out_images"] for r in summary["per_fold"]]
    assert sum(left_out) == len(train)
    assert min(left_out) > 0
    assert (folds_dir / "fold-0.keras").is_file()
    assert (folds_dir / "fold-1.keras").is_file()

    rois = {}
    for segmenter in ("full", "out_of_fold"):
        params["crop_rois"]["train_segmenter"] = segmenter
        params_path.write_text(yaml.safe_dump(params))
        out = tmp_path / f"rois-{segmenter}"
        crop = ["--data-dir", str(ws / "data/busi"), "--manifest", str(ws / "data/manifest.csv")]
        crop += ["--splits", str(ws / "data/splits.csv"), "--unet", str(ws / "models/unet.keras")]
        crop += ["--unet-folds", str(folds_dir), "--out", str(out), "--params", str(params_path)]
        assert crop_rois.main(crop) == 0
        rois[segmenter] = out
        done = json.loads((out / "summary.json").read_text())["splits"]
        assert done["train"]["segmenter"] == segmenter
        assert done["val"]["segmenter"] == done["test"]["segmenter"] == "full"
    for split in ("val", "test"):
        full = np.load(rois["full"] / f"{split}.npz")
        oof = np.load(rois["out_of_fold"] / f"{split}.npz")
        np.testing.assert_array_equal(full["channel"], oof["channel"])
    full, oof = np.load(rois["full"] / "train.npz"), np.load(rois["out_of_fold"] / "train.npz")
    np.testing.assert_array_equal(full["ids"], oof["ids"])
    # two epochs on half the data segment differently from the smoke U-Net
    assert not np.array_equal(full["channel"], oof["channel"])

    # the stage with folds 0 trains nothing and says so to crop_rois
    params["train_unet_folds"] = {"folds": 0}
    params_path.write_text(yaml.safe_dump(params))
    off = tmp_path / "off"
    assert train_unet_folds.main([*args, "--out", str(off), "--metrics", str(off) + ".json"]) == 0
    assert sorted(p.name for p in off.iterdir()) == ["folds.json"]
