"""bench/bench_unet_screen.py: a U-Net scored alone as the stress tests score the chain,
and a candidate's criteria applied to it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench.bench_unet_screen import (
    matches_stress_test,
    parse_limits,
    reference_drops,
    render,
    segmentation_figures,
    training_history,
    verdict,
)


def _masks():
    """Two lesion images (a 4x4 lesion) and one normal image; the prediction finds the first
    lesion whole, half of the second, and marks the normal image."""
    truth = [np.zeros((10, 10), bool) for _ in range(3)]
    truth[0][:4, :4] = truth[1][:4, :4] = True
    pred = [truth[0].copy(), np.zeros((10, 10), bool), np.zeros((10, 10), bool)]
    pred[1][:2, :4] = True
    pred[2][6:9, 6:9] = True
    return truth, pred, ["benign", "malignant", "normal"]


def _result(dice_drop: float = 0.02, blank: bool = True) -> dict:
    unshifted = {"lesion_dice_mean": 0.8, "lesion_not_found": 0.1, "normal_false_lesion_rate": 0.3}
    shifted = {
        "lesion_dice_mean": 0.8 - dice_drop,
        "lesion_not_found": 0.2,
        "normal_false_lesion_rate": 0.3,
        "lesion_dice_mean_drop": dice_drop,
    }
    check = {"passed": blank, "detail": "no lesion on any" if blank else "lesion found"}
    return {
        "unshifted": unshifted,
        "shifts": {
            "gain_0.7": shifted,
            "contrast_0.6": {**shifted, "lesion_dice_mean": 0.73, "lesion_dice_mean_drop": 0.07},
        },
        "checks": {"blank_image": check},
    }


def test_segmentation_figures_are_the_stress_tests_definitions_on_a_known_answer():
    truth, pred, labels = _masks()
    out = segmentation_figures(truth, labels, pred)
    # Dice 1.0 and 2*8/(8+16) over the two lesion images; both found; the normal one marked
    assert out == {
        "lesion_dice_mean": pytest.approx((1.0 + 16 / 24) / 2),
        "lesion_not_found": 0.0,
        "normal_false_lesion_rate": 1.0,
    }
    pred[1][:] = False
    assert segmentation_figures(truth, labels, pred)["lesion_not_found"] == 0.5


def test_limits_are_parsed_and_bad_ones_refused():
    assert parse_limits(["lesion_not_found<=0.204", "lesion_dice_mean >= 0.6"]) == [
        ("lesion_not_found", "<=", 0.204),
        ("lesion_dice_mean", ">=", 0.6),
    ]
    with pytest.raises(SystemExit, match="FIGURE<=X"):
        parse_limits(["accuracy>=0.8"])  # the classifier's, not the U-Net's
    with pytest.raises(SystemExit, match="FIGURE<=X"):
        parse_limits(["lesion_not_found<0.2"])


def test_the_verdict_applies_checks_limits_and_the_reference_drops():
    drops = {"gain_0.7": 0.031, "contrast_0.6": 0.085}
    rows = verdict(_result(), ["blank_image"], parse_limits(["lesion_not_found<=0.1"]), drops, 0.05)
    assert [(r["criterion"], r["holds"]) for r in rows] == [
        ("blank_image passes", True),
        ("lesion_not_found", True),  # 0.1 <= 0.1
        ("Dice drop under gain_0.7", True),  # 0.02 <= max(0.05, 0.031)
        ("Dice drop under contrast_0.6", True),  # 0.07 <= max(0.05, 0.085)
    ]
    tighter = {"gain_0.7": 0.0, "contrast_0.6": 0.01}
    rows = verdict(_result(dice_drop=0.06, blank=False), ["blank_image"], [], tighter, 0.05)
    assert [r["holds"] for r in rows] == [False, False, False]
    # an undefined figure fails: the screen cannot vouch for it
    result = _result()
    result["unshifted"]["lesion_not_found"] = None
    assert not verdict(result, [], parse_limits(["lesion_not_found<=0.5"]), None, 0.05)[0]["holds"]
    with pytest.raises(SystemExit, match="not a check here"):
        verdict(_result(), ["drawn_lesion"], [], None, 0.05)
    with pytest.raises(SystemExit, match=r"no shift .contrast_0\.6."):
        verdict(_result(), [], [], {"gain_0.7": 0.0}, 0.05)


def test_the_verdict_of_numpy_figures_is_plain_json():
    result = _result()
    result["unshifted"]["lesion_not_found"] = np.float64(0.1)
    result["shifts"]["gain_0.7"]["lesion_dice_mean_drop"] = np.float32(0.02)
    result["checks"]["blank_image"]["passed"] = np.bool_(True)
    rows = verdict(result, ["blank_image"], parse_limits(["lesion_not_found<=0.2"]), None, 0.05)
    assert [type(r["holds"]) for r in rows] == [bool, bool]
    json.dumps(rows)


def test_reference_drops_come_from_a_chain_seeds_record():
    record = {
        "summary": {
            "stress": {
                "gain_0.7": {"lesion_dice_mean_drop": {"mean": 0.031}, "lesion_called_normal": {}},
                "jpeg_30": {"lesion_called_normal": {"mean": 0.1}},
            }
        }
    }
    assert reference_drops(record) == {"gain_0.7": 0.031}
    with pytest.raises(SystemExit, match="no per-shift Dice drops"):
        reference_drops({"summary": {}})


def test_a_screen_matches_the_pipeline_s_stress_file_only_when_every_figure_is_equal():
    result = _result()
    record = {"unshifted": {**result["unshifted"], "accuracy": 0.7}, "shifts": result["shifts"]}
    assert matches_stress_test(result, record)
    changed = json.loads(json.dumps(record))
    changed["shifts"]["gain_0.7"]["lesion_not_found"] = 0.3
    assert not matches_stress_test(result, changed)
    assert not matches_stress_test(result, {**record, "shifts": {"gain_0.7": {}}})


def _record(result: dict) -> dict:
    return {
        "date": "2026-12-04 17:00 UTC",
        "machine": "AMD EPYC (2 cores; family 23)",
        "commit": "abc1234",
        "workspace": "ws",
        "split": "val",
        "n_images": 3,
        "n_normal": 1,
        "rule": "threshold 0.5, min_area 0.002, keep largest",
        "tta_flip": True,
        "minutes": 1.5,
        "result": result,
        "matches_stress_test": None,
        "verdict": verdict(result, ["blank_image"], [], None, 0.05),
    }


def test_the_rendering_says_what_failed():
    text = render(_record(_result(blank=False)))
    assert "| contrast_0.6 | 0.730 | 0.200 | 0.300 | 0.070 |" in text
    assert "- blank_image: FAILED (lesion found)" in text
    assert "| blank_image passes | lesion found | passes | NO |" in text
    assert "Screen: 0 of 1 criteria hold: fails." in text


def test_the_training_history_gives_the_mean_change_between_epochs(tmp_path):
    history = tmp_path / "train_unet.csv"
    history.write_text(
        "epoch,val_false_lesion_rate,val_lesion_dice,val_score\n"
        "0,1.0,0.50,0.3\n1,0.4,0.60,0.52\n2,0.9,0.62,0.44\n3,0.9,0.58,0.4\n"
    )
    got = training_history(history)
    assert got["epochs"] == 4
    assert got["val_false_lesion_rate"] == [1.0, 0.4, 0.9, 0.9]
    assert got["val_false_lesion_rate_mean_jump"] == pytest.approx((0.6 + 0.5 + 0.0) / 3)
    assert got["val_lesion_dice_mean_jump"] == pytest.approx((0.10 + 0.02 + 0.04) / 3)
    record = {**_record(_result(blank=True)), "history": got}
    assert (
        "- val_false_lesion_rate: 1.00 0.40 0.90 0.90; mean change from one epoch to the "
        "next 0.367" in render(record)
    )
    # no log, or a single epoch: nothing to say
    assert training_history(tmp_path / "absent.csv") is None
    history.write_text("epoch,val_false_lesion_rate,val_lesion_dice\n0,1.0,0.5\n")
    assert training_history(history) is None


@pytest.mark.slow
def test_on_the_smoke_run_the_screen_equals_the_pipeline_s_stress_figures(
    smoke_run, tmp_path, monkeypatch
):
    """The screen scores a U-Net as stress_test_models scores the chain: on the smoke run's
    own stress split its figures equal metrics/stress_test.json; and the command writes its
    results with the verdict."""
    import bench.results_files as results_files
    from bench.bench_unet_screen import load_workspace, main, screen

    ws = smoke_run["workspace"]
    theirs = json.loads((ws / "metrics" / "stress_test.json").read_text())
    result = screen(**load_workspace(ws, theirs["split"])["screen_args"])
    assert matches_stress_test(result, theirs)
    # the lesion scores give the unshifted figures back at the workspace's threshold
    threshold = load_workspace(ws, theirs["split"])["crop"].threshold
    found = result["detection"]
    lesion, normal = np.asarray(found["lesion_scores"]), np.asarray(found["normal_scores"])
    assert np.mean(lesion < threshold) == pytest.approx(result["unshifted"]["lesion_not_found"])
    if normal.size:
        rate = result["unshifted"]["normal_false_lesion_rate"]
        assert np.mean(normal >= threshold) == pytest.approx(rate)
    assert 0.0 <= found["lesion_detection_auc"] <= 1.0
    assert set(result["checks"]) == {
        "blank_image",
        "lesion_free_tissue",
        "flip_invariance",
        "drawn_lesion",
    }

    monkeypatch.setattr(results_files, "RESULTS", tmp_path)
    reference = tmp_path / "reference.json"
    reference.write_text(
        json.dumps(
            {
                "summary": {
                    "stress": {
                        name: {"lesion_dice_mean_drop": {"mean": 1.0}} for name in theirs["shifts"]
                    }
                }
            }
        )
    )
    argv = ["--workspace", str(ws), "--name", "smoke", "--stress-reference", str(reference)]
    limits = ["lesion_not_found<=1.0", "lesion_dice_mean>=1.01"]  # the second cannot hold
    assert main([*argv, "--limit", *limits]) == 0
    record = json.loads((tmp_path / "unet_screen_smoke.json").read_text())
    assert record["split"] == "val"
    holds = [r["holds"] for r in record["verdict"]]
    assert holds == [True, False] + [True] * len(theirs["shifts"])
    text = (tmp_path / "unet_screen_smoke.md").read_text()
    assert f"Screen: {len(holds) - 1} of {len(holds)} criteria hold: fails." in text

    # Another lesion threshold for the same U-Net: said in the record, not compared with the
    # pipeline's figures (made at the workspace's threshold); a lower threshold keeps every
    # lesion found at the higher one, so fewer or as many are missed, and normal images get
    # as many false lesions or more.
    assert main([*argv, "--name", "smoke_t03", "--threshold", "0.3"]) == 0
    low = json.loads((tmp_path / "unet_screen_smoke_t03.json").read_text())
    assert low["rule"].startswith("threshold 0.3,")
    assert low["matches_stress_test"] is None
    low_figures, figures = low["result"]["unshifted"], result["unshifted"]
    assert low_figures["lesion_not_found"] <= figures["lesion_not_found"]
    assert low_figures["normal_false_lesion_rate"] >= figures["normal_false_lesion_rate"]
    with pytest.raises(SystemExit, match=r"--threshold 1\.5"):
        main([*argv, "--threshold", "1.5"])


def test_a_lesion_score_is_the_highest_threshold_at_which_the_rule_finds_a_lesion():
    from types import SimpleNamespace

    from bench.bench_unet_screen import lesion_score
    from busi.model.masks import clean_mask

    prob = np.zeros((64, 64), np.float32)
    prob[10:20, 10:20] = 0.7  # 100 pixels
    prob[12, 12:17] = 0.95  # a 5-pixel peak: under min_area 0.002 x 4096 = 9 pixels
    score = lesion_score(prob, 0.002)
    assert score == pytest.approx(0.7, abs=1e-4)
    for threshold, found in ((0.69, True), (0.71, False), (0.96, False)):
        rule = SimpleNamespace(threshold=threshold, min_area=0.002, keep="largest")
        assert bool(clean_mask(prob, rule).any()) is found
        assert (score >= threshold) is found
    assert lesion_score(np.zeros((64, 64), np.float32), 0.002) < 1e-4  # found only at 0
    prob[30:40, 30:40] = 1.0
    assert lesion_score(prob, 0.002) == 1.0


def test_detection_auc_and_the_misses_at_a_false_lesion_rate_by_hand():
    from bench.bench_unet_screen import detection_auc, not_found_at

    # pairs won by the lesion image: 0.9 twice, 0.5 over 0.1 and a tie with 0.5 (half),
    # 0.2 over 0.1: 4.5 of 6
    assert detection_auc([0.9, 0.5, 0.2], [0.5, 0.1]) == pytest.approx(0.75)
    assert detection_auc([0.9], []) is None
    lesion, normal = [0.9, 0.7, 0.5, 0.2], [0.8, 0.6, 0.3, 0.1]
    # at most 1 of 4 normal images marked: a threshold just above 0.6; 0.5 and 0.2 missed
    assert not_found_at(lesion, normal, 0.25) == pytest.approx(0.5)
    assert not_found_at(lesion, normal, 0.0) == pytest.approx(0.75)  # above 0.8
    assert not_found_at(lesion, normal, 0.5) == pytest.approx(0.25)  # above 0.3
    assert not_found_at(lesion, normal, 1.0) == 0.0  # every normal image may be marked


def test_the_folds_segmenters_are_the_mean_of_the_unet_and_or_its_fold_unets(tmp_path):
    import keras

    from bench.bench_unet_screen import load_segmenter
    from busi.model.unet import load_unet
    from busi.model.unet_training import ARCHITECTURES, build_unet

    (tmp_path / "models").mkdir()
    with pytest.raises(SystemExit, match="unknown"):
        load_segmenter(tmp_path, "unet+everything")
    paths = [tmp_path / "models/unet.keras"]
    paths += [tmp_path / f"models/unet_folds/fold-{k}.keras" for k in range(2)]
    for k, path in enumerate(paths):
        keras.utils.set_random_seed(k)  # three different U-Nets
        path.parent.mkdir(exist_ok=True)
        build_unet(16, ARCHITECTURES["compact"]).save(path)
    images = np.random.default_rng(0).uniform(0, 1, (2, 16, 16, 1)).astype(np.float32)
    each = [load_unet(path).predict(images, verbose=0) for path in paths]
    assert np.abs(each[0] - each[1]).max() > 1e-4  # else the mean could not differ
    alone = load_segmenter(tmp_path, "unet").predict(images, verbose=0)
    np.testing.assert_allclose(alone, each[0], atol=1e-6)
    averaged = load_segmenter(tmp_path, "unet+folds").predict(images, verbose=0)
    np.testing.assert_allclose(averaged, np.mean(each, axis=0), atol=1e-6)
    folds_only = load_segmenter(tmp_path, "folds").predict(images, verbose=0)
    np.testing.assert_allclose(folds_only, np.mean(each[1:], axis=0), atol=1e-6)
    assert np.abs(folds_only - averaged).max() > 1e-5  # the full U-Net is left out
    paths[2].unlink()  # one fold U-Net is no ensemble
    for segmenter in ("unet+folds", "folds"):
        with pytest.raises(SystemExit, match=r"1 models/unet_folds.*needs at least 2"):
            load_segmenter(tmp_path, segmenter)
    paths[1].unlink()
    with pytest.raises(SystemExit, match="run train_unet_folds there first"):
        load_segmenter(tmp_path, "unet+folds")
