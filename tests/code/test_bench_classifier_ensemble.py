"""The classifier-ensemble benchmark's scoring (bench/bench_classifier_ensemble.py): the
figures of single classifiers and of ensembles of them, from their class probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from bench.bench_classifier_ensemble import compare, figures, render

# class order benign, malignant, normal
LABELS = np.array([0, 0, 1, 1, 2, 2])


def _proba(called: list[int], sure: float = 0.8) -> np.ndarray:
    rest = (1 - sure) / 2
    out = np.full((len(called), 3), rest)
    out[np.arange(len(called)), called] = sure
    return out


def test_figures_count_lesions_called_normal_and_normals_called_a_lesion():
    # one benign called normal, one normal called malignant, the rest right
    got = figures(LABELS, _proba([2, 0, 1, 1, 1, 2]))
    assert got["lesion_called_normal"] == pytest.approx(1 / 4)
    assert got["normal_called_lesion"] == pytest.approx(1 / 2)
    assert got["accuracy"] == pytest.approx(4 / 6)
    right = figures(LABELS, _proba([0, 0, 1, 1, 2, 2]))
    assert right["macro_f1"] == pytest.approx(1.0)
    assert right["malignant_auc"] == pytest.approx(1.0)


def test_an_ensemble_is_scored_on_the_mean_of_its_members_probabilities():
    # each member gets a different image wrong, confidently; any two of three outvote it
    members = [
        _proba([2, 0, 1, 1, 2, 2], sure=0.6),
        _proba([0, 2, 1, 1, 2, 2], sure=0.6),
        _proba([0, 0, 2, 1, 2, 2], sure=0.6),
        _proba([0, 0, 1, 1, 2, 2], sure=0.6),
    ]
    result = compare(LABELS, members, size=2)
    assert [s["accuracy"] for s in result["singles"]] == pytest.approx([5 / 6] * 3 + [1.0])
    assert len(result["ensembles"]) == 6  # 4 choose 2
    pair = next(e for e in result["ensembles"] if e["members"] == [0, 1])
    np.testing.assert_allclose(
        pair["accuracy"], figures(LABELS, (members[0] + members[1]) / 2)["accuracy"]
    )
    # in a pair the wrong member's 0.6 ties with the right one's: argmax takes the first
    # class, so image 0 (benign, with 'normal' from member 0) is right, image 1 (benign) too
    assert pair["lesion_called_normal"] == pytest.approx(0.0)
    assert [e["members"] for e in result["disjoint_ensembles"]] == [[0, 1], [2, 3]]
    spread = result["spread_singles"]["accuracy"]
    assert spread["mean"] == pytest.approx((3 * 5 / 6 + 1) / 4)
    assert spread["min"] == pytest.approx(5 / 6)
    assert spread["sd"] > 0
    assert result["spread_ensembles"]["accuracy"]["n"] == 6


def test_the_results_table_names_each_workspace_and_its_member_check():
    members = [_proba([0, 0, 1, 1, 2, 2]), _proba([2, 0, 1, 1, 2, 2]), _proba([0, 0, 1, 2, 2, 2])]
    ws = {
        "workspace": "ws0",
        "seeds": [0, 100, 200],
        "check": {
            "member_0": {"macro_f1": 1.0},
            "evaluate_models": {"macro_f1": 1.0},
            "equal": True,
        },
        **compare(LABELS, members, size=2),
    }
    text = render(
        {
            "date": "2026-12-03",
            "machine": {"cpu": "AMD EPYC", "cores": 2, "commit": "abc"},
            "pool": 3,
            "size": 2,
            "workspaces": [ws],
        }
    )
    assert "### ws0 (classifier seeds [0, 100, 200])" in text
    assert "equal True" in text
    assert "| single 2 (seed 200) |" in text
    assert "| ensembles of 2 |" in text
