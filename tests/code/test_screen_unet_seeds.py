"""bench/screen_unet_seeds.py: a seed's summary from a screen record and a training log, the
paired comparison by hand, and criteria on both sides of their limits."""

from __future__ import annotations

import json

import pytest

from bench import screen_unet_seeds as sus


def screen(dice: float, not_found: float, false_lesions: float, drops: dict) -> dict:
    unshifted = {"lesion_dice_mean": dice, "lesion_not_found": not_found,
                 "normal_false_lesion_rate": false_lesions}  # fmt: skip
    shifts = {name: {**unshifted, "lesion_dice_mean_drop": d} for name, d in drops.items()}
    return {"result": {"unshifted": unshifted, "shifts": shifts, "checks": {}}}


def log(rates: list[float], dice: list[float], weight: float = 0.2) -> list[dict]:
    return [
        {"epoch": str(i), "val_false_lesion_rate": str(r), "val_lesion_dice": str(d),
         "val_score": str(d - weight * r)}
        for i, (r, d) in enumerate(zip(rates, dice, strict=True))
    ]  # fmt: skip


def row(false_lesions: float, not_found: float = 0.1, dice: float = 0.6, drop: float = 0.02):
    rows = log([0.8, 0.5], [0.5, dice])
    return sus.seed_row(screen(dice, not_found, false_lesions, {"blur": drop}), rows, None)


def test_seed_row_keeps_the_worst_shift_and_finds_the_epoch_kept():
    rows = log([0.9, 0.4, 0.6], [0.5, 0.62, 0.63])
    kept_score = 0.62 - 0.2 * 0.4  # epoch 1's val_score, as train_unet reports it
    out = sus.seed_row(
        screen(0.62, 0.1, 0.4, {"crop": 0.01, "gamma": 0.04, "blur": -0.01}), rows, kept_score
    )
    assert out["worst_shift"] == "gamma"
    assert out["worst_dice_drop"] == pytest.approx(0.04)
    assert out["epochs_run"] == 3
    assert out["epoch_kept"] == 1
    assert out["history"]["val_false_lesion_rate"] == [0.9, 0.4, 0.6]


def test_same_start_is_zero_over_the_shared_epochs_and_sees_a_difference():
    short = {"history": {"val_lesion_dice": [0.5, 0.6], "val_false_lesion_rate": [0.9, 0.8]}}
    longer = {"history": {"val_lesion_dice": [0.5, 0.6, 0.7],
                          "val_false_lesion_rate": [0.9, 0.8, 0.1]}}  # fmt: skip
    assert sus.same_start(longer, short) == 0.0
    other = {"history": {"val_lesion_dice": [0.5, 0.55], "val_false_lesion_rate": [0.9, 0.8]}}
    assert sus.same_start(other, short) == pytest.approx(0.05)


def test_compare_pairs_by_seed_by_hand():
    """Differences in false lesions -0.2, -0.3, -0.1 over seeds 0-2 (seed 3 only in the
    candidate, left out): mean -0.2, SD 0.1, SE 0.1 / sqrt(3), t(0.95, 2) = 2.920."""
    ours = {0: row(0.4), 1: row(0.3), 2: row(0.6), 3: row(0.0)}
    theirs = {0: row(0.6), 1: row(0.6), 2: row(0.7)}
    by_figure = {r["figure"]: r for r in sus.compare(ours, theirs)}
    fl = by_figure["normal_false_lesion_rate"]
    assert fl["seeds"] == [0, 1, 2]
    assert fl["difference"] == pytest.approx(-0.2)
    se = 0.1 / 3**0.5
    assert fl["se"] == pytest.approx(se)
    assert fl["upper_bound"] == pytest.approx(-0.2 + 2.919986 * se, abs=1e-5)
    assert fl["lower_bound"] == pytest.approx(-0.2 - 2.919986 * se, abs=1e-5)
    assert by_figure["lesion_not_found"]["difference"] == pytest.approx(0.0)


def test_verdict_better_within_and_mean_on_both_sides():
    ours = {0: row(0.4, 0.12), 1: row(0.3, 0.14), 2: row(0.6, 0.10)}
    theirs = {0: row(0.6, 0.10), 1: row(0.6, 0.10), 2: row(0.7, 0.10)}
    rows = sus.compare(ours, theirs)
    means = {f: sum(r[f] for r in ours.values()) / 3 for f in sus.FIGURES}
    out = sus.verdict(rows, means, ["normal_false_lesion_rate"],
                      {"lesion_not_found": 0.04}, {"worst_dice_drop": 0.05})  # fmt: skip
    assert [r["holds"] for r in out] == [True, False, True]
    json.dumps(out)  # the results file takes it (numpy's bools would not go)
    assert all(type(r["holds"]) is bool for r in out)
    # not found +0.02 +- 0.02 / sqrt(3) x 2.92: upper bound 0.054 > 0.04; within 0.06 it holds
    assert out[1]["value"] == pytest.approx(0.02 + 2.919986 * 0.02 / 3**0.5, abs=1e-5)
    looser = sus.verdict(rows, means, ["lesion_not_found"], {"lesion_not_found": 0.06},
                         {"worst_dice_drop": 0.01})  # fmt: skip
    assert [r["holds"] for r in looser] == [False, True, False]


def test_verdict_without_enough_shared_seeds_does_not_hold():
    rows = sus.compare({0: row(0.1)}, {0: row(0.9)})
    out = sus.verdict(rows, {}, ["normal_false_lesion_rate"], {}, {})
    assert out[0]["value"] is None
    assert not out[0]["holds"]


def test_render_shows_each_seed_the_means_and_the_verdict():
    ours = {0: row(0.4), 1: row(0.3)}
    theirs = {0: row(0.6), 1: row(0.7)}
    comparison = sus.compare(ours, theirs)
    means = {f: sum(r[f] for r in ours.values()) / 2 for f in sus.FIGURES}
    record = {
        "date": "2026-12-07 01:00 UTC", "machine": "a CPU", "commit": "abc", "split": "val",
        "seeds": [0, 1], "settings": ["train_unet.epochs=40"], "minutes": 1.0,
        "per_seed": {str(k): v for k, v in ours.items()}, "means": means,
        "reference": "ref.json", "confidence": 0.95, "comparison": comparison,
        "verdict": sus.verdict(comparison, means, ["normal_false_lesion_rate"], {}, {}),
    }  # fmt: skip
    text = sus.render(record)
    assert "| 0 | 2 | - | 0.600 | 0.100 | 0.400 | - | 0.020 (blur) | - | - |" in text
    assert "| mean | | | 0.600 | 0.100 | 0.350 | | 0.020 | - | |" in text
    # with the epoch kept known, the log's own false-lesion rate at it (row()'s log: 0.8, 0.5)
    kept = {**record, "per_seed": {"0": {**ours[0], "epoch_kept": 1}}}
    assert "| 0 | 2 | 1 | 0.600 | 0.100 | 0.400 | 0.500 | 0.020 (blur) | - | - |" in sus.render(
        kept
    )
    assert "| normal_false_lesion_rate | -0.300 |" in text
    assert "Screen: 0 of 1 criteria hold: fails." in text
    assert "not the workspace's" not in text
    assert "lesion threshold 0.5 (not the workspace's)" in sus.render({**record, "threshold": 0.5})
    # the log's false lesions are flip-averaged exactly when the screen set monitor_flip
    assert "at the epoch kept (no flip)" in text
    flipped = {**record, "settings": ["train_unet.epochs=40", "train_unet.monitor_flip=true"]}
    assert "at the epoch kept (flip-averaged)" in sus.render(flipped)


def test_main_refuses_a_comparison_without_reference_and_a_bad_figure():
    with pytest.raises(SystemExit, match="give --reference"):
        sus.main(["--name", "x", "--better", "normal_false_lesion_rate"])
    with pytest.raises(SystemExit, match="one of"):
        sus.main(["--name", "x", "--within", "accuracy=0.1"])
    with pytest.raises(SystemExit, match="no such file"):
        sus.main(["--name", "x", "--reference", "/nonexistent.json"])


def test_repro_under_parent_runs_up_to_a_stage_without_a_summary(tmp_path, monkeypatch):
    """stage: `dvc repro <stage>`, and an evaluation.json left from an earlier whole run is not
    taken for this run's summary."""
    import subprocess

    from busi.orchestration import workspace

    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "evaluation.json").write_text('{"headline": {"accuracy": 0.5}}')
    calls = []

    real_run = subprocess.run

    def fake_run(cmd, **kwargs):  # subprocess.run everywhere: only dvc's is faked
        if "dvc" not in cmd:
            return real_run(cmd, **kwargs)
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setenv("BUSI_TRACKING", "off")
    monkeypatch.setattr(workspace.subprocess, "run", fake_run)
    _, summary = workspace.repro_under_parent(tmp_path, "default", stage="train_unet")
    assert calls[-1][-2:] == ["repro", "train_unet"]
    assert summary == {}
    _, summary = workspace.repro_under_parent(tmp_path, "default")
    assert calls[-1][-1] == "repro"
    assert summary == {"headline": {"accuracy": 0.5}}


def test_verdict_reads_the_lower_bound_where_higher_is_better():
    """Dice up by 0.02, 0.03, 0.01: lower bound 0.02 - 2.92 x 0.01 / sqrt(3) = 0.003 > 0,
    better beyond noise; not worse by more than 0.01 either."""
    ours = {0: row(0.5, dice=0.62), 1: row(0.5, dice=0.63), 2: row(0.5, dice=0.61)}
    theirs = {0: row(0.5, dice=0.60), 1: row(0.5, dice=0.60), 2: row(0.5, dice=0.60)}
    rows = sus.compare(ours, theirs)
    out = sus.verdict(rows, {}, ["lesion_dice_mean"], {"lesion_dice_mean": 0.01}, {})
    assert out[0]["value"] == pytest.approx(0.02 - 2.919986 * 0.01 / 3**0.5, abs=1e-5)
    assert [r["holds"] for r in out] == [True, True]
    worse = sus.verdict(sus.compare(theirs, ours), {}, ["lesion_dice_mean"],
                        {"lesion_dice_mean": 0.01}, {})  # fmt: skip
    assert [r["holds"] for r in worse] == [False, False]


def test_threshold_names_the_files_and_a_reference_at_another_threshold_is_refused(tmp_path):
    assert sus.threshold_suffix(None) == ""
    assert sus.threshold_suffix(0.5) == "_t05"
    assert sus.threshold_suffix(0.35) == "_t035"
    reference = tmp_path / "ref.json"
    reference.write_text('{"threshold": null, "per_seed": {}}')
    with pytest.raises(SystemExit, match="compare at one threshold"):
        sus.main(["--name", "x", "--reference", str(reference), "--threshold", "0.5"])
    reference.write_text('{"threshold": 0.5, "per_seed": {}}')
    with pytest.raises(SystemExit, match="compare at one threshold"):
        sus.main(["--name", "x", "--reference", str(reference)])


def test_a_run_up_to_a_stage_is_tagged_so_in_mlflow(tmp_path, monkeypatch):
    """The parent run of a partial run says which stage it ran up to, so that it is not read
    as a whole pipeline run without figures."""
    import subprocess

    import mlflow

    from busi.orchestration import workspace

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("BUSI_TRACKING", "on")
    real_run = subprocess.run

    def fake_run(cmd, **kwargs):  # dvc pretends; git (the lineage tags) runs
        if "dvc" in cmd:
            return subprocess.CompletedProcess(cmd, 0)
        return real_run(cmd, **kwargs)

    monkeypatch.setattr(workspace.subprocess, "run", fake_run)
    run_id, _ = workspace.repro_under_parent(tmp_path, "default", stage="train_unet")
    assert mlflow.get_run(run_id).data.tags["repro_target"] == "train_unet"


def scored(false_lesions: float, lesion_scores: list[float], normal_scores: list[float]):
    from bench.bench_unet_screen import detection_auc

    out = row(false_lesions)
    out["lesion_scores"], out["normal_scores"] = lesion_scores, normal_scores
    out["lesion_detection_auc"] = detection_auc(lesion_scores, normal_scores)
    return out


def test_curve_figures_pair_the_misses_at_the_reference_s_false_lesion_rate():
    """Seed 0's reference marks 2 of 4 normal images at its threshold (rate 0.5): at the
    lowest threshold marking at most 2, it misses 1 of 4 lesion images (scores <= 0.3), the
    candidate none (<= 0.1): -0.25. Seed 1: the same U-Net both sides, 0. Mean -0.125, SE
    0.125."""
    ref = scored(0.5, [0.9, 0.7, 0.4, 0.2], [0.8, 0.6, 0.3, 0.1])
    moved = scored(0.25, [0.9, 0.7, 0.5, 0.45], [0.8, 0.2, 0.1, 0.05])
    assert sus.matched_not_found(moved, ref) == (0.0, 0.25)
    by_figure = {r["figure"]: r for r in sus.compare({0: moved, 1: ref}, {0: ref, 1: ref})}
    matched = by_figure["not_found_at_reference_false_lesions"]
    assert matched["difference"] == pytest.approx(-0.125)
    assert matched["se"] == pytest.approx(0.125)
    auc = by_figure["lesion_detection_auc"]
    assert ref["lesion_detection_auc"] == pytest.approx(10 / 16)  # pairs won: 4, 3, 2, 1
    assert moved["lesion_detection_auc"] == pytest.approx(13 / 16)  # 4, 3, 3, 3
    assert auc["difference"] == pytest.approx((13 / 16 - 10 / 16) / 2)
    held = sus.verdict(list(by_figure.values()), {}, ["lesion_detection_auc"], {}, {})
    assert held[0]["value"] == pytest.approx(auc["lower_bound"])
    # a seed screened before the lesion scores existed: no curve comparison at all
    rows = sus.compare({0: moved, 1: row(0.5)}, {0: ref, 1: ref})
    assert {r["figure"] for r in rows} == set(sus.FIGURES)
    assert sus.seed_means({0: moved, 1: ref})["lesion_detection_auc"] == pytest.approx(
        (13 / 16 + 10 / 16) / 2
    )
    assert "lesion_detection_auc" not in sus.seed_means({0: moved, 1: row(0.5)})


def test_the_curve_table_and_a_summary_written_again_from_its_record(tmp_path, monkeypatch):
    """Misses at the lowest threshold marking at most 10 / 25 / 50 % of the normal images,
    per seed, by hand: 10 normal images, 0.95 the highest; 10 % allows 1 marked (misses at
    or below the second, 0.8), 25 % 2 (below 0.6), 50 % 5 (below 0.3)."""
    import bench.results_files as results_files

    normal = [0.95, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.0]
    seed = scored(0.4, [0.9, 0.7, 0.55, 0.25], normal)
    lines = sus.curve_table({"0": seed, "1": seed})
    assert "| 0 | 0.750 | 0.500 | 0.250 |" in lines
    assert "| mean | 0.750 | 0.500 | 0.250 |" in lines
    assert sus.curve_table({"0": seed, "1": row(0.4)}) == []  # a seed without scores

    monkeypatch.setattr(results_files, "RESULTS", tmp_path)
    record = {
        "date": "2026-12-07 05:00 UTC", "machine": "a CPU", "commit": "abc", "split": "val",
        "seeds": [0], "settings": [], "minutes": 1.0, "per_seed": {"0": seed},
        "means": sus.seed_means({0: seed}), "reference": None, "confidence": 0.95,
        "comparison": [], "verdict": [],
    }  # fmt: skip
    (tmp_path / "unet_screen_seeds_x.json").write_text(json.dumps(record))
    (tmp_path / "unet_screen_seeds_x.md").write_text(
        "# t\n\n<!-- BEGIN GENERATED by bench/screen_unet_seeds.py: do not edit by hand -->\n"
        "OLD-SUMMARY\n<!-- END GENERATED -->\n\nA reading kept.\n"
    )
    assert sus.main(["--name", "x", "--render"]) == 0
    text = (tmp_path / "unet_screen_seeds_x.md").read_text()
    assert "| mean | 0.750 | 0.500 | 0.250 |" in text
    assert "OLD-SUMMARY" not in text
    assert text.endswith("A reading kept.\n")
    with pytest.raises(SystemExit, match="run the screen first"):
        sus.main(["--name", "absent", "--render"])


def test_a_folds_screen_trains_the_fold_unets_too_and_says_what_it_screened(tmp_path, monkeypatch):
    from components import run_pipeline

    calls = []
    monkeypatch.setattr(run_pipeline, "run", lambda *a, stage=None, **k: calls.append(stage))
    for segmenter, stages in sus.SEGMENTER_STAGES.items():
        calls.clear()
        ws = sus.train_unet_only("default", 1, tmp_path, {}, stages)
        assert ws == tmp_path / "seed-1" / "workspace"
        assert calls == list(stages), segmenter
    assert sus.SEGMENTER_STAGES["unet+folds"] == ("train_unet", "train_unet_folds")
    from bench.bench_unet_screen import SEGMENTERS

    assert tuple(sus.SEGMENTER_STAGES) == SEGMENTERS  # a stage list for every segmenter
    ours = {0: row(0.4)}
    record = {
        "date": "d", "machine": "m", "commit": "c", "split": "val", "seeds": [0],
        "settings": [], "minutes": 1.0, "per_seed": {"0": ours[0]},
        "means": {f: ours[0][f] for f in sus.FIGURES}, "reference": None,
        "confidence": 0.95, "comparison": [], "verdict": [],
    }  # fmt: skip
    assert "fold U-Nets" not in sus.render(record)
    folds = sus.render({**record, "segmenter": "unet+folds"})
    assert "segmenter: the mean of each U-Net and its fold U-Nets" in folds
    assert sus.SEGMENTER_STAGES["folds"] == ("train_unet_folds",)  # no full U-Net trained
    alone = sus.render({**record, "segmenter": "folds"})
    assert "segmenter: the mean of each seed's fold U-Nets, no full U-Net" in alone


def test_read_seed_takes_the_train_unet_log_only_for_segmenters_that_use_that_unet(
    tmp_path, monkeypatch
):
    """A folds-only screen leaves the workspace's full U-Net (perhaps trained with other
    settings) out, so its train_unet log must not become the seed's epochs."""
    from bench import bench_unet_screen, results_files

    monkeypatch.setattr(results_files, "RESULTS", tmp_path)
    ws = tmp_path / "ws"
    (ws / "plots").mkdir(parents=True)
    (ws / "metrics").mkdir()
    rows = log([0.9, 0.4, 0.6], [0.5, 0.62, 0.63])
    lines = ["epoch,val_false_lesion_rate,val_lesion_dice,val_score"]
    lines += [",".join(r[k] for k in lines[0].split(",")) for r in rows]
    (ws / "plots" / "train_unet.csv").write_text("\n".join(lines) + "\n")
    (ws / "metrics" / "train_unet.json").write_text(json.dumps({"val_score": 0.62 - 0.2 * 0.4}))
    screened = []

    def fake_screen(argv):
        screened.append(argv)
        name = argv[argv.index("--name") + 1]
        record = screen(0.6, 0.1, 0.3, {"blur": 0.02})
        (tmp_path / f"unet_screen_{name}.json").write_text(json.dumps(record))
        return 0

    monkeypatch.setattr(bench_unet_screen, "main", fake_screen)
    with_unet = sus.read_seed(ws, "a", segmenter="unet+folds")
    assert (with_unet["epochs_run"], with_unet["epoch_kept"]) == (3, 1)
    folds = sus.read_seed(ws, "b", segmenter="folds")
    assert (folds["epochs_run"], folds["epoch_kept"]) == (0, None)
    assert folds["history"] == {"val_lesion_dice": [], "val_false_lesion_rate": []}
    assert folds["lesion_dice_mean"] == pytest.approx(0.6)  # the screen itself is read
    assert [argv[argv.index("--segmenter") + 1] for argv in screened] == ["unet+folds", "folds"]


def test_pool_joins_the_parts_of_one_candidate_and_judges_them_as_one_screen(tmp_path, monkeypatch):
    """Seeds 0-1 and 2-3 screened in two calls, pooled: the paired comparison is the one of
    the four seeds by hand; parts of another candidate or host, or sharing a seed, are
    refused before anything is written."""
    from bench import results_files

    monkeypatch.setattr(results_files, "RESULTS", tmp_path)
    ours = {0: row(0.4), 1: row(0.3), 2: row(0.6), 3: row(0.2)}
    theirs = {0: row(0.6), 1: row(0.6), 2: row(0.7), 3: row(0.5)}

    def part(path, seeds, rows, **over):
        record = {
            "date": "d", "machine": "AMD (2 cores; f25)", "commit": "c", "split": "val",
            "seeds": seeds, "settings": ["a.b=1", "c.d=2"], "threshold": None,
            "segmenter": "folds", "minutes": 20.0,
            "per_seed": {str(s): rows[s] for s in seeds}, **over,
        }  # fmt: skip
        path.write_text(json.dumps(record))
        return str(path)

    first = part(tmp_path / "p1.json", [0, 1], ours)
    second = part(tmp_path / "p2.json", [2, 3], ours, settings=["c.d=2", "a.b=1"], commit="c2")
    reference = part(tmp_path / "ref.json", [0, 1, 2, 3], theirs, segmenter="unet")
    rule = ["--better", "normal_false_lesion_rate", "--mean-at-most", "worst_dice_drop=0.05"]
    assert sus.main(["--name", "x", "--pool", first, second, "--reference", reference, *rule]) == 0
    record = json.loads((tmp_path / "unet_screen_seeds_x.json").read_text())
    assert record["seeds"] == [0, 1, 2, 3]
    assert record["minutes"] == pytest.approx(40.0)
    assert (record["segmenter"], record["machine"]) == ("folds", "AMD (2 cores; f25)")
    assert record["pooled_from"] == [first, second]
    by_hand = {r["figure"]: r for r in sus.compare(ours, theirs)}
    pooled = {r["figure"]: r for r in record["comparison"]}
    rate = "normal_false_lesion_rate"
    assert pooled[rate]["difference"] == pytest.approx(-0.225)  # (-0.2 -0.3 -0.1 -0.3) / 4
    assert pooled[rate]["difference"] == pytest.approx(by_hand[rate]["difference"])
    assert pooled[rate]["upper_bound"] == pytest.approx(by_hand[rate]["upper_bound"])
    assert [c["holds"] for c in record["verdict"]] == [True, True]
    text = (tmp_path / "unet_screen_seeds_x.md").read_text()
    assert "Pooled" in text
    assert record["part_commits"] == ["c", "c2"]
    assert "(their commits: c, c2)" in text  # the parts ran at other commits than the pool
    assert "`" + second + "`" in text
    refusals = {
        "settings": part(tmp_path / "s.json", [2, 3], ours, settings=["a.b=1"]),
        "machine 'Intel": part(tmp_path / "m.json", [2, 3], ours, machine="Intel (2 cores)"),
        "segmenter 'unet'": part(tmp_path / "g.json", [2, 3], ours, segmenter="unet"),
        "seed 1 is in two parts": part(tmp_path / "o.json", [1, 2], ours),
    }
    older = json.loads((tmp_path / "g.json").read_text())
    del older["segmenter"]  # a screen from before --segmenter: the U-Net's
    (tmp_path / "g0.json").write_text(json.dumps(older))
    both = [str(tmp_path / "g0.json"), part(tmp_path / "g1.json", [0, 1], ours, segmenter="unet")]
    assert sus.main(["--name", "u", "--pool", *both, "--reference", reference, *rule]) == 0
    assert json.loads((tmp_path / "unet_screen_seeds_u.json").read_text())["segmenter"] == "unet"
    for message, other in refusals.items():
        (tmp_path / "unet_screen_seeds_y.json").unlink(missing_ok=True)
        with pytest.raises(SystemExit, match=message):
            sus.main(["--name", "y", "--pool", first, other, "--reference", reference, *rule])
        assert not (tmp_path / "unet_screen_seeds_y.json").exists()
    with pytest.raises(SystemExit, match="at least two"):
        sus.main(["--name", "y", "--pool", first])
    for given in (
        ["--set", "a.b=2"],
        ["--threshold", "0.5"],
        ["--segmenter", "folds"],
        ["--segmenter", "unet"],  # even the parts' own: they give it
    ):
        with pytest.raises(SystemExit, match="takes the settings, segmenter and threshold"):
            sus.main(["--name", "y", "--pool", first, second, *given])
    with pytest.raises(SystemExit, match="no such file"):
        sus.main(["--name", "y", "--pool", first, str(tmp_path / "absent.json")])
