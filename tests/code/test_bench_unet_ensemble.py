"""bench/bench_unet_ensemble.py: each seed's U-Net and the mean of their probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from bench.bench_unet_ensemble import (
    CHAIN_FIGURES,
    ensemble_figures,
    fold_figures,
    matches_evaluation,
    render,
    render_chain,
    render_folds,
    segment_latency,
)
from busi.model.masks import LesionRule

RULE = LesionRule(threshold=0.5, min_area=0.01, keep="largest")


def _maps():
    """Two lesion images (the lesion in the top-left 4x4 of a 10x10) and one normal image.
    Seed 0 finds both lesions and marks the normal image; seed 1 misses the second lesion
    and marks nothing; their mean is sure of the first lesion only."""
    truth = [np.zeros((10, 10), bool) for _ in range(3)]
    truth[0][:4, :4] = truth[1][:4, :4] = True
    lesion = truth[0].astype(float)
    false = np.zeros((10, 10))
    false[6:9, 6:9] = 1.0
    seed0 = [lesion * 0.9, lesion * 0.6, false * 0.8]
    seed1 = [lesion * 0.9, lesion * 0.2, false * 0.1]
    return {0: seed0, 1: seed1}, truth, ["benign", "malignant", "normal"]


def _result(figures: dict, machine: str = "AMD EPYC (2 cores)") -> dict:
    """A results record of two workspaces over the three images of ``_maps``."""
    return {
        "date": "2026-12-03",
        "machine": machine,
        "commit": "abc1234",
        "split": "val",
        "n_images": 3,
        "n_normal": 1,
        "rule": "threshold 0.5, min_area 0.01, keep largest",
        "workspaces": {"0": "a", "1": "b"},
        "figures": figures,
    }


def test_each_seed_and_their_mean_are_scored():
    probs, truth, labels = _maps()
    out = ensemble_figures(probs, truth, labels, RULE)
    assert list(out) == ["seed 0", "seed 1", "mean of 0+1"]
    assert out["seed 0"] == {
        "lesion_dice": 1.0,
        "normal_false_lesion_rate": 1.0,
        "lesion_not_found": 0.0,
    }
    assert out["seed 1"]["lesion_not_found"] == 0.5
    assert out["seed 1"]["normal_false_lesion_rate"] == 0.0
    # mean: lesion 1 at 0.9, lesion 2 at 0.4 (missed), the false lesion at 0.45 (gone)
    assert out["mean of 0+1"]["lesion_dice"] == pytest.approx(0.5)
    assert out["mean of 0+1"]["lesion_not_found"] == 0.5
    assert out["mean of 0+1"]["normal_false_lesion_rate"] == 0.0


def test_three_seeds_give_every_pair_and_the_triple():
    probs, truth, labels = _maps()
    probs[2] = probs[0]
    out = ensemble_figures(probs, truth, labels, RULE)
    assert [k for k in out if k.startswith("mean")] == [
        "mean of 0+1",
        "mean of 0+2",
        "mean of 1+2",
        "mean of 0+1+2",
    ]


def test_the_report_has_a_row_per_model_and_the_seeds_mean():
    probs, truth, labels = _maps()
    result = _result(ensemble_figures(probs, truth, labels, RULE))
    text = render(result)
    assert "| mean of 0+1 | 0.500 | 0.000 | 0.500 |" in text
    assert "| mean of the single seeds | 0.750 | 0.500 | 0.250 |" in text


def test_the_full_u_net_is_scored_with_each_fold_and_with_all_of_them():
    probs, truth, labels = _maps()
    maps = {"full": probs[0], "fold-0": probs[1], "fold-1": probs[1]}
    out = fold_figures(maps, truth, labels, RULE)
    assert list(out) == [
        "full",
        "fold-0",
        "fold-1",
        "full+fold-0",
        "full+fold-1",
        "full+fold-0+fold-1",
    ]
    # full + one fold is the mean of 0 and 1 above; with both folds the fold maps weigh
    # 2/3: lesion 2 at (0.6 + 0.2 + 0.2) / 3 = 0.33 is missed, the false lesion at 0.33 goes
    assert out["full+fold-0"] == ensemble_figures(probs, truth, labels, RULE)["mean of 0+1"]
    assert out["full+fold-0+fold-1"]["lesion_not_found"] == 0.5
    assert out["full+fold-0+fold-1"]["normal_false_lesion_rate"] == 0.0
    assert out["full"]["normal_false_lesion_rate"] == 1.0


def test_the_fold_report_gives_each_workspace_and_the_mean_of_each_member_set():
    probs, truth, labels = _maps()
    one = fold_figures({"full": probs[0], "fold-0": probs[1]}, truth, labels, RULE)
    two = fold_figures({"full": probs[1], "fold-0": probs[1]}, truth, labels, RULE)
    machine = "AMD EPYC (2 cores; family 25 model 1 stepping 1; avx avx2 fma f16c)"
    result = _result({"0": one, "1": two}, machine)
    text = render_folds(result)
    assert "family 25 model 1 stepping 1; avx avx2 fma f16c" in text
    assert "| 0 | full | 1.000 | 1.000 | 0.000 |" in text
    assert "| 1 | full | 0.500 | 0.000 | 0.500 |" in text
    # the full U-Net's mean over the two workspaces
    assert "| mean of 2 | full | 0.750 | 0.500 | 0.250 |" in text
    assert "| mean of 2 | full+fold-0 | 0.500 | 0.000 | 0.500 |" in text


def _chain_row(dice, called_normal, macro_f1, failed=()):
    row = dict.fromkeys(CHAIN_FIGURES, 0.5)
    row.update(lesion_dice_mean=dice, lesion_called_normal=called_normal, macro_f1=macro_f1)
    return {**row, "checks_failed": list(failed)}


def test_the_chain_table_pairs_each_workspace_s_segmenters_and_averages_the_differences():
    chain = {
        "0": {
            "full": {
                **_chain_row(0.60, 0.20, 0.70, ["flip_invariance"]),
                "matches_evaluation": True,
            },
            "full+fold-0": _chain_row(0.66, 0.10, 0.74, ["blank_image"]),
        },
        "1": {
            "full": {**_chain_row(0.70, 0.10, 0.80), "matches_evaluation": False},
            "full+fold-0": _chain_row(0.68, 0.10, 0.82),
        },
    }
    text = "\n".join(render_chain(chain))
    assert (
        "| 0 | full | 0.600 | 0.500 | 0.500 | 0.200 | 0.500 | 0.700 | 0.500 | flip_invariance |"
        in (text)
    )
    assert "| 1 | full+fold-0 | 0.680 |" in text
    assert "| 1 | full | 0.700 |" in text
    assert text.count("| none |") == 2
    assert "- lesion_dice_mean: +0.020 (+0.060, -0.020)" in text
    assert "- lesion_called_normal: -0.050 (-0.100, +0.000)" in text
    assert "- macro_f1: +0.030 (+0.040, +0.020)" in text
    assert "seed 0 yes; seed 1 NO" in text


def test_each_further_segmenter_gets_its_own_paired_differences_against_the_first():
    chain = {
        "0": {
            "full": _chain_row(0.60, 0.20, 0.70),
            "full+fold-0": _chain_row(0.66, 0.10, 0.74, ["blank_image"]),
            "gated full+fold-0": _chain_row(0.64, 0.15, 0.72),
        },
        "1": {
            "full": _chain_row(0.70, 0.10, 0.80),
            "full+fold-0": _chain_row(0.68, 0.10, 0.82),
            "gated full+fold-0": _chain_row(0.74, 0.10, 0.80),
        },
    }
    text = "\n".join(render_chain(chain))
    ungated = text.index("Paired difference (full+fold-0 minus full)")
    gated = text.index("Paired difference (gated full+fold-0 minus full)")
    assert ungated < gated
    assert "| 1 | gated full+fold-0 | 0.740 |" in text
    assert text[ungated:gated].count("- lesion_dice_mean:") == 1
    assert "- lesion_dice_mean: +0.020 (+0.060, -0.020)" in text[ungated:gated]
    assert "- lesion_dice_mean: +0.040 (+0.040, +0.040)" in text[gated:]
    assert "- lesion_called_normal: -0.025 (-0.050, +0.000)" in text[gated:]


def test_the_full_u_net_s_chain_is_checked_against_the_workspace_s_evaluation():
    figures = {
        "lesion_dice_mean": 0.6332,
        "normal_false_lesion_rate": 0.35,
        "accuracy": 0.76,
        "macro_f1": 0.75,
        "malignant_auc": 0.94,
        "checks_failed": ["flip_invariance"],
    }
    evaluation = {
        "headline": {
            "lesion_dice": 0.6332,
            "normal_false_lesion_rate": 0.35,
            "accuracy": 0.76,
            "macro_f1": 0.75,
            "malignant_auc": 0.94,
        },
        "behaviour": {"failed": ["flip_invariance"]},
    }
    assert matches_evaluation(figures, evaluation)
    assert not matches_evaluation({**figures, "macro_f1": 0.751}, evaluation)
    assert not matches_evaluation({**figures, "checks_failed": []}, evaluation)


def test_the_latency_of_a_segmenter_s_lite_copy_is_timed_per_image_and_reported():
    from busi.model.unet_training import ARCHITECTURES, build_unet

    unet = build_unet(32, ARCHITECTURES["compact"])
    images = [np.full((40, 50), 90, np.uint8), np.full((60, 30), 120, np.uint8)] * 2
    row = segment_latency(unet, images, 32, flip=True)
    assert row["images"] == 4
    assert 0 < row["p50_ms"] <= row["p95_ms"]
    result = {
        **_result({"0": {}}),
        "latency": {"seed": 0, "segmenters": {"full": row, "full+fold-0": row}},
    }
    text = render_folds(result)
    assert "Segmentation latency, seed 0's U-Nets" in text
    assert f"| full+fold-0 | {row['p50_ms']:.1f} | {row['p95_ms']:.1f} | 4 |" in text
