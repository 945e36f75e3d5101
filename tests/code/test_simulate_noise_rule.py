"""bench/simulate_noise_rule.py: the noise-sized rule's pass rate under simulated U-Net draws,
against judge_candidate's own bound."""

from __future__ import annotations

import numpy as np
import pytest

from bench import judge_candidate as jc
from bench import simulate_noise_rule as sim

CN = [("lesion_called_normal", "<=", 0.05)]


def test_one_trial_is_judged_as_judge_candidate_bounds_it():
    """The same draws (the generator's first 2 x 6 values) judged by judge_candidate's
    difference and one-sided t: the simulation's verdict for that trial agrees, for margins
    on both sides of the bound."""
    for seed in range(5):
        draws = np.random.default_rng(seed).normal(0.0, 0.05, (2, 6))
        ours = {str(i): v + 0.02 for i, v in enumerate(draws[0])}
        theirs = {str(i): v for i, v in enumerate(draws[1])}
        d, se, dof = jc.difference(ours, theirs)
        bound = d + jc.one_sided_quantile(0.95, dof) * se
        for margin in (bound - 1e-6, bound + 1e-6):
            crit = [("lesion_called_normal", "<=", margin)]
            rate = sim.pass_rate(
                {"lesion_called_normal": 0.05},
                crit,
                {"lesion_called_normal": 0.02},
                6,
                0.95,
                1,
                seed,
            )
            assert rate == (1.0 if margin > bound else 0.0)


def test_no_spread_passes_within_the_margin_and_fails_past_it():
    sds = {"lesion_called_normal": 1e-9}
    assert sim.pass_rate(sds, CN, {"lesion_called_normal": 0.04}, 6, 0.95, 200, 0) == 1.0
    assert sim.pass_rate(sds, CN, {"lesion_called_normal": 0.06}, 6, 0.95, 200, 0) == 0.0


def test_a_candidate_worse_by_the_margin_passes_about_one_time_in_twenty_at_most():
    sds = {"lesion_called_normal": 0.05}
    worse = sim.pass_rate(sds, CN, {"lesion_called_normal": 0.05}, 6, 0.95, 20000, 0)
    equal = sim.pass_rate(sds, CN, {}, 6, 0.95, 20000, 0)
    assert worse < 0.06
    assert equal > worse + 0.2
    macro = [("macro_f1", ">=", 0.03)]
    assert sim.pass_rate({"macro_f1": 0.02}, macro, {"macro_f1": -0.03}, 6, 0.95, 20000, 0) < 0.06


def test_scenarios_are_parsed_or_refused():
    figures = ["lesion_called_normal", "macro_f1"]
    assert sim.parse_scenario("equal=", figures) == ("equal", {})
    assert sim.parse_scenario("w=lesion_called_normal:0.05,macro_f1:-0.01", figures) == (
        "w",
        {"lesion_called_normal": 0.05, "macro_f1": -0.01},
    )
    with pytest.raises(SystemExit, match="NAME=FIGURE:SHIFT"):
        sim.parse_scenario("no_equals", figures)
    with pytest.raises(SystemExit, match="is not FIGURE:SHIFT"):
        sim.parse_scenario("x=dice:0.1", figures)
