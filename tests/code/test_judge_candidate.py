"""bench/judge_candidate.py: the val-split rule applied to two bench_chain_seeds.py results
files, on summaries the tests write (and once on two committed results files)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from bench import judge_candidate as jc

REPO = Path(__file__).resolve().parents[2]
MARGINS = {
    "not_found": 0.02,
    "called_normal": 0.02,
    "macro_f1": 0.01,
    "false_lesion": 0.05,
    "dice_drop": 0.05,
    "stress_called_normal": 0.05,
}
FIGURES = {
    "lesion_dice": 0.62,
    "lesion_not_found": 0.15,
    "lesion_called_normal": 0.12,
    "macro_f1": 0.75,
    "normal_false_lesion_rate": 0.40,
}


def summary(seeds=("0", "1", "2"), shift=None, behaviour=None, **figures) -> dict:
    """A bench_chain_seeds.py summary whose every seed has the same values: the figures above
    (or those given), two shifts, and the failed checks per seed."""
    values = {**FIGURES, **figures}
    shift = shift or {
        "contrast_0.6": {"lesion_dice_mean_drop": 0.08, "lesion_called_normal": 0.20},
        "blur_1.5": {"lesion_dice_mean_drop": 0.01, "lesion_called_normal": 0.14},
    }
    return {
        "figures": {
            name: {"mean": value, "seeds": {s: {"value": value} for s in seeds}}
            for name, value in values.items()
        },
        "stress": {
            name: {key: {"mean": v, "seeds": {s: v for s in seeds}} for key, v in keys.items()}
            for name, keys in shift.items()
        },
        "behaviour": {s: [] for s in seeds} if behaviour is None else behaviour,
        "n_seeds": len(seeds),
    }


def holds(rows: list[dict]) -> dict[str, bool]:
    return {row["criterion"]: row["holds"] for row in rows}


def test_a_candidate_like_the_reference_is_adopted_on_three_seeds():
    rows = jc.judge(summary(), summary(), ["blank_image"], MARGINS)
    # (a) once, (b) twice, (c), (d), (e), (f) twice per shift
    assert len(rows) == 1 + 2 + 1 + 1 + 1 + 2 * 2
    assert all(holds(rows).values())
    assert jc.decide(rows, 3, 3) == "adopt"
    assert jc.decide(rows, 2, 3) == "undecided"


@pytest.mark.parametrize(
    ("change", "failed"),
    [
        ({"lesion_not_found": 0.171}, "(b) lesion_not_found"),
        ({"lesion_called_normal": 0.141}, "(b) lesion_called_normal"),
        ({"macro_f1": 0.739}, "(c) macro_f1"),
        ({"normal_false_lesion_rate": 0.451}, "(d) normal_false_lesion_rate"),
    ],
)
def test_each_figure_fails_just_past_its_margin(change, failed):
    rows = jc.judge(summary(**change), summary(), [], MARGINS)
    assert [row["criterion"] for row in rows if not row["holds"]] == [failed]
    assert jc.decide(rows, 3, 3) == "not adopted"


def test_figures_at_their_margin_hold():
    at = summary(
        lesion_not_found=0.17, lesion_called_normal=0.14, macro_f1=0.74,
        normal_false_lesion_rate=0.45,
    )  # fmt: skip
    assert all(holds(jc.judge(at, summary(), [], MARGINS)).values())


def test_a_shift_may_drop_as_much_as_the_reference_or_the_bar_not_more():
    ref = summary()
    worse = copy.deepcopy(ref)
    # contrast: the reference dropped 0.08, over the 0.05 bar, so up to 0.08 holds
    worse["stress"]["contrast_0.6"]["lesion_dice_mean_drop"]["mean"] = 0.08
    # blur: the reference dropped 0.01, so the bar (0.05) is the limit
    worse["stress"]["blur_1.5"]["lesion_dice_mean_drop"]["mean"] = 0.051
    worse["stress"]["blur_1.5"]["lesion_called_normal"]["mean"] = 0.14 + 0.051
    got = holds(jc.judge(worse, ref, [], MARGINS))
    assert got["(f) Dice drop under contrast_0.6"] is True
    assert got["(f) Dice drop under blur_1.5"] is False
    assert got["(f) called normal under blur_1.5"] is False


def test_a_shift_the_candidate_lacks_fails():
    cand = summary()
    del cand["stress"]["blur_1.5"]
    got = holds(jc.judge(cand, summary(), [], MARGINS))
    assert got["(f) Dice drop under blur_1.5"] is False
    assert got["(f) called normal under contrast_0.6"] is True


def test_a_required_check_must_pass_in_every_seed():
    cand = summary(behaviour={"0": [], "1": ["blank_image"], "2": []})
    row = jc.judge(cand, summary(), ["blank_image"], MARGINS)[0]
    assert (row["value"], row["holds"]) == ("fails in 1 of 3", False)


@pytest.mark.parametrize(
    ("candidate", "reference", "worse"),
    [
        # fails in 2 of 3 candidate seeds, passes in 2 of 3 reference seeds
        ({"0": ["flip"], "1": ["flip"], "2": []}, {"0": ["flip"], "1": [], "2": []}, "flip"),
        # fails in only 1 of 3: not a majority
        ({"0": ["flip"], "1": [], "2": []}, {"0": [], "1": [], "2": []}, "none"),
        # the reference fails it in a majority too
        ({"0": ["flip"], "1": ["flip"], "2": []}, {"0": ["flip"], "1": ["flip"], "2": []}, "none"),
    ],
)
def test_checks_by_majority(candidate, reference, worse):
    rows = jc.judge(summary(behaviour=candidate), summary(behaviour=reference), [], MARGINS)
    row = next(r for r in rows if r["criterion"].startswith("(e)"))
    assert (row["value"], row["holds"]) == (worse, worse == "none")


def test_results_without_behaviour_cannot_pass_the_checks():
    cand = summary()
    del cand["behaviour"]
    rows = jc.judge(cand, summary(), ["blank_image"], MARGINS)
    not_recorded = [r["criterion"][:3] for r in rows if r["value"] == "not recorded"]
    assert not_recorded == ["(a)", "(e)"]
    assert not any(r["holds"] for r in rows if r["value"] == "not recorded")


def test_one_seed_is_paired_with_the_references_same_seed():
    ref = summary()
    ref["figures"]["macro_f1"]["seeds"]["1"]["value"] = 0.70
    ref["stress"]["blur_1.5"]["lesion_called_normal"]["seeds"]["1"] = 0.30
    cand = summary(seeds=("1",), macro_f1=0.72)
    rows = {r["criterion"]: r for r in jc.judge(cand, ref, [], MARGINS)}
    assert rows["(c) macro_f1"]["reference_same_seeds"] == pytest.approx(0.70)
    assert rows["(c) macro_f1"]["reference"] == pytest.approx(0.75)
    assert rows["(f) called normal under blur_1.5"]["reference_same_seeds"] == pytest.approx(0.30)
    assert jc.decide(list(rows.values()), 1, 3) == "undecided"


def _rows(cand: dict, ref: dict | None = None, required=()) -> dict[str, dict]:
    return {r["criterion"]: r for r in jc.judge(cand, ref or summary(), list(required), MARGINS)}


def test_a_partial_run_says_what_the_remaining_seeds_need():
    # one seed at macro-F1 0.72 against a limit of 0.74 on the 3-seed mean: the other two
    # need 0.75 on average, which they can reach, so nothing is settled yet
    rows = _rows(summary(seeds=("1",), macro_f1=0.72, lesion_not_found=0.10))
    f1 = rows["(c) macro_f1"]
    assert (f1["holds"], f1["settled"]) == (False, False)
    assert f1["needed"] == pytest.approx((0.74 * 3 - 0.72) / 2)
    found = rows["(b) lesion_not_found"]
    # 0.10 against 0.17: the other two may average up to 0.205 and it still holds
    assert (found["holds"], found["settled"], found["needed"]) == (
        True,
        False,
        pytest.approx(0.205),
    )
    assert jc.decide(list(rows.values()), 1, 3) == "undecided"
    # a complete run needs nothing more and every row is settled
    complete = _rows(summary())
    assert all(r["settled"] and r["needed"] is None for r in complete.values())


def test_a_mean_out_of_reach_is_not_adopted_before_the_last_seed():
    # macro-F1 0.20 in one seed: even 1.0 in both others gives a mean of 0.733 < 0.74
    rows = _rows(summary(seeds=("1",), macro_f1=0.20))
    assert rows["(c) macro_f1"]["settled"] is True
    assert jc.decide(list(rows.values()), 1, 3) == "not adopted"
    # 0.25 leaves room (the others would need 0.985): undecided
    rows = _rows(summary(seeds=("1",), macro_f1=0.25))
    assert rows["(c) macro_f1"]["needed"] == pytest.approx(0.985)
    assert jc.decide(list(rows.values()), 1, 3) == "undecided"
    # a rate far under its limit cannot fail any more: settled as holding
    rows = _rows(summary(seeds=("0", "1"), normal_false_lesion_rate=0.0))
    # (0 + 0 + 1.0) / 3 = 0.333 <= 0.45
    assert (
        rows["(d) normal_false_lesion_rate"]["holds"],
        rows["(d) normal_false_lesion_rate"]["settled"],
    ) == (True, True)


def test_a_dice_drop_may_be_negative_so_a_large_one_is_not_settled_early():
    def shift(drop: float) -> dict:
        return {"blur_1.5": {"lesion_dice_mean_drop": drop, "lesion_called_normal": 0.14}}

    cand = summary(seeds=("1",), shift=shift(0.40))
    # against a reference that dropped as much: the limit is its 0.40, and it holds
    assert _rows(cand, summary(shift=shift(0.40)))["(f) Dice drop under blur_1.5"]["holds"]
    # against one that dropped 0.01: the limit is the bar, 0.05 on the 3-seed mean, and the
    # other two seeds would need a mean drop of -0.125, inside [-1, 1]: not settled
    row = _rows(cand, summary(shift=shift(0.01)))["(f) Dice drop under blur_1.5"]
    assert (row["holds"], row["settled"]) == (False, False)
    assert row["needed"] == pytest.approx((0.05 * 3 - 0.40) / 2)


def test_a_failed_required_check_or_a_majority_already_failed_settles_the_verdict():
    cand = summary(seeds=("1",), behaviour={"1": ["blank_image"]})
    rows = _rows(cand, required=["blank_image"])
    assert rows["(a) blank_image passes in every seed"]["settled"] is True
    assert jc.decide(list(rows.values()), 1, 3) == "not adopted"
    # a check failed in 1 of 1 seed is not yet a majority of 3: (e) fails, unsettled
    rows = _rows(summary(seeds=("1",), behaviour={"1": ["flip"]}))
    e = rows["(e) no check the reference passes (majority) fails (majority)"]
    assert (e["holds"], e["settled"]) == (False, False)
    assert jc.decide(list(rows.values()), 1, 3) == "undecided"
    # failed in 2 of 2: a majority of 3 whatever the third seed does
    rows = _rows(summary(seeds=("0", "1"), behaviour={"0": ["flip"], "1": ["flip"]}))
    e = rows["(e) no check the reference passes (majority) fails (majority)"]
    assert (e["value"], e["holds"], e["settled"]) == ("flip", False, True)
    assert jc.decide(list(rows.values()), 2, 3) == "not adopted"


def test_called_normal_under_a_shift_may_be_judged_as_its_change_from_unshifted():
    # The reference: 12 % unshifted, 5 % under speckle (a change of -7 points), 20 % under
    # contrast (+8). The candidate: 16 % unshifted, 15 % under speckle, 25 % under contrast.
    def shifts(speckle: float, contrast: float) -> dict:
        return {
            "speckle_0.5": {"lesion_dice_mean_drop": 0.0, "lesion_called_normal": speckle},
            "contrast_0.6": {"lesion_dice_mean_drop": 0.0, "lesion_called_normal": contrast},
        }

    ref = summary(shift=shifts(0.05, 0.20), lesion_called_normal=0.12)
    cand = summary(shift=shifts(0.15, 0.25), lesion_called_normal=0.16)
    # as before: against the reference's figure under the shift plus 5 points
    level = holds(jc.judge(cand, ref, [], MARGINS))
    assert level["(f) called normal under speckle_0.5"] is False  # 0.15 > 0.10
    assert level["(f) called normal under contrast_0.6"] is True  # 0.25 <= 0.25
    # as a change: -1 point under speckle (limit max(0.05, -0.07)), +9 under contrast
    # (limit max(0.05, +0.08))
    rows = {r["criterion"]: r for r in jc.judge(cand, ref, [], MARGINS, 3, True)}
    speckle = rows["(f) called normal under speckle_0.5, change from unshifted"]
    contrast = rows["(f) called normal under contrast_0.6, change from unshifted"]
    assert speckle["value"] == pytest.approx(-0.01)
    assert speckle["holds"] is True
    assert speckle["reference"] == pytest.approx(-0.07)
    assert speckle["limit"] == "<= 0.050"
    assert contrast["value"] == pytest.approx(0.09)
    assert contrast["holds"] is False
    assert contrast["limit"] == "<= 0.080"
    # the unshifted level is still (b)'s: 0.16 against 0.14
    assert rows["(b) lesion_called_normal"]["holds"] is False
    # one seed of a change: the other two seeds' mean change, bounded by [-1, 1]
    one = {r["criterion"]: r for r in jc.judge(
        summary(seeds=("1",), shift=shifts(0.15, 0.25), lesion_called_normal=0.16),
        ref, [], MARGINS, 3, True,
    )}  # fmt: skip
    assert one["(f) called normal under contrast_0.6, change from unshifted"]["needed"] == (
        pytest.approx((0.08 * 3 - 0.09) / 2)
    )


def test_a_reference_without_a_figure_is_refused():
    ref = summary()
    del ref["figures"]["macro_f1"]
    with pytest.raises(SystemExit, match="no mean macro_f1"):
        jc.judge(summary(), ref, [], MARGINS)


def _write(path: Path, result_summary: dict, split: str = "val") -> Path:
    path.write_text(json.dumps({"profile": "default", "split": split, "summary": result_summary}))
    return path


def test_main_prints_the_verdict_and_exits_by_it(tmp_path, capsys):
    ref = _write(tmp_path / "ref.json", summary())
    good = _write(tmp_path / "good.json", summary())
    bad = _write(tmp_path / "bad.json", summary(macro_f1=0.70))
    one = _write(tmp_path / "one.json", summary(seeds=("1",)))
    assert jc.main([str(good), "--reference", str(ref), "--require", "blank_image"]) == 0
    assert capsys.readouterr().out.startswith("**adopt** (3 of the 3 seeds")
    assert jc.main([str(bad), "--reference", str(ref)]) == 1
    assert "fails: (c) macro_f1" in capsys.readouterr().out
    assert jc.main([str(one), "--reference", str(ref)]) == 2
    out = capsys.readouterr().out
    assert out.startswith("**undecided** (1 of the 3 seeds")
    # a partial run's table says what the remaining seeds need: macro-F1 0.75 in one seed
    # against 0.74 on the mean leaves the other two 0.735 on average
    assert "| (c) macro_f1 | 0.750 | >= 0.740 | 0.750 | 0.750 | yes | >= 0.735 |" in out
    bad_one = _write(tmp_path / "bad_one.json", summary(seeds=("1",), macro_f1=0.10))
    assert jc.main([str(bad_one), "--reference", str(ref)]) == 1
    assert "| **no** (for good) |" in capsys.readouterr().out
    # a margin is an option: with macro-F1 allowed 0.06 below, the bad one passes
    assert jc.main([str(bad), "--reference", str(ref), "--macro-f1", "0.06"]) == 0


def test_main_refuses_a_reference_run_another_way(tmp_path):
    ref = _write(tmp_path / "ref.json", summary(), split="test")
    cand = _write(tmp_path / "cand.json", summary())
    with pytest.raises(SystemExit, match="split is 'val', the reference's 'test'"):
        jc.main([str(cand), "--reference", str(ref)])
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(SystemExit, match="not a readable results file"):
        jc.main([str(tmp_path / "broken.json"), "--reference", str(ref)])


def test_two_committed_results_files():
    """cwnone_cseed100 (a classifier reseed) against the defaults on val, read from the files:
    its macro-F1 (0.718 against 0.750) and its blank check (failed in seeds 1 and 2), as its
    results file records them."""
    results = REPO / "bench" / "results"
    cand = jc.load(results / "chain_seeds_val_cwnone_cseed100.json")["summary"]
    ref = jc.load(results / "chain_seeds_val_repro.json")["summary"]
    rows = {r["criterion"]: r for r in jc.judge(cand, ref, ["blank_image"], MARGINS)}
    assert rows["(c) macro_f1"]["holds"] is False
    assert rows["(a) blank_image passes in every seed"]["value"] == "fails in 2 of 3"
    assert len(rows) == 1 + 4 + 1 + 2 * len(ref["stress"])


def _write_run(path: Path, result_summary: dict, offsets: dict, changes=None) -> Path:
    """A results file of one candidate's runs with its classifier reseeded by ``offsets``."""
    record = {
        "profile": "default",
        "split": "val",
        "changes": changes or {"train_classifier": {"gamma": 0.5}},
        "seed_offsets": offsets,
        "summary": result_summary,
    }
    path.write_text(json.dumps(record))
    return path


def test_reseeded_runs_are_pooled_each_run_once(tmp_path, capsys):
    """A candidate 0.02 short on macro-F1 (limit 0.74) in its three runs and 0.02 above it in
    six reseeded ones: the pool of nine holds (c) at their mean, (0.72 * 3 + 0.76 * 6) / 9 =
    0.747, each run counted once."""
    ref = _write(tmp_path / "ref.json", summary())
    base = _write_run(tmp_path / "c0.json", summary(macro_f1=0.72), {})
    reseeds = [
        _write_run(tmp_path / f"c{n}.json", summary(macro_f1=0.76), {"train_classifier": n})
        for n in (100, 200)
    ]
    assert jc.main([str(base), "--reference", str(ref)]) == 1
    capsys.readouterr()
    pooled = jc.pool([jc.load(p) for p in (base, *reseeds)])["summary"]
    assert pooled["n_seeds"] == 9
    runs = sorted(pooled["figures"]["macro_f1"]["seeds"])
    assert runs[:3] == ["0", "0+train_classifier=100", "0+train_classifier=200"]
    assert len(runs) == 9
    assert pooled["figures"]["macro_f1"]["mean"] == pytest.approx((0.72 * 3 + 0.76 * 6) / 9)
    assert pooled["figures"]["macro_f1"]["min"] == pytest.approx(0.72)
    stress = pooled["stress"]["contrast_0.6"]["lesion_called_normal"]
    assert len(stress["seeds"]) == 9
    assert len(pooled["behaviour"]) == 9
    assert jc.main([str(base), *map(str, reseeds), "--reference", str(ref)]) == 0
    assert capsys.readouterr().out.startswith("**adopt** (9 runs; the rule needs 3 seeds;")


def test_a_pooled_reference_pairs_run_by_run(tmp_path):
    """The parent reseeded the same way as the candidate: the reference's mean over the
    candidate's runs is the paired one; a reference without the reseeds has none."""
    parent = [
        _write_run(tmp_path / f"p{n}.json", summary(macro_f1=m), o, changes={"a": {"b": 1}})
        for n, m, o in ((0, 0.70, {}), (100, 0.80, {"train_classifier": 100}))
    ]
    cand = [
        _write_run(tmp_path / f"k{n}.json", summary(macro_f1=0.75), o)
        for n, o in ((0, {}), (100, {"train_classifier": 100}))
    ]
    pooled_cand = jc.pool([jc.load(p) for p in cand])["summary"]
    pooled_ref = jc.pool([jc.load(p) for p in parent])["summary"]
    rows = {r["criterion"]: r for r in jc.judge(pooled_cand, pooled_ref, [], MARGINS)}
    assert rows["(c) macro_f1"]["reference_same_seeds"] == pytest.approx(0.75)
    alone = jc.load(parent[0])["summary"]
    rows = {r["criterion"]: r for r in jc.judge(pooled_cand, alone, [], MARGINS)}
    assert rows["(c) macro_f1"]["reference_same_seeds"] is None


@pytest.mark.parametrize(
    "second, message",
    [
        ({"offsets": {}}, "both have run 0"),
        ({"changes": {"train_classifier": {"gamma": 0.9}}}, "its changes"),
        ({"drop": "macro_f1"}, "not the same figures"),
        ({"behaviour": False}, "some record the behavioural checks"),
    ],
)
def test_pooling_refuses_files_that_are_not_reseeds_of_one_candidate(tmp_path, second, message):
    first = _write_run(tmp_path / "a.json", summary(), {})
    other = summary()
    if "drop" in second:
        del other["figures"][second["drop"]]
    if second.get("behaviour") is False:
        other["behaviour"] = None
    b = _write_run(
        tmp_path / "b.json",
        other,
        second.get("offsets", {"train_classifier": 100}),
        changes=second.get("changes"),
    )
    with pytest.raises(SystemExit, match=message):
        jc.main([str(first), str(b), "--reference", str(first)])


def test_a_premise_that_figures_are_unchanged_is_checked_run_by_run(tmp_path, capsys):
    """--unchanged: a candidate that cannot move macro-F1 must equal the reference's run by
    run; one run off by more than the tolerance makes the verdict undecided, however the
    criteria stand, and the row names the run. The same mean with the runs swapped is no
    pairing."""
    ref = _write(tmp_path / "ref.json", summary())
    same = _write(tmp_path / "same.json", summary())
    assert jc.main([str(same), "--reference", str(ref), "--unchanged", "macro_f1"]) == 0
    out = capsys.readouterr().out
    assert "| (P) macro_f1 as the reference's, run by run | 0.000 |" in out
    moved = summary()
    moved["figures"]["macro_f1"]["seeds"]["1"] = {"value": 0.76}
    moved_path = _write(tmp_path / "moved.json", moved)
    assert jc.main([str(moved_path), "--reference", str(ref)]) == 0  # no premise: adopted
    capsys.readouterr()
    args = [str(moved_path), "--reference", str(ref), "--unchanged", "macro_f1", "accuracy"]
    assert jc.main(args) == 2
    out = capsys.readouterr().out
    assert out.startswith("**undecided**")
    assert "differs in 1" in out
    assert "| (P) accuracy as the reference's, run by run |  |" in out  # neither has it
    assert jc.main([*args[:-1], "--unchanged-tolerance", "0.02"]) == 0
    capsys.readouterr()
    swapped = summary()
    swapped["figures"]["macro_f1"]["seeds"]["0"] = {"value": 0.74}
    swapped["figures"]["macro_f1"]["seeds"]["2"] = {"value": 0.76}
    swapped_path = _write(tmp_path / "swapped.json", swapped)
    assert jc.main([str(swapped_path), "--reference", str(ref), "--unchanged", "macro_f1"]) == 2
    rows = jc.unchanged_rows(swapped, summary(), ["macro_f1"], 0.002)
    assert rows[0]["value"] == pytest.approx(0.01)
    assert rows[0]["holds"] is False


def _runs(values: dict[str, float]) -> dict:
    """A figure entry from {run key: value}, run keys as pool() writes them."""
    return {"seeds": {run: {"value": v} for run, v in values.items()}}


def test_runs_that_share_a_u_net_count_once_in_the_noise_of_a_difference():
    # U-Net seed 0: runs 0.10 and 0.20 (a classifier reseed) -> 0.15; seed 1: 0.05; seed 2: 0.25
    candidate = {
        "figures": {
            "lesion_called_normal": _runs(
                {"0": 0.10, "0+train_classifier=100": 0.20, "1": 0.05, "2": 0.25}
            )
        }
    }
    reference = {"figures": {"lesion_called_normal": _runs({"0": 0.10, "1": 0.12, "2": 0.08})}}
    assert jc.unet_seed_means(candidate["figures"]["lesion_called_normal"]) == pytest.approx(
        {"0": 0.15, "1": 0.05, "2": 0.25}
    )
    (row,) = jc.noise_rows(candidate, reference, MARGINS)
    assert row["figure"] == "lesion_called_normal"
    assert row["difference"] == pytest.approx(0.15 - 0.10)
    # variances over U-Net seed means: 0.01 (0.15, 0.05, 0.25) and 0.0004 (0.10, 0.12, 0.08)
    assert row["se"] == pytest.approx((0.01 / 3 + 0.0004 / 3) ** 0.5)
    assert row["unet_seeds"] == (3, 3)
    assert row["margin_under_2se"] is True  # 0.02 < 2 x 0.059


def test_a_tight_spread_or_a_single_u_net_seed_is_said_as_it_is():
    tight = {"figures": {"macro_f1": _runs({"0": 0.750, "1": 0.752, "2": 0.748})}}
    (row,) = jc.noise_rows(tight, tight, MARGINS)
    assert row["difference"] == pytest.approx(0.0)
    assert row["margin_under_2se"] is False  # 0.01 against 2 x 0.0016
    one = {"figures": {"macro_f1": _runs({"0": 0.75, "0+train_classifier=100": 0.70})}}
    (row,) = jc.noise_rows(one, tight, MARGINS)
    assert row["se"] is None
    assert row["margin_under_2se"] is None
    assert "| macro_f1 | -0.025 | 0.010 |  | 1, 3 | n/a |" in jc.render_noise([row])


def test_a_candidate_on_the_reference_s_own_u_nets_is_paired_by_u_net_seed():
    # the U-Net draw moves both alike (0.05-0.25); the candidate is 0.01-0.03 above in each
    reference = {"figures": {"lesion_called_normal": _runs({"0": 0.05, "1": 0.15, "2": 0.25})}}
    candidate = {
        "figures": {
            "lesion_called_normal": _runs(
                {"0": 0.06, "0+train_classifier=100": 0.06, "1": 0.17, "2": 0.28}
            )
        }
    }
    (unpaired,) = jc.noise_rows(candidate, reference, MARGINS)
    (paired,) = jc.noise_rows(candidate, reference, MARGINS, paired=True)
    assert paired["difference"] == pytest.approx(0.02)
    # differences 0.01, 0.02, 0.03: sd 0.01, SE 0.01 / sqrt(3)
    assert paired["se"] == pytest.approx(0.01 / 3**0.5)
    assert paired["margin_under_2se"] is False
    assert unpaired["se"] > 0.05
    assert unpaired["margin_under_2se"] is True
    assert jc.render_noise([paired]).startswith("Noise of the U-Net draws (paired by U-Net seed")


def test_files_of_other_u_net_seeds_at_the_same_offsets_are_pooled(tmp_path):
    """More U-Net seeds of one candidate in a file of their own (seeds 3-5 at offset 0 beside
    seeds 0-2 at offset 0): pooled, each run once; the same seed in both is refused."""
    first = _write_run(tmp_path / "a.json", summary(), {})
    more = _write_run(tmp_path / "b.json", summary(seeds=("3", "4"), macro_f1=0.80), {})
    pooled = jc.pool([jc.load(first), jc.load(more)])["summary"]
    assert sorted(pooled["figures"]["macro_f1"]["seeds"]) == ["0", "1", "2", "3", "4"]
    assert pooled["figures"]["macro_f1"]["mean"] == pytest.approx((0.75 * 3 + 0.80 * 2) / 5)
    again = _write_run(tmp_path / "c.json", summary(seeds=("2", "5")), {})
    with pytest.raises(SystemExit, match="both have run 2"):
        jc.pool([jc.load(first), jc.load(again)], ["a.json", "c.json"])


def spread(base: dict, figure: str, values: dict[str, float]) -> dict:
    """``base`` with ``figure``'s per-run values replaced (and its mean over them)."""
    out = copy.deepcopy(base)
    out["figures"][figure] = {
        "mean": sum(values.values()) / len(values),
        "seeds": {run: {"value": v} for run, v in values.items()},
    }
    return out


SIX = ("0", "1", "2", "3", "4", "5")


def test_welch_difference_and_its_degrees_of_freedom_by_hand():
    ours = {"0": 0.10, "1": 0.20, "2": 0.30}  # variance 0.01
    theirs = {"0": 0.10, "1": 0.12, "2": 0.08, "3": 0.10}  # variance 0.000267
    d, se, dof = jc.difference(ours, theirs)
    assert d == pytest.approx(0.20 - 0.10)
    a, b = 0.01 / 3, (0.0008 / 3) / 4
    assert se == pytest.approx((a + b) ** 0.5)
    assert dof == pytest.approx((a + b) ** 2 / (a**2 / 2 + b**2 / 3))
    assert jc.difference({"0": 0.1}, theirs)[1:] == (None, None)
    assert jc.difference({"0": 0.1, "1": 0.1}, {"0": 0.2, "1": 0.2}) == pytest.approx(
        (-0.1, 0.0, float("inf"))
    )


def test_non_inferiority_bounds_the_difference_on_its_worse_side():
    """called normal per U-Net seed: reference 0.08-0.16, candidate 0.02 above it in each;
    the bound d + t SE at 95 % (t from Welch's degrees of freedom) against the margin: 0.05
    holds, 0.03 does not; macro-F1's bound is d - t SE."""
    ref_values = dict(zip(SIX, (0.08, 0.12, 0.16, 0.10, 0.14, 0.12), strict=True))
    reference = spread(summary(seeds=SIX), "lesion_called_normal", ref_values)
    cand_values = {run: v + 0.02 for run, v in ref_values.items()}
    candidate = spread(summary(seeds=SIX), "lesion_called_normal", cand_values)
    d, se, dof = jc.difference(
        jc.unet_seed_means(candidate["figures"]["lesion_called_normal"]),
        jc.unet_seed_means(reference["figures"]["lesion_called_normal"]),
    )
    bound = 0.02 + jc.student_t.ppf(0.95, dof) * se
    assert d == pytest.approx(0.02)
    assert 0.03 < bound < 0.05
    rows = {
        r["criterion"].split(":")[0]: r
        for r in jc.bound_rows(candidate, reference, MARGINS | {"called_normal": 0.05}, 0.95)
    }
    row = rows["(b) lesion_called_normal"]
    assert row["value"] == pytest.approx(bound)
    assert row["holds"] is True
    rows = {
        r["criterion"].split(":")[0]: r
        for r in jc.bound_rows(candidate, reference, MARGINS | {"called_normal": 0.03}, 0.95)
    }
    assert rows["(b) lesion_called_normal"]["holds"] is False
    # every seed alike on macro-F1 (0.75 both sides): SE 0, bound 0 >= -0.01
    assert rows["(c) macro_f1"]["value"] == pytest.approx(0.0)
    assert rows["(c) macro_f1"]["holds"] is True
    worse = spread(candidate, "macro_f1", dict.fromkeys(SIX, 0.73))
    rows = {r["criterion"].split(":")[0]: r for r in jc.bound_rows(worse, reference, MARGINS, 0.95)}
    assert rows["(c) macro_f1"]["holds"] is False  # 0.02 below, margin 0.01


def test_better_beyond_noise_needs_an_improvement_past_its_bound():
    """(g): a candidate equal to the reference in every figure is not better on anything; one
    whose worst stress drop is 0.03 against the reference's 0.08 in every run is; a stress
    improvement within the noise is not."""
    reference = summary(seeds=SIX)
    row = jc.better_row(summary(seeds=SIX), reference, 0.95)
    assert row["holds"] is False
    robust = {
        "contrast_0.6": {"lesion_dice_mean_drop": 0.03, "lesion_called_normal": 0.20},
        "blur_1.5": {"lesion_dice_mean_drop": 0.01, "lesion_called_normal": 0.14},
    }
    row = jc.better_row(summary(seeds=SIX, shift=robust), reference, 0.95)
    assert row["holds"] is True
    assert row["value"] == "worst_stress_dice_drop +0.050"
    noisy = summary(seeds=SIX, shift=robust)
    drops = dict(zip(SIX, (0.00, 0.16, 0.00, 0.16, 0.00, 0.16), strict=True))  # mean 0.08
    noisy["stress"]["contrast_0.6"]["lesion_dice_mean_drop"]["seeds"] = drops
    assert jc.worst_drop_per_run(noisy)["seeds"]["0"] == pytest.approx(0.01)  # blur's
    ref_noisy = copy.deepcopy(reference)
    ref_noisy["stress"]["contrast_0.6"]["lesion_dice_mean_drop"]["seeds"] = dict(
        zip(SIX, (0.16, 0.0, 0.16, 0.0, 0.16, 0.02), strict=True)
    )
    assert jc.better_row(noisy, ref_noisy, 0.95)["holds"] is False


def test_main_with_confidence_needs_u_net_seeds_a_side(tmp_path, capsys):
    """--confidence: three U-Net seeds a side is undecided however the criteria stand, six
    decide; a required check failed in a run decides early (not adopted)."""
    robust = {
        "contrast_0.6": {"lesion_dice_mean_drop": 0.03, "lesion_called_normal": 0.20},
        "blur_1.5": {"lesion_dice_mean_drop": 0.01, "lesion_called_normal": 0.14},
    }
    args = ["--confidence", "0.95", "--require", "blank_image", "--seeds-needed", "3"]
    ref3 = _write(tmp_path / "ref3.json", summary())
    cand3 = _write(tmp_path / "cand3.json", summary(shift=robust))
    assert jc.main([str(cand3), "--reference", str(ref3), *args]) == 2
    out = capsys.readouterr().out
    assert out.startswith("**undecided**")
    assert "| (k) U-Net seeds a side (candidate, reference) | 3, 3 | >= 6 each |" in out
    ref6 = _write(tmp_path / "ref6.json", summary(seeds=SIX))
    cand6 = _write(tmp_path / "cand6.json", summary(seeds=SIX, shift=robust))
    assert jc.main([str(cand6), "--reference", str(ref6), *args]) == 0
    assert capsys.readouterr().out.startswith("**adopt**")
    same6 = _write(tmp_path / "same6.json", summary(seeds=SIX))
    assert jc.main([str(same6), "--reference", str(ref6), *args]) == 1  # (g): nothing better
    assert "fails: (g)" in capsys.readouterr().out
    failing = summary(shift=robust, behaviour={"0": ["blank_image"], "1": [], "2": []})
    failed = _write(tmp_path / "failed.json", failing)
    assert jc.main([str(failed), "--reference", str(ref3), *args]) == 1
    capsys.readouterr()
    with pytest.raises(SystemExit, match="one-sided level"):
        jc.main([str(cand6), "--reference", str(ref6), "--confidence", "95"])
