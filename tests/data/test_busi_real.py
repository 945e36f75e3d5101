"""Checks on the real BUSI dataset: what validation and the split must find in it.

The figures are those of the dataset as published (see the README of the dataset folder):
780 images, 798 mask files, 437/210/133 per class, 16 colour images, 17 with several masks,
and one file filed under two classes (benign 433 = malignant 145). The ``busi`` fixture
(conftest.py, a ``Pipeline``) validates and splits the data once per session in a
temporary folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from busi.data.imaging import hamming_matrix
from components.split_data import SPLITS

REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.slow

CONFLICT = ["benign/benign (433)", "malignant/malignant (145)"]
# The 16 images stored with real colour (dataset README); all others are 8-bit grayscale.
RGB_IMAGES = {
    *(f"benign/benign ({n})" for n in (6, 13, 69, 102, 173, 234, 240, 255, 261, 277, 323, 330)),
    *(f"malignant/malignant ({n})" for n in (65, 67, 196)),
    "normal/normal (113)",
}


def test_all_images_and_masks_are_found(busi) -> None:
    counts = busi.report["counts"]
    assert counts["images_found"] == 780
    assert counts["mask_files_found"] == 798
    assert len(busi.manifest) == 780
    assert busi.manifest["id"].is_unique


def test_every_image_is_accepted_with_the_published_class_counts(busi) -> None:
    counts = busi.report["counts"]
    quarantined = [
        (q["path"], [r["code"] for r in q["reasons"]]) for q in busi.report["quarantined"]
    ]
    assert quarantined == []
    assert counts["accepted"] == 780
    assert counts["accepted_per_class"] == {"benign": 437, "malignant": 210, "normal": 133}
    per_class = busi.manifest[busi.manifest["status"] == "accepted"]["class"].value_counts()
    assert per_class.to_dict() == {"benign": 437, "malignant": 210, "normal": 133}
    assert busi.report["trainable"] is True


def test_the_same_file_under_two_classes_is_a_label_conflict_kept_out_of_test(
    busi,
) -> None:
    assert CONFLICT in busi.report["same_image_in_two_classes"]
    rows = busi.manifest.set_index("id").loc[CONFLICT]
    assert rows["sha256"].nunique() == 1
    assert rows["label_conflict"].all()
    assert rows["dup_group"].nunique() == 1
    split_of = busi.splits.set_index("id")["split"]
    assert (split_of.loc[CONFLICT] != "test").all()
    # No image of any label-conflict group is in test (or val), not only this pair.
    conflicted = busi.manifest.loc[busi.manifest["label_conflict"].astype(bool), "id"]
    assert len(conflicted) >= 2
    assert set(split_of.loc[conflicted]) == {"train"}
    assert busi.split_report["label_conflicts_in_test"] == []


def test_no_near_duplicate_group_spans_two_splits(busi) -> None:
    # Excluded images (a listed leak, params.yaml: split_data.exclude) are in no split.
    excluded = busi.splits[busi.splits["split"] == "excluded"]
    assert excluded["split_reason"].str.startswith("listed: ").all()
    splits = busi.splits[busi.splits["split"] != "excluded"]
    assert set(splits["split"]) <= set(SPLITS)
    groups = splits[splits.duplicated("dup_group", keep=False)]
    # BUSI has well over a hundred near-duplicate groups; without them this checks nothing.
    assert groups["dup_group"].nunique() > 100
    spans = groups.groupby("dup_group")["split"].nunique()
    assert spans[spans > 1].index.to_list() == []
    assert busi.split_report["groups_spanning_splits"] == []


def test_no_near_duplicate_pair_is_split_apart(busi) -> None:
    """Independent of the dup_group column: every pair of images whose pHashes are within the
    threshold lies in one split."""
    frame = busi.manifest[["id", "phash"]].merge(busi.splits[["id", "split"]], on="id")
    assert len(frame) == 780
    dist = hamming_matrix([int(h, 16) for h in frame["phash"]])
    a, b = np.nonzero(np.triu(dist <= busi.near_duplicate_max_distance, k=1))
    assert len(a) > 100
    split = frame["split"].to_numpy()
    apart = [
        (frame["id"][i], frame["id"][j]) for i, j in zip(a, b, strict=True) if split[i] != split[j]
    ]
    assert apart == []


def test_class_proportions_agree_across_splits(busi) -> None:
    splits = busi.splits[busi.splits["split"] != "excluded"]
    table = pd.crosstab(splits["split"], splits["class"], normalize="index")
    assert set(table.index) == set(SPLITS)
    assert set(table.columns) == {"benign", "malignant", "normal"}
    spread = table.max() - table.min()  # per class, in fractions
    assert (spread <= 0.03).all(), f"class proportion spread across splits:\n{table}"
    sizes = splits["split"].value_counts(normalize=True)
    for name, fraction in (("val", 0.15), ("test", 0.15)):
        assert abs(sizes[name] - fraction) <= 0.03


def test_colour_images_are_converted_and_multi_mask_images_combined(busi) -> None:
    # As in the project's copy (dataset README): the original download stores all 780 as
    # RGB; the copy keeps RGB only where the three channels differ.
    counts = busi.report["counts"]
    assert counts["converted"] == 16
    converted = busi.manifest[busi.manifest["conversion"].notna()]
    assert set(converted["id"]) == RGB_IMAGES
    assert set(converted["mode"]) == {"RGB"}
    assert counts["multi_mask_images"] == 17
    multi = busi.manifest[busi.manifest["n_masks"] > 1].set_index("id")["n_masks"]
    assert len(multi) == 17
    assert multi["benign/benign (195)"] == 3
    assert "malignant/malignant (53)" in multi.index
    assert (multi.index.str.startswith("benign/")).sum() == 16


def test_committed_split_is_consistent_with_the_data_and_params(busi) -> None:
    """The committed data/splits.csv is what split-data keeps when it runs on this data:
    re-splitting with it as the previous split changes no assignment, and no near-duplicate
    group of the current validation spans two of its splits."""
    from busi.config import load_section
    from components.split_data import SPLITS as SIDES
    from components.split_data import SplitConfig, split_manifest

    committed_path = REPO / "data" / "splits.csv"
    if not committed_path.is_file():
        pytest.skip(f"no committed split at {committed_path}")
    committed = pd.read_csv(committed_path)
    cfg = load_section(REPO / "params.yaml", "split_data", SplitConfig)
    accepted = busi.manifest[busi.manifest["status"] == "accepted"]
    again, _ = split_manifest(accepted, committed, cfg)
    assert again[["id", "split"]].equals(committed[["id", "split"]]), (
        f"{committed_path} is stale: run `dvc repro split_data` and commit it"
    )
    groups = accepted.set_index("id")["dup_group"]
    used = committed[committed["split"].isin(SIDES)]
    spans = used.groupby(used["id"].map(groups))["split"].nunique()
    assert (spans == 1).all(), f"groups across splits: {spans[spans > 1].index.to_list()}"
