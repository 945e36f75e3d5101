"""bench/compare_chains.py: two chains' per-image tables compared image by image."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from bench import compare_chains, results_files
from bench.compare_chains import compare, differences, per_image, rates, read_runs, render

IDS = ["b1", "b2", "b3", "m1", "n1", "n2"]
CLASSES = ["benign", "benign", "benign", "malignant", "normal", "normal"]
# b1 and b2 are one patient's series (one near-duplicate group)
GROUPS = ["b1", "b1", "b3", "m1", "n1", "n2"]


def _table(predicted, prob_normal, area) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": IDS,
            "dup_group": GROUPS,
            "class": CLASSES,
            "predicted": predicted,
            "prob_normal": prob_normal,
            "pred_area_fraction": area,
        }
    ).set_index("id")


def _a() -> pd.DataFrame:
    # the series b1, b2 missed and called normal; n1 called a lesion
    return _table(
        ["normal", "normal", "benign", "malignant", "benign", "normal"],
        [0.8, 0.7, 0.1, 0.0, 0.3, 0.9],
        [0.0, 0.0, 0.02, 0.1, 0.01, 0.0],
    )


def _b() -> pd.DataFrame:
    # b3 missed and called normal instead; b1 called malignant; every normal right
    return _table(
        ["malignant", "benign", "normal", "malignant", "normal", "normal"],
        [0.1, 0.2, 0.9, 0.0, 0.6, 0.8],
        [0.03, 0.02, 0.0, 0.1, 0.0, 0.0],
    )


def test_rates_weigh_each_group_once_beside_each_image():
    out = rates(_a())
    # 2 of 4 lesion images; groups b1 (1.0), b3 (0), m1 (0): 1/3
    assert out["lesion_called_normal (images)"] == pytest.approx(0.5)
    assert out["lesion_called_normal (groups)"] == pytest.approx(1 / 3)
    assert out["lesion_not_found (images)"] == pytest.approx(0.5)
    assert out["lesion_not_found (groups)"] == pytest.approx(1 / 3)
    assert out["normal_called_lesion (images)"] == pytest.approx(0.5)
    out = rates(_b())
    assert out["lesion_called_normal (images)"] == pytest.approx(0.25)
    assert out["lesion_called_normal (groups)"] == pytest.approx(1 / 3)
    assert out["benign_called_malignant"] == 1
    assert out["malignant_called_benign"] == 0
    assert out["normal_called_lesion (images)"] == 0


def test_per_image_counts_the_runs():
    a = per_image([_a(), _b()])
    assert a.loc["b1", "called_normal"] == 1
    assert a.loc["b1", "found"] == 1
    assert a.loc["b1", "prob_normal"] == pytest.approx(0.45)
    assert a.loc["n2", "called_normal"] == 2
    assert (a["runs"] == 2).all()


def test_differences_list_the_images_called_differently_largest_first():
    diff = differences(per_image([_a(), _a()]), per_image([_b(), _a()]))
    # b1: called normal in 2 of 2 runs of A, 1 of 2 of B; b3: 0 of 2 against 1 of 2
    assert set(diff.index) == {"b1", "b2", "b3", "n1"}
    assert diff.loc["b3", "wrong_a"] == 0
    assert diff.loc["b3", "wrong_b"] == 0.5
    # for a normal image the error is being called a lesion
    assert diff.loc["n1", "error"] == "called a lesion"
    assert diff.loc["n1", "wrong_a"] == 1
    assert diff.loc["n1", "wrong_b"] == 0.5
    same = differences(per_image([_a()]), per_image([_a()]))
    assert same.empty


def test_compare_refuses_other_images():
    other = _a().rename(index={"b1": "b9"})
    with pytest.raises(SystemExit, match="other images"):
        compare([_a()], [other])
    relabelled = _a()
    relabelled.loc["b3", "class"] = "malignant"
    with pytest.raises(SystemExit, match="other images"):
        compare([_a()], [relabelled])


def test_read_runs_says_what_is_wrong(tmp_path):
    good = tmp_path / "a.csv"
    _a().reset_index().to_csv(good, index=False)
    with pytest.raises(SystemExit, match="no such per-image table"):
        read_runs([tmp_path / "missing.csv"])
    bad = tmp_path / "bad.csv"
    _a().reset_index().drop(columns=["prob_normal"]).to_csv(bad, index=False)
    with pytest.raises(SystemExit, match="prob_normal"):
        read_runs([bad])
    relabelled = tmp_path / "relabelled.csv"
    table = _a().reset_index()
    table.loc[0, "class"] = "malignant"
    table.to_csv(relabelled, index=False)
    with pytest.raises(SystemExit, match="other images"):
        read_runs([good, relabelled])
    assert list(read_runs([good])[0].index) == IDS


def test_main_writes_the_results_and_keeps_the_hand_written_part(tmp_path, monkeypatch):
    paths = []
    for name, table in (("a", _a()), ("b", _b())):
        path = tmp_path / f"{name}.csv"
        table.reset_index().to_csv(path, index=False)
        paths.append(str(path))
    monkeypatch.setattr(results_files, "RESULTS", tmp_path)
    (tmp_path / "compare_chains_x.md").write_text("# mine\n\nThe reading.\n")
    argv = ["compare_chains.py", "--name", "x", "--a", "A", paths[0], "--b", "B", paths[1]]
    monkeypatch.setattr("sys.argv", argv)
    assert compare_chains.main() == 0
    record = json.loads((tmp_path / "compare_chains_x.json").read_text())
    assert record["chains"]["b"]["mean"]["lesion_called_normal (images)"] == pytest.approx(0.25)
    assert {row["id"] for row in record["differences"]} == {"b1", "b2", "b3", "n1"}
    md = (tmp_path / "compare_chains_x.md").read_text()
    assert "The reading." in md
    assert "| b3 | b3 | called normal | 0.00 | 1.00 |" in md
    assert render(record) in md


def test_main_wants_a_name_and_tables(monkeypatch):
    monkeypatch.setattr("sys.argv", ["compare_chains.py", "--name", "x", "--a", "A", "--b", "B"])
    with pytest.raises(SystemExit, match="--a: write a chain's name"):
        compare_chains.main()
