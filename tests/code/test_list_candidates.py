"""bench/list_candidates.py: every val-split candidate in one table, reseeds pooled, grouped
by host type."""

from __future__ import annotations

import json

import pytest

from bench.list_candidates import candidate_of, collect, host_type, render

XEON = {"cpu": "Intel(R) Xeon(R) Processor", "cpu_isa": "family 6 model 207 stepping 2; avx"}
EPYC_OLD = {"cpu": "AMD EPYC"}


def _figure(values: dict[str, float]) -> dict:
    return {
        "mean": sum(values.values()) / len(values),
        "seeds": {seed: {"value": v, "low": None, "high": None} for seed, v in values.items()},
    }


def _record(machine, called_normal, dice_drop, changes=None, offsets=None, blank_fails=()):
    seeds = [str(s) for s in range(len(called_normal))]
    figures = {
        "lesion_dice": _figure(dict.fromkeys(seeds, 0.6)),
        "lesion_not_found": _figure(dict.fromkeys(seeds, 0.1)),
        "lesion_called_normal": _figure(dict(zip(seeds, called_normal, strict=True))),
        "normal_false_lesion_rate": _figure(dict.fromkeys(seeds, 0.3)),
        "macro_f1": _figure(dict.fromkeys(seeds, 0.75)),
        "malignant_auc": _figure(dict.fromkeys(seeds, 0.9)),
    }
    stress = {
        shift: {
            "lesion_dice_mean_drop": _figure(dict.fromkeys(seeds, drop)),
            "lesion_called_normal": _figure(dict.fromkeys(seeds, 0.1)),
        }
        for shift, drop in dice_drop.items()
    }
    behaviour = {s: (["blank_image"] if s in blank_fails else []) for s in seeds}
    return {
        "date": "2026-12-06",
        "machine": {**machine, "commit": "abc1234"},
        "profile": "default",
        "split": "val",
        "changes": changes or {},
        "seed_offsets": offsets or {},
        "summary": {
            "figures": figures,
            "stress": stress,
            "behaviour": behaviour,
            "n_seeds": len(seeds),
        },
    }


def _write(folder, name, record) -> None:
    (folder / f"chain_seeds_val_{name}.json").write_text(json.dumps(record))


def test_a_candidate_s_classifier_reseeds_are_pooled_into_one_row_with_every_run(tmp_path):
    change = {"crop_rois": {"threshold": 0.4}}
    drops = {"gamma_0.6": 0.02, "contrast_0.6": 0.08}
    _write(tmp_path, "cand_xeon", _record(XEON, [0.1, 0.2], drops, change, blank_fails=("1",)))
    _write(
        tmp_path,
        "cand_xeon_c100",
        _record(XEON, [0.3, 0.4], drops, change, offsets={"train_classifier": 100}),
    )
    rows, problems = collect(tmp_path)
    assert problems == []
    assert len(rows) == 1
    row = rows[0]
    assert row["candidate"] == "cand_xeon"
    assert row["runs"] == 4
    assert row["classifier_offsets"] == [0, 100]
    assert row["figures"]["lesion_called_normal"] == pytest.approx(0.25)
    assert row["worst_shift"] == "contrast_0.6"
    assert row["worst_dice_drop"] == pytest.approx(0.08)
    assert row["blank_image_passed"] == "3 of 4"
    assert row["settings"] == "crop_rois.threshold=0.4"
    assert row["host"] == "Intel Xeon f6 m207"


def test_hosts_are_separate_tables_and_files_that_cannot_be_pooled_are_named(tmp_path):
    _write(tmp_path, "base", _record(EPYC_OLD, [0.2], {"gamma_0.6": 0.1}))
    _write(tmp_path, "other_xeon", _record(XEON, [0.1], {"gamma_0.6": 0.03}))
    # one candidate's reseed made with other settings: not one candidate's runs
    _write(tmp_path, "mixed", _record(XEON, [0.1], {}, {"crop_rois": {"margin": 0.3}}))
    _write(
        tmp_path,
        "mixed_c100",
        _record(XEON, [0.1], {}, {"crop_rois": {"margin": 0.2}}, {"train_classifier": 100}),
    )
    (tmp_path / "chain_seeds_val_broken.json").write_text("{not json")
    rows, problems = collect(tmp_path)
    assert [r["candidate"] for r in rows] == ["base", "other_xeon"]
    assert rows[0]["host"] == "AMD EPYC (family not recorded)"
    assert rows[0]["settings"] == "(its commit's defaults)"
    assert len(problems) == 2
    assert any(p.startswith("mixed: its files were not pooled") for p in problems)
    assert any(p.startswith("chain_seeds_val_broken.json: not readable") for p in problems)
    text = render(rows, problems, "2026-12-06")
    assert "### AMD EPYC (family not recorded)" in text
    assert "### Intel Xeon f6 m207" in text
    assert "| `other_xeon` | 2026-12-06 | 1 | 0.600 | 10.0 % | 10.0 % | 30.0 % |" in text
    assert "- mixed: its files were not pooled" in text


def test_names_and_hosts_are_read_as_the_results_files_write_them(tmp_path):
    assert candidate_of(tmp_path / "chain_seeds_val_defaults_xeon_c200.json") == "defaults_xeon"
    assert candidate_of(tmp_path / "chain_seeds_val_t04_ens3_xeon_c1000.json") == "t04_ens3_xeon"
    assert candidate_of(tmp_path / "chain_seeds_val_cwnone_cseed100.json") == "cwnone_cseed100"
    assert host_type({"cpu": "AMD EPYC", "cpu_isa": "family 25 model 17 stepping 1"}) == (
        "AMD EPYC f25 m17"
    )
    assert host_type({}) == "unknown CPU (family not recorded)"
