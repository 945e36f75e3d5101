"""bench/bench_chain_errors.py: the error sources counted from a per-image table."""

from __future__ import annotations

import pandas as pd
import pytest

from bench.bench_chain_errors import (
    error_sources,
    if_hidden_when_called_normal,
    missed_by_group,
    parse_tables,
    render,
    render_groups,
)


def _table() -> pd.DataFrame:
    rows = [
        # class, predicted, pred_area_fraction, true_area_fraction
        ("benign", "normal", 0.0, 0.005),  # not found, called normal
        ("benign", "benign", 0.02, 0.03),
        ("benign", "normal", 0.03, 0.02),  # found, still called normal
        ("malignant", "benign", 0.0, 0.2),  # not found, not called normal
        ("normal", "normal", 0.0, 0.0),
        ("normal", "benign", 0.01, 0.0),  # false lesion, called a lesion
        ("normal", "normal", 0.01, 0.0),  # false lesion, called normal
        ("normal", "malignant", 0.0, 0.0),  # no lesion, called a lesion
    ]
    return pd.DataFrame(
        rows, columns=["class", "predicted", "pred_area_fraction", "true_area_fraction"]
    )


def test_the_error_sources_are_counted_apart():
    out = error_sources(_table())
    assert out["lesion_images"] == 4
    assert out["lesion_not_found"] == 2
    assert out["lesion_called_normal"] == 2
    assert out["called_normal_not_found"] == 1
    assert out["called_normal_found"] == 1
    assert out["not_found_but_not_called_normal"] == 1
    assert out["normal_images"] == 4
    assert out["normal_false_lesion"] == 2
    assert out["normal_false_lesion_called_lesion"] == 1
    assert out["normal_no_lesion_called_lesion"] == 1
    assert out["malignant_not_found"] == 1
    assert out["benign_called_normal"] == 2
    assert out["size under 1 %: images"] == 1
    assert out["size under 1 %: not found"] == 1
    assert out["size 5 % or more: not found"] == 1


def test_the_table_has_a_column_per_seed_and_the_mean(tmp_path):
    counts = error_sources(_table())
    table = render(
        {
            "date": "2026-12-02",
            "seeds": [0, 1],
            "tables": {"0": "a.csv", "1": "b.csv"},
            "per_seed": {"0": counts, "1": {**counts, "lesion_not_found": 4}},
        }
    )
    assert "| lesion_not_found | 2 | 4 | 3.0 |" in table


def test_hiding_the_mask_of_images_called_normal_trades_false_lesions_for_misses():
    table = _table()
    table["dice"] = [0.0, 0.8, 0.6, 0.0, None, None, None, None]
    out = if_hidden_when_called_normal(table)
    # 2 of 4 normal images have a false lesion; the one called normal loses it
    assert out["normal_false_lesion_rate"] == [0.5, 0.25]
    # the found lesion called normal loses its Dice 0.6 and counts as not found
    assert out["lesion_dice"] == [pytest.approx(1.4 / 4), pytest.approx(0.8 / 4)]
    assert out["lesion_not_found_rate"] == [0.5, 0.75]
    counts = error_sources(table)
    text = render(
        {
            "date": "2026-12-02",
            "split": "val",
            "seeds": [0],
            "tables": {"0": "a.csv"},
            "per_seed": {"0": counts},
            "if_hidden_when_called_normal": {"0": out},
        }
    )
    assert "on the BUSI val split" in text
    assert "| normal_false_lesion_rate | 0.500 -> 0.250 | 0.500 -> 0.250 |" in text


def test_a_missing_table_is_refused_with_what_to_run(tmp_path):
    with pytest.raises(SystemExit, match="run evaluate_models first"):
        parse_tables([f"0={tmp_path / 'none.csv'}"])
    with pytest.raises(SystemExit, match="write SEED=PATH"):
        parse_tables(["per_image.csv"])


def _seed_table(found: list[bool], dice: list[float]) -> pd.DataFrame:
    """Five lesion images in two near-duplicate groups (a: 3 images, b: 1, c: 1) and a
    normal image; ``found`` and ``dice`` are the lesion images'."""
    ids = ["a1", "a2", "a3", "b1", "c1", "n1"]
    return pd.DataFrame(
        {
            "id": ids,
            "dup_group": ["a", "a", "a", "b", "c", "n"],
            "class": ["benign"] * 4 + ["malignant", "normal"],
            "pred_area_fraction": [0.05 if f else 0.0 for f in found] + [0.02],
            "dice": [*dice, None],
        }
    )


def test_lesions_missed_in_every_seed_are_counted_by_their_near_duplicate_group():
    tables = {
        "0": _seed_table([False, False, False, True, False], [0, 0, 0, 0.9, 0]),
        "1": _seed_table([False, False, True, True, True], [0, 0, 0.6, 0.8, 0.7]),
    }
    out = missed_by_group(tables)
    assert out["lesion_images"] == 5
    assert out["lesion_groups"] == 3
    # a1 and a2 missed in both seeds; a3 and c1 in one only
    assert out["missed_in_every_seed"] == 2
    assert out["missed_in_some_seed"] == 4
    assert out["groups_missed_in_every_seed"] == {"a": [2, 3]}
    # seed 1: images (0 + 0 + 0.6 + 0.8 + 0.7) / 5; groups a 0.2, b 0.8, c 0.7
    assert out["dice_per_image_mean"]["1"] == pytest.approx(2.1 / 5)
    assert out["dice_per_group_mean"]["1"] == pytest.approx((0.2 + 0.8 + 0.7) / 3)
    text = "\n".join(render_groups(out))
    assert "found in no seed: 2 of 5 (3 near-duplicate groups)" in text
    assert "`a` 2 of 3" in text
    assert "| mean over groups (each group's mean) | 0.300 | 0.567 |" in text


def test_seeds_of_other_splits_are_not_compared():
    other = _seed_table([True] * 5, [0.9] * 5)
    other.loc[0, "id"] = "z1"
    with pytest.raises(SystemExit, match="other lesion images"):
        missed_by_group({"0": _seed_table([True] * 5, [0.9] * 5), "1": other})
