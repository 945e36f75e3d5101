"""bench/screen_table_ensembles.py: classifier ensembles read from per-image tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench.screen_table_ensembles import screen

IDS = ["b1", "b2", "m1", "n1"]
CLASSES = ["benign", "benign", "malignant", "normal"]


def _table(probs) -> pd.DataFrame:
    probs = np.asarray(probs, dtype=float)
    return pd.DataFrame(
        {
            "id": IDS,
            "class": CLASSES,
            "prob_benign": probs[:, 0],
            "prob_malignant": probs[:, 1],
            "prob_normal": probs[:, 2],
        }
    ).set_index("id")


def test_the_mean_of_the_members_probabilities_decides_the_ensemble_s_class():
    # b2: member 0 says normal (0.6), member 1 benign (0.7): the mean (0.45 benign,
    # 0.4 normal) says benign. n1: both lean normal.
    a = _table([[0.8, 0.1, 0.1], [0.3, 0.1, 0.6], [0.2, 0.7, 0.1], [0.3, 0.1, 0.6]])
    b = _table([[0.6, 0.2, 0.2], [0.6, 0.2, 0.2], [0.1, 0.8, 0.1], [0.4, 0.1, 0.5]])
    rows = dict(screen([a, b.iloc[::-1]]))  # the row order of a table does not matter
    assert rows["member 0"]["lesion_called_normal"] == pytest.approx(1 / 3)
    assert rows["member 1"]["lesion_called_normal"] == 0.0
    mean = rows["mean of 2"]
    assert mean["lesion_called_normal"] == 0.0
    assert mean["normal_called_normal"] == "1 of 1"
    assert mean["accuracy"] == 1.0
    assert mean["macro_f1"] == pytest.approx(1.0)
    assert mean["malignant_auc"] == 1.0


def test_tables_of_other_images_or_other_classes_are_refused():
    a = _table(np.full((4, 3), 1 / 3))
    other = a.rename(index={"n1": "n2"})
    with pytest.raises(ValueError, match="different images"):
        screen([a, other])
    relabelled = a.copy()
    relabelled.loc["n1", "class"] = "benign"
    with pytest.raises(ValueError, match="different classes"):
        screen([a, relabelled])
