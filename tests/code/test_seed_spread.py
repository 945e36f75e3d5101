"""bench/seed_spread.py: the runs' spread against the spread of images flipping on their own,
on per-image tables the tests write."""

from __future__ import annotations

import pandas as pd
import pytest

from bench import results_files
from bench import seed_spread as ss


def table(called_normal: list[bool], found: list[bool], normal_marked: list[bool]) -> pd.DataFrame:
    """A per-image table: lesion images (benign) with their call and whether a lesion was
    found, then normal images with whether a lesion was marked."""
    rows = [
        {"id": f"b{i}", "class": "benign", "predicted": "normal" if c else "benign",
         "pred_area_fraction": 0.1 if f else 0.0}
        for i, (c, f) in enumerate(zip(called_normal, found, strict=True))
    ] + [
        {"id": f"n{i}", "class": "normal", "predicted": "normal",
         "pred_area_fraction": 0.1 if m else 0.0}
        for i, m in enumerate(normal_marked)
    ]  # fmt: skip
    return pd.DataFrame(rows).set_index("id")


def rows_by_figure(tables):
    return {r["figure"]: r for r in ss.spread(tables)}


def test_images_moving_together_spread_the_runs_beyond_independent_flips():
    """Run A calls all 8 lesion images normal, run B none: the runs differ by the whole rate
    (SD 0.707), while 8 images flipping on their own at p 0.5 would give sqrt(8 x 0.25 x 2) / 8
    = 0.25."""
    a = table([True] * 8, [True] * 8, [False, False])
    b = table([False] * 8, [True] * 8, [False, False])
    row = rows_by_figure([a, b])["lesion_called_normal"]
    assert row["rates"] == [1.0, 0.0]
    assert row["sd_runs"] == pytest.approx(0.5**0.5)
    assert row["sd_independent"] == pytest.approx(0.25)
    assert row["stable_share"] == 0.0
    found = rows_by_figure([a, b])["lesion_not_found"]
    assert found["sd_runs"] == 0.0
    assert found["sd_independent"] == 0.0
    assert found["stable_share"] == 1.0


def test_images_trading_places_leave_the_rate_still():
    """Half the images counted in run A, the other half in run B: the same rate in both runs
    (SD 0) though every image flipped; normal images marked once in two runs likewise."""
    a = table([True] * 4 + [False] * 4, [True] * 8, [True, False])
    b = table([False] * 4 + [True] * 4, [True] * 8, [False, True])
    rows = rows_by_figure([a, b])
    assert rows["lesion_called_normal"]["sd_runs"] == 0.0
    assert rows["lesion_called_normal"]["sd_independent"] == pytest.approx(0.25)
    assert rows["normal_false_lesion_rate"]["rates"] == [0.5, 0.5]
    assert rows["normal_false_lesion_rate"]["images"] == 2


def test_tables_of_other_images_or_a_single_run_are_refused(tmp_path):
    a = table([True], [True], [False])
    with pytest.raises(SystemExit, match="at least two"):
        ss.spread([a])
    with pytest.raises(SystemExit, match="not hold the same images"):
        ss.spread([a, table([True, False], [True, True], [False])])
    with pytest.raises(SystemExit, match="no such per-image table"):
        ss.main([str(tmp_path / "missing.csv"), "--name", "x"])


def test_main_writes_the_table(tmp_path, monkeypatch):
    monkeypatch.setattr(results_files, "RESULTS", tmp_path)
    paths = []
    for n, calls in enumerate(([True, False], [True, True])):
        path = tmp_path / f"run{n}.csv"
        table(calls, [True, True], [False]).reset_index().to_csv(path, index=False)
        paths.append(str(path))
    assert ss.main([*paths, "--name", "demo"]) == 0
    text = (tmp_path / "seed_spread_demo.md").read_text()
    assert (
        "| lesion_called_normal | 2 | 50.0 100.0 | 35.4 points | 35.4 points | 1.0 | 50 % |" in text
    )
