"""The seed benchmark's summary (bench/bench_chain_seeds.py) and the seeded scratch
workspace it runs each seed in."""

from __future__ import annotations

import json

import pytest
import yaml

from bench.bench_chain_seeds import (
    carried_seeds,
    check_results_file,
    keep_per_image,
    parse_changes,
    parse_reuse,
    read_seed,
    render,
    results_name,
    seed_settings,
    seeds_from_results,
    summarize,
)
from busi.orchestration.workspace import prepare_workspace
from tests.conftest import REPO_ROOT


def _evaluation(dice: float, auc: float, called_normal: float) -> dict:
    return {
        "headline": {
            "lesion_dice": dice,
            "normal_false_lesion_rate": 0.1,
            "accuracy": 0.8,
            "macro_f1": 0.78,
            "malignant_auc": auc,
        },
        "intervals": {
            "figures": {"lesion_dice": {"value": dice, "low": dice - 0.05, "high": dice + 0.04}}
        },
        "stress": {
            "unshifted": {"lesion_not_found": 0.12, "lesion_called_normal": called_normal / 2},
            "shifts": {
                "blur": {"lesion_dice_mean_drop": 0.02, "lesion_called_normal": called_normal}
            },
        },
    }


def test_the_unshifted_misses_are_figures_against_the_external_aims():
    summary = summarize({0: _evaluation(0.70, 0.93, 0.1), 1: _evaluation(0.80, 0.91, 0.3)})
    called = summary["figures"]["lesion_called_normal"]
    assert called["mean"] == pytest.approx(0.1)
    assert called["bar"] == ["<=", 0.10]
    assert called["mean_meets_bar"] is True
    assert called["seeds"][1] == {"value": 0.15, "low": None, "high": None}
    assert summary["figures"]["lesion_not_found"]["mean_meets_bar"] is False  # 0.12
    assert "| lesion_called_normal | 0.100 |" in render(
        {
            "machine": {"cpu": "x", "cores": 2, "commit": "c"},
            "date": "d",
            "profile": "default",
            "seeds": [0, 1],
            "minutes_per_seed": 1.0,
            "summary": summary,
        }
    )


def test_the_summary_gives_mean_range_each_seed_and_the_bar():
    first, second = _evaluation(0.70, 0.93, 0.05), _evaluation(0.80, 0.91, 0.2)
    first["behaviour"] = {"passed": True, "failed": []}
    second["behaviour"] = {"passed": False, "failed": ["lesion_free_tissue", "blank_image"]}
    summary = summarize({0: first, 1: second})
    assert summary["behaviour"] == {0: [], 1: ["blank_image", "lesion_free_tissue"]}
    dice = summary["figures"]["lesion_dice"]
    assert dice["mean"] == pytest.approx(0.75)
    assert (dice["min"], dice["max"]) == (0.70, 0.80)
    assert dice["seeds"][0] == {"value": 0.70, "low": pytest.approx(0.65), "high": 0.74}
    assert dice["mean_meets_bar"] is True  # >= 0.75
    auc = summary["figures"]["malignant_auc"]
    assert auc["mean"] == pytest.approx(0.92)
    assert auc["seeds"][1]["low"] is None  # no interval recorded: said, not invented
    blur = summary["stress"]["blur"]
    assert blur["lesion_called_normal"]["mean"] == pytest.approx(0.125)
    assert blur["lesion_called_normal"]["mean_meets_bar"] is False  # <= 0.10
    assert blur["lesion_dice_mean_drop"]["mean_meets_bar"] is True
    assert blur["lesion_called_normal"]["seeds"] == {0: 0.05, 1: 0.2}
    table = render(
        {
            "date": "2026-12-02",
            "machine": {"cpu": "AMD EPYC", "cores": 2, "commit": "abc"},
            "profile": "default",
            "seeds": [0, 1],
            "minutes_per_seed": 40.0,
            "summary": summary,
        }
    )
    assert "| lesion_dice | 0.750 | 0.700-0.800 |" in table
    assert "| blur | 0.020 (0.020-0.020) | 0.125 (0.050-0.200) |" in table
    assert (
        "Behavioural checks (the promotion guard's): 1 of 2 seeds pass (seed 0: passed; "
        "seed 1: failed blank_image, lesion_free_tissue)." in table
    )


def test_a_seeded_default_workspace_keeps_the_frozen_split_and_sets_the_seeds(tmp_path):
    ws = prepare_workspace(REPO_ROOT, "default", tmp_path / "ws", seed_settings(3))
    assert ws == (tmp_path / "ws").resolve()
    params = yaml.safe_load((ws / "params.yaml").read_text())
    for step in ("augment_data", "train_unet", "train_classifier"):
        assert params[step]["seed"] == 3
    project = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    assert params["train_unet"]["epochs"] == project["train_unet"]["epochs"]
    frozen = REPO_ROOT / "data" / "splits.csv"
    assert (ws / "data" / "splits.csv").read_bytes() == frozen.read_bytes()
    # without settings or a workspace the default profile is the project itself
    assert prepare_workspace(REPO_ROOT, "default") == REPO_ROOT


def test_a_reused_seed_is_read_from_a_run_s_metrics_folder_and_said_in_the_results(tmp_path):
    folder = tmp_path / "metrics"
    folder.mkdir()
    evaluation = _evaluation(0.7, 0.9, 0.1)
    stress = evaluation.pop("stress")
    (folder / "evaluation.json").write_text(json.dumps(evaluation))
    (folder / "stress_test.json").write_text(json.dumps(stress))
    assert parse_reuse(["0=" + str(folder)]) == {0: folder}
    assert read_seed(folder) == {**evaluation, "stress": stress}
    table = render(
        {
            "date": "2026-12-02",
            "machine": {"cpu": "AMD EPYC", "cores": 2, "commit": "abc"},
            "profile": "default",
            "seeds": [0, 1],
            "reused": {"0": "metrics"},
            "minutes_per_seed": 40.0,
            "summary": summarize({0: read_seed(folder), 1: _evaluation(0.8, 0.9, 0.1)}),
        }
    )
    assert "Seeds taken from an existing run (same code, data and params): 0 from `metrics`." in (
        table
    )


@pytest.mark.parametrize("item", ["0", "x=metrics", "=metrics"])
def test_a_reuse_without_seed_equals_folder_is_refused(item):
    with pytest.raises(SystemExit, match="write SEED=FOLDER"):
        parse_reuse([item])


def test_a_reused_folder_without_an_evaluation_is_refused(tmp_path):
    with pytest.raises(SystemExit, match=r"no evaluation\.json"):
        read_seed(tmp_path)


PARAMS = {
    "crop_rois": {"threshold": 0.5, "threshold_choice": "fixed"},
    "augment_data": {"crop": 0.0},
    "evaluate_models": {"split": "test"},
    "stress_test_models": {"split": "test"},
}


def test_a_candidate_is_the_params_with_its_changes_scored_on_the_split_asked():
    changes = parse_changes(
        ["crop_rois.threshold_choice=val", "augment_data.crop=0.5"], PARAMS, "val"
    )
    assert changes == {
        "crop_rois": {"threshold_choice": "val"},
        "augment_data": {"crop": 0.5},  # read as YAML: a number
        "evaluate_models": {"split": "val"},
        "stress_test_models": {"split": "val"},
    }
    settings = seed_settings(2, changes)
    assert settings["augment_data"] == {"crop": 0.5, "seed": 2}
    assert settings["train_unet"] == {"seed": 2}
    assert settings["evaluate_models"] == {"split": "val"}
    assert changes["augment_data"] == {"crop": 0.5}  # the candidate itself is left as it was


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("crop_rois.threshold", "write SECTION.KEY=VALUE"),
        ("threshold=0.3", "write SECTION.KEY=VALUE"),
        ("crop_rois.treshold=0.3", "params.yaml has no crop_rois.treshold"),
        ("evaluate_models.split=val", "use --split"),
    ],
)
def test_a_bad_change_is_refused_with_what_to_write(item, message):
    with pytest.raises(SystemExit, match=message):
        parse_changes([item], PARAMS)


def test_the_results_file_names_what_differs_from_the_default():
    assert results_name("default", "test", None) == "chain_seeds"
    assert results_name("smoke", "test", None) == "chain_seeds_smoke"
    assert results_name("default", "val", "peak") == "chain_seeds_val_peak"


def test_results_file_keeps_the_hand_written_part_and_names_its_script(tmp_path, monkeypatch):
    import bench.results_files as results_files

    monkeypatch.setattr(results_files, "RESULTS", tmp_path)
    md = tmp_path / "chain_seeds_val_base.md"
    md.write_text(
        "# Title\n\nWhat it means.\n"
        "<!-- BEGIN GENERATED by bench/bench_chain_seeds_val_base.py: do not edit by hand -->\n"
        "old figures\n<!-- END GENERATED -->\nMore words.\n"
    )
    results_files.write_results(
        "chain_seeds_val_base", "Title", {"a": 1}, "new figures", "bench/bench_chain_seeds.py"
    )
    text = md.read_text()
    assert text.startswith(
        "# Title\n\nWhat it means.\n<!-- BEGIN GENERATED by bench/bench_chain_seeds.py:"
    )
    assert "new figures\n<!-- END GENERATED -->\nMore words.\n" in text
    assert "old figures" not in text
    assert json.loads((tmp_path / "chain_seeds_val_base.json").read_text()) == {"a": 1}
    # A new file ends its generated part with a newline, so words appended by hand start a
    # line of their own (they ran on after the marker before).
    results_files.write_results("fresh", "Fresh", {}, "figures", "bench/bench_fresh.py")
    assert (tmp_path / "fresh.md").read_text().endswith("figures\n<!-- END GENERATED -->\n")
    # A file written by hand before the first run (a candidate's rule) has no generated
    # part: it gets one under its title, the words kept.
    rule = tmp_path / "rule.md"
    rule.write_text("# The rule\n\nWritten first.\n")
    results_files.write_results("rule", "Rule", {}, "run figures", "bench/bench_chain_seeds.py")
    text = rule.read_text()
    assert text.startswith("# The rule\n\n<!-- BEGIN GENERATED by bench/bench_chain_seeds.py")
    assert text.endswith("run figures\n<!-- END GENERATED -->\n\nWritten first.\n")
    bare = tmp_path / "bare.md"
    bare.write_text("No title.\n")
    results_files.write_results("bare", "Bare", {}, "f", "bench/bench_chain_seeds.py")
    assert bare.read_text().startswith("# Bare\n\n<!-- BEGIN GENERATED")
    assert bare.read_text().endswith("<!-- END GENERATED -->\nNo title.\n")


def test_a_seed_offset_reseeds_one_step_and_is_refused_for_others():
    from bench.bench_chain_seeds import parse_offsets, seed_settings

    offsets = parse_offsets(["train_classifier=100"])
    settings = seed_settings(2, {"crop_rois": {"margin": 0.3}}, offsets)
    assert settings["train_classifier"]["seed"] == 102
    assert settings["train_unet"]["seed"] == 2  # the U-Net and its data as without it
    assert settings["augment_data"]["seed"] == 2
    assert settings["crop_rois"] == {"margin": 0.3}
    for bad in ("crop_rois=1", "train_classifier", "train_classifier=x"):
        with pytest.raises(SystemExit, match="STEP=N"):
            parse_offsets([bad])


def test_the_results_header_names_the_cpu_s_family_and_instruction_sets():
    from bench.results_files import isa_note
    from busi.tracking import cpu_isa

    cpuinfo = (
        "processor\t: 0\ncpu family\t: 6\nmodel\t\t: 85\nstepping\t: 7\n"
        "flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw\n\n"
        "processor\t: 1\ncpu family\t: 6\nflags\t\t: fpu\n"
    )
    isa = cpu_isa(cpuinfo)
    assert isa == "family 6 model 85 stepping 7; avx avx2 fma avx512f avx512bw"
    assert cpu_isa("flags: sse2\n") == "none of avx/avx2/fma"
    record = {"date": "2026-12-03", "profile": "default", "seeds": [0], "minutes_per_seed": 1.0,
              "summary": summarize({0: _evaluation(0.8, 0.9, 0.1)})}  # fmt: skip
    machine = {"cpu": "Intel Xeon", "cores": 2, "commit": "abc"}
    assert isa_note(machine) == ""  # a record from before the flags were kept
    old = render({**record, "machine": machine})
    assert "on Intel Xeon (2 cores), commit abc" in old
    new = render({**record, "machine": {**machine, "cpu_isa": isa}})
    assert f"on Intel Xeon (2 cores; {isa}), commit abc" in new


def _record(per_seed: dict, changes: dict | None = None) -> dict:
    """A results record as main writes it, through JSON (string seed keys)."""
    record = {
        "profile": "default",
        "split": "val",
        "changes": {"train_unet": {"flat_negatives": 0.05}} if changes is None else changes,
        "seed_offsets": {},
        "seeds": sorted(per_seed),
        "summary": summarize(per_seed),
    }
    return json.loads(json.dumps(record))


def test_seeds_carried_from_a_results_file_give_its_summary_again():
    first, second = _evaluation(0.70, 0.93, 0.05), _evaluation(0.80, 0.91, 0.2)
    second["behaviour"] = {"passed": False, "failed": ["blank_image"]}
    record = _record({0: first, 1: second})
    rebuilt = seeds_from_results(record)
    assert sorted(rebuilt) == [0, 1]
    assert rebuilt[1]["behaviour"]["failed"] == ["blank_image"]
    assert rebuilt[0]["stress"]["shifts"]["blur"]["lesion_called_normal"] == 0.05
    assert json.loads(json.dumps(summarize(rebuilt))) == record["summary"]
    # a third seed trained now is summarised with the carried two
    both = summarize({**rebuilt, 2: _evaluation(0.75, 0.92, 0.1)})
    assert both["figures"]["lesion_dice"]["mean"] == pytest.approx(0.75)
    assert both["stress"]["blur"]["lesion_called_normal"]["seeds"] == {0: 0.05, 1: 0.2, 2: 0.1}


def test_carrying_refuses_another_candidate_and_files_without_per_seed_stress(tmp_path):
    path = tmp_path / "chain_seeds_val_x.json"
    changes = {"train_unet": {"flat_negatives": 0.05}}
    path.write_text(json.dumps(_record({0: _evaluation(0.7, 0.9, 0.1)}, changes)))
    assert list(carried_seeds(path, "default", "val", changes, {})) == [0]
    with pytest.raises(SystemExit, match="another candidate"):
        carried_seeds(path, "default", "val", {"train_unet": {"flat_negatives": 0.1}}, {})
    with pytest.raises(SystemExit, match="another candidate"):
        carried_seeds(path, "default", "test", changes, {})
    old = json.loads(path.read_text())
    del old["summary"]["stress"]["blur"]["lesion_called_normal"]["seeds"]
    path.write_text(json.dumps(old))
    with pytest.raises(SystemExit, match="before each seed's stress figures were kept"):
        carried_seeds(path, "default", "val", changes, {})
    with pytest.raises(SystemExit, match="no such results file"):
        carried_seeds(tmp_path / "missing.json", "default", "val", changes, {})


def test_a_run_of_reused_and_carried_seeds_trains_nothing_and_names_where_each_came_from(
    tmp_path, monkeypatch
):
    """main with seed 0 from a metrics folder and seed 1 from an earlier results file: no
    seed is trained, and the results say both and summarise both."""
    import sys

    import bench.bench_chain_seeds as chain_seeds
    import bench.results_files as results_files

    folder = tmp_path / "metrics"
    folder.mkdir()
    evaluation = {**_evaluation(0.7, 0.9, 0.1), "split": "val"}
    (folder / "stress_test.json").write_text(json.dumps(evaluation.pop("stress")))
    (folder / "evaluation.json").write_text(json.dumps(evaluation))
    earlier = tmp_path / "earlier.json"
    record = _record({1: _evaluation(0.8, 0.9, 0.1)}, changes={})
    earlier.write_text(json.dumps(record))
    monkeypatch.setattr(results_files, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(
        chain_seeds, "run_seed", lambda *a, **k: pytest.fail("no seed should be trained")
    )
    argv = ["bench_chain_seeds.py", "--split", "val", "--name", "x", "--seeds", "0", "1"]
    argv += ["--reuse", f"0={folder}", "--carry", str(earlier)]
    monkeypatch.setattr(sys, "argv", argv)
    assert chain_seeds.main() == 0
    written = json.loads((tmp_path / "results" / "chain_seeds_val_x.json").read_text())
    assert written["seeds"] == [0, 1]
    assert written["minutes_per_seed"] is None
    assert written["reused"] == {"0": str(folder), "1": f"{earlier} (an earlier run)"}
    assert written["summary"]["figures"]["lesion_dice"]["mean"] == pytest.approx(0.75)


def test_a_results_file_of_another_candidate_or_with_seeds_this_run_drops_is_refused(tmp_path):
    path = tmp_path / "chain_seeds_val_x.json"
    check_results_file(path, "default", "val", {}, {}, {0})  # no file yet: nothing to lose
    path.write_text(json.dumps(_record({0: _evaluation(0.7, 0.9, 0.1)}, changes={})))
    check_results_file(path, "default", "val", {}, {}, {0, 1})  # carried on: kept
    reseed = {"train_classifier": 100}
    with pytest.raises(SystemExit, match=r"another candidate's runs.*--name of its own"):
        check_results_file(path, "default", "val", {}, reseed, {0, 1})
    with pytest.raises(SystemExit, match=r"seeds \[0\] that this run would drop.*--carry"):
        check_results_file(path, "default", "val", {}, {}, {1})


def test_a_classifier_reseed_under_the_candidates_own_name_stops_before_training(
    tmp_path, monkeypatch
):
    """The mistake that cost session 21 two records: --seed-offset with the name (and so the
    results file) of the candidate's offset-0 runs, carrying the reseed's own file."""
    import sys

    import bench.bench_chain_seeds as chain_seeds
    import bench.results_files as results_files

    results = tmp_path / "results"
    results.mkdir()
    own = results / "chain_seeds_val_x.json"
    own.write_text(json.dumps(_record({0: _evaluation(0.7, 0.9, 0.1)}, changes={})))
    reseeds = tmp_path / "chain_seeds_val_x_c100.json"
    record = _record({0: _evaluation(0.8, 0.9, 0.1)}, changes={})
    reseeds.write_text(json.dumps({**record, "seed_offsets": {"train_classifier": 100}}))
    before = own.read_text()
    monkeypatch.setattr(results_files, "RESULTS", results)
    monkeypatch.setattr(chain_seeds, "run_seed", lambda *a, **k: pytest.fail("trained"))
    argv = ["bench_chain_seeds.py", "--split", "val", "--name", "x", "--seeds", "1"]
    argv += ["--carry", str(reseeds), "--seed-offset", "train_classifier=100"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit, match="another candidate's runs"):
        chain_seeds.main()
    assert own.read_text() == before


def test_a_runs_per_image_table_is_kept_beside_the_results_before_a_reseed_overwrites_it(
    tmp_path,
):
    workspace = tmp_path / "seed-2" / "workspace"
    dest = tmp_path / "results" / "per_image" / "chain_seeds_val_x_c100_seed2.csv"
    assert keep_per_image(workspace, dest) is None  # no table written: nothing kept
    table = workspace / "plots" / "evaluation" / "per_image.csv"
    table.parent.mkdir(parents=True)
    table.write_text("id,class,predicted\nbenign/benign (61),benign,normal\n")
    assert keep_per_image(workspace, dest) == dest
    table.write_text("id,class,predicted\nbenign/benign (61),benign,benign\n")  # the reseed
    assert "benign,normal" in dest.read_text()
