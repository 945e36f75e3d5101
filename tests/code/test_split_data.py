"""split-data: stratified, group-aware, conflicts kept out of test, test set frozen."""

from __future__ import annotations

import pandas as pd
import pytest

from busi.errors import BusiError
from components.split_data import SplitConfig, run, split_manifest

CFG = SplitConfig(seed=7, val_fraction=0.15, test_fraction=0.15)


def _manifest(n_per_class=(60, 30, 20), groups=(), conflicts=()) -> pd.DataFrame:
    """Accepted manifest rows; ``groups`` lists id tuples forming one near-duplicate group."""
    rows = []
    for label, n in zip(("benign", "malignant", "normal"), n_per_class, strict=True):
        for i in range(1, n + 1):
            image_id = f"{label}/{label} ({i})"
            rows.append(
                {
                    "id": image_id,
                    "class": label,
                    "path": f"{image_id}.png",
                    "dup_group": image_id,
                    "label_conflict": False,
                }
            )
    df = pd.DataFrame(rows).set_index("id", drop=False)
    for members in (*groups, *conflicts):
        df.loc[list(members), "dup_group"] = members[0]
    for members in conflicts:
        df.loc[list(members), "label_conflict"] = True
    return df.reset_index(drop=True)


GROUPS = [
    tuple(f"benign/benign ({i})" for i in (1, 2, 3, 4)),
    ("malignant/malignant (5)", "malignant/malignant (6)"),
]
CONFLICT = ("benign/benign (40)", "malignant/malignant (20)")


def test_groups_stay_together_and_classes_are_stratified():
    splits, report = split_manifest(_manifest(groups=GROUPS), None, CFG)
    assert splits.groupby("dup_group")["split"].nunique().max() == 1
    assert report["groups_spanning_splits"] == []
    counts = pd.crosstab(splits["split"], splits["class"], normalize="index")
    for label in counts.columns:
        assert counts[label].max() - counts[label].min() < 0.06
    sizes = splits["split"].value_counts(normalize=True)
    assert sizes["test"] == pytest.approx(0.15, abs=0.03)
    assert sizes["val"] == pytest.approx(0.15, abs=0.03)


def test_same_seed_same_split_other_seed_other_split():
    a, _ = split_manifest(_manifest(), None, CFG)
    b, _ = split_manifest(_manifest(), None, CFG)
    c, _ = split_manifest(_manifest(), None, SplitConfig(seed=8))
    assert a.equals(b)
    assert not a["split"].equals(c["split"])


def test_conflicting_labels_never_reach_test():
    for seed in range(5):
        splits, report = split_manifest(
            _manifest(conflicts=[CONFLICT]), None, SplitConfig(seed=seed)
        )
        rows = splits.set_index("id").loc[list(CONFLICT)]
        assert set(rows["split"]) == {"train"}
        assert set(CONFLICT) <= set(report["label_conflict_images"])
        assert report["label_conflicts_in_test"] == []


def test_test_set_is_frozen_when_new_data_arrives():
    first, _ = split_manifest(_manifest(), None, CFG)
    test_ids = set(first.loc[first["split"] == "test", "id"])
    grown = _manifest(n_per_class=(90, 45, 30))  # 55 new images
    second, report = split_manifest(grown, first, CFG)
    assert report["frozen_test_set"] is True
    assert set(second.loc[second["split"] == "test", "id"]) == test_ids
    old = second[second["id"].isin(first["id"])].set_index("id")["split"]
    assert old.equals(first.set_index("id")["split"].loc[old.index])
    new = second[~second["id"].isin(first["id"])]
    assert len(new) == 55
    assert set(new["split"]) <= {"train", "val"}
    assert report["new_images"] == 55


def test_new_near_duplicate_of_a_test_image_is_excluded():
    first, _ = split_manifest(_manifest(), None, CFG)
    test_id = first.loc[first["split"] == "test", "id"].iloc[0]
    label = test_id.split("/")[0]
    newcomer = f"{label}/{label} (500)"
    grown = _manifest()
    grown = pd.concat(
        [
            grown,
            pd.DataFrame(
                [
                    {
                        "id": newcomer,
                        "class": label,
                        "path": newcomer + ".png",
                        "dup_group": test_id,
                        "label_conflict": False,
                    }
                ]
            ),
        ],
        ignore_index=True,
    )
    grown.loc[grown["id"] == test_id, "dup_group"] = test_id
    second, report = split_manifest(grown, first, CFG)
    row = second.set_index("id").loc[newcomer]
    assert row["split"] == "excluded"
    assert "frozen test" in row["split_reason"]
    assert {"id": newcomer, "split_reason": row["split_reason"]} in report["excluded"]


def test_run_reads_the_previous_split_and_writes_atomically(tmp_path):
    manifest = _manifest()
    manifest["status"] = "accepted"
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    splits = tmp_path / "splits.csv"
    run(tmp_path / "manifest.csv", splits, tmp_path / "split.json", CFG)
    first_bytes = splits.read_bytes()
    run(tmp_path / "manifest.csv", splits, tmp_path / "split.json", CFG)
    assert splits.read_bytes() == first_bytes  # rerunning on the same data rewrites nothing
    first = pd.read_csv(splits)
    report = run(tmp_path / "manifest.csv", splits, tmp_path / "split.json", SplitConfig(seed=99))
    assert report["frozen_test_set"] is True
    assert pd.read_csv(splits)["split"].equals(first["split"])  # another seed changes nothing
    assert not (tmp_path / "splits.csv.tmp").exists()


def test_bad_fractions_are_rejected():
    with pytest.raises(ValueError, match="below 1"):
        SplitConfig(val_fraction=0.5, test_fraction=0.5)


def test_a_listed_train_image_is_excluded_and_the_test_split_stays():
    """The known leak: one lesion imaged three times, two in the frozen test split and one
    in train. The train member is listed and leaves; nothing else moves."""
    first, _ = split_manifest(_manifest(), None, CFG)
    train_id = first.loc[first["split"] == "train", "id"].iloc[3]
    cfg = SplitConfig(seed=7, exclude=({"id": train_id, "reason": "same_lesion_as_test"},))
    second, report = split_manifest(_manifest(), first, cfg)
    row = second.set_index("id").loc[train_id]
    assert (row["split"], row["split_reason"]) == ("excluded", "listed: same_lesion_as_test")
    assert {"id": train_id, "split_reason": "listed: same_lesion_as_test"} in report["excluded"]
    others = second["id"] != train_id
    assert second.loc[others, "split"].equals(first.loc[others, "split"])
    again, _ = split_manifest(_manifest(), second, cfg)  # the rerun writes the same file
    assert again.equals(second)


def test_listing_a_frozen_test_image_is_refused():
    first, _ = split_manifest(_manifest(), None, CFG)
    test_id = first.loc[first["split"] == "test", "id"].iloc[0]
    with pytest.raises(BusiError, match="frozen test split"):
        split_manifest(_manifest(), first, SplitConfig(exclude=({"id": test_id, "reason": "x"},)))


def test_the_project_excludes_the_known_leak_and_its_committed_split_agrees():
    from dataclasses import asdict
    from pathlib import Path

    from busi.config import load_section

    root = Path(__file__).resolve().parents[2]
    cfg = load_section(root / "params.yaml", "split_data", SplitConfig)
    leak = "malignant/malignant (40)"
    assert cfg.excluded.get(leak) == "same_lesion_as_test"
    # MLflow takes the section as step params (dict keys would become param names)
    from busi.tracking import _flatten

    assert "exclude" in _flatten(asdict(cfg))
    splits = pd.read_csv(root / "data" / "splits.csv").set_index("id")
    assert splits.loc[leak, "split"] == "excluded"
    assert set(splits.loc[["malignant/malignant (39)", "malignant/malignant (42)"], "split"]) == {
        "test"
    }
