"""bench/sweep_lesion_rule.py: the chain's lesion rule with a peak gate."""

from __future__ import annotations

import numpy as np
import pytest

from bench.sweep_lesion_rule import gated_mask, peaks_by_class, sweep
from busi.model.masks import LesionRule, clean_mask


def _prob(seed: int = 0) -> np.ndarray:
    """A 40x40 map with a strong blob (peak 0.95, 36 px), a faint one (peak 0.6, 49 px)
    and noise below 0.3."""
    rng = np.random.default_rng(seed)
    prob = rng.uniform(0.0, 0.3, (40, 40))
    prob[2:8, 2:8] = 0.95
    prob[20:27, 20:27] = 0.6
    return prob


@pytest.mark.parametrize("keep", ["largest", "all"])
@pytest.mark.parametrize("threshold", [0.3, 0.5])
def test_a_gate_at_the_threshold_is_the_chain_s_rule(keep, threshold):
    prob = _prob()
    rule = LesionRule(threshold, 0.002, keep)
    assert np.array_equal(
        gated_mask(prob, threshold, threshold, 0.002, keep), clean_mask(prob, rule)
    )


def test_the_gate_drops_a_faint_component_and_keeps_the_strong_one_whole():
    prob = _prob()
    # without a gate the larger, faint blob is the largest component
    assert gated_mask(prob, 0.5, 0.5, 0.002, "largest")[23, 23]
    gated = gated_mask(prob, 0.5, 0.9, 0.002, "largest")
    assert not gated[23, 23]
    assert gated[2:8, 2:8].all()
    assert int(gated.sum()) == 36
    assert not gated_mask(prob, 0.5, 0.99, 0.002, "largest").any()


def test_the_sweep_scores_each_rule_as_the_stress_tests_do():
    strong, faint = _prob(0), _prob(1)
    strong[20:27, 20:27] = 0.1  # the lesion image: only the strong blob
    faint[2:8, 2:8] = 0.1  # the normal image: only the faint blob
    truth = [np.zeros((40, 40), bool), np.zeros((40, 40), bool)]
    truth[0][2:8, 2:8] = True
    rows = sweep([strong, faint], truth, ["benign", "normal"], "largest")
    by_rule = {(r["threshold"], r["min_peak"], r["min_area"]): r for r in rows}
    ungated, gated = by_rule[(0.5, 0.5, 0.002)], by_rule[(0.5, 0.7, 0.002)]
    assert ungated["normal_false_lesion_rate"] == 1.0
    assert gated["normal_false_lesion_rate"] == 0.0
    assert gated["lesion_not_found"] == 0.0
    assert gated["lesion_dice_mean"] == pytest.approx(1.0)
    assert all(r["min_peak"] >= r["threshold"] for r in rows)
    peaks = peaks_by_class([strong, faint], ["benign", "normal"], 0.5)
    assert peaks["lesion"]["quantiles"][0.5] == pytest.approx(0.95)
    assert peaks["normal"]["quantiles"][0.5] == pytest.approx(0.6)
