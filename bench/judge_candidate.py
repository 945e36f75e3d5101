"""Judge a candidate chain against a reference by the rule its results file states: the
criteria the project's candidates are judged by on the val split (issue 13: choose on val
and the stress tests, never on test), applied to two bench_chain_seeds.py results files.

    python bench/judge_candidate.py bench/results/chain_seeds_val_sitenorm_flatneg.json \
        --reference bench/results/chain_seeds_val_repro.json --require blank_image

The criteria, on the means over each file's seeds (the margins are options; the defaults are
the rule the sitenorm, flatneg and sitenorm_flatneg candidates were written under):
- (a) every ``--require`` check passes in every seed of the candidate;
- (b) lesion not found and lesion called normal at most ``--not-found`` and
  ``--called-normal`` above the reference's;
- (c) macro-F1 at least the reference's minus ``--macro-f1``;
- (d) normal images with a false lesion at most ``--false-lesion`` above the reference's;
- (e) no behavioural check that passes in a majority of the reference's seeds fails in a
  majority of the candidate's;
- (f) under every shift: the Dice drop at most max(``--dice-drop``, the reference's mean
  drop under it), and lesion called normal at most ``--stress-called-normal`` above the
  reference's mean under it; or, with ``--called-normal-change``, called normal's change
  from the candidate's own unshifted figure at most max(``--stress-called-normal``, the
  reference's mean change under it) (the unshifted level is (b)'s). The shifts are the
  reference's: one the candidate lacks fails, one only the candidate has is not judged.

With ``--confidence C`` (the rule of ``bench/results/rule_unet_candidates_noise.md``) the
unit is the U-Net seed (each seed's figure the mean of its runs, counted once): (b)-(d) hold
when the one-sided C bound of the difference on the worse side is within the margin
(non-inferiority: a candidate worse by the margin passes at most 1 - C of the time), (g) asks
the candidate to be better than the reference beyond noise on at least one figure (the worst
stress Dice drop or one of (b)-(d)'s), and (k) asks for ``--unet-seeds-needed`` U-Net seeds a
side (default 6): with fewer the verdict is "undecided" unless a failure no seed can mend
(a required check failed in a run) has happened.

With ``--unchanged FIGURE ...`` the rule has a premise (P): a candidate that cannot move
those figures (a veto that empties masks cannot change a class) must leave each equal to the
reference's same run within ``--unchanged-tolerance``; where one differs the comparison is
not the one the rule describes (e.g. a step did not reproduce), and the verdict is
"undecided" whatever the criteria say.

The verdict is "adopt" only when every criterion holds and the candidate has at least
``--seeds-needed`` seeds (default 3): one seed moves these figures as much as the settings do
(``chain_seeds_val_repro.md``). With fewer seeds it is "undecided", unless a criterion has
already failed for good: a required check failed in a seed, a check failed in a majority of
the seeds to come, or a mean that no values of the remaining seeds could bring within its
limit (rates and macro-F1 lie in [0, 1], a Dice drop in [-1, 1]). Then it is "not adopted",
and the remaining seeds need not be run. For a partial run each figure's row also says what
mean the remaining seeds would need for it to hold. Where the reference has the candidate's
seeds, each row also gives the reference's mean over those seeds alone, so that a partial
run can be read paired. Prints a Markdown table; the exit status is 0 for adopt, 1 for not
adopted, 2 for undecided.

Below the verdict, not part of it, a second table says how far (b)-(d) stand from the noise
of the U-Net draws: each figure's difference of means, its margin, and the standard error of
the difference with the whole-chain seed as the unit (runs that share a U-Net count once).
Where a margin is under two standard errors, the criterion cannot tell a candidate equal to
the reference from one worse by the margin: its verdict is the draw's.

Several files for the candidate (or the reference) are pooled: runs of one candidate that
differ only in a step's seed offset (``bench_chain_seeds.py --seed-offset
train_classifier=100``), e.g. more classifier seeds on the same U-Nets. Each run counts once,
keyed by its seed and offset (``0``, ``0+train_classifier=100``), and the means are over all
of them; two pools with the same runs are paired run by run:

    python bench/judge_candidate.py bench/results/chain_seeds_val_X.json \
        bench/results/chain_seeds_val_X_c100.json bench/results/chain_seeds_val_X_c200.json \
        --reference bench/results/chain_seeds_val_repro.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from scipy.stats import t as student_t

STRESS_DROP = "lesion_dice_mean_drop"
STRESS_CALLED_NORMAL = "lesion_called_normal"
# The range a figure's per-seed value can take: what bounds the remaining seeds of a partial run.
RATE = (0.0, 1.0)
DROP = (-1.0, 1.0)
# (b)-(d): criterion tag, figure, how the candidate's mean compares with its limit, the name
# of the margin in ``margins`` (macro-F1's limit is the reference's less its margin)
FIGURE_CRITERIA = (
    ("(b)", "lesion_not_found", "<=", "not_found"),
    ("(b)", "lesion_called_normal", "<=", "called_normal"),
    ("(c)", "macro_f1", ">=", "macro_f1"),
    ("(d)", "normal_false_lesion_rate", "<=", "false_lesion"),
)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _paired(entry: dict, seeds: list[str]) -> float | None:
    """The mean of ``entry``'s per-seed values over ``seeds``, where it has all of them."""
    per_seed = entry.get("seeds") or {}
    values = [per_seed[s]["value"] if isinstance(per_seed[s], dict) else per_seed[s]
              for s in seeds if s in per_seed]  # fmt: skip
    return _mean(values) if len(values) == len(seeds) and None not in values else None


def _row(
    criterion: str, value, limit: str, holds: bool, reference=None, paired=None, settled=True,
    needed=None,
) -> dict:  # fmt: skip
    """``settled``: the seeds still to come cannot change ``holds``; ``needed``: the mean those
    seeds would need for a figure to hold (None for a complete run or a check)."""
    return {
        "criterion": criterion,
        "value": value,
        "limit": limit,
        "reference": reference,
        "reference_same_seeds": paired,
        "holds": holds,
        "settled": settled,
        "needed": needed,
    }


def _within(value: float, limit: float, op: str) -> bool:
    return value <= limit + 1e-12 if op == "<=" else value >= limit - 1e-12


def _figure_row(
    criterion: str, value, limit: float, op: str, reference, paired, n_seeds: int,
    seeds_needed: int, bounds: tuple[float, float] = RATE,
) -> dict:  # fmt: skip
    """A row for a figure (the mean of ``n_seeds`` seeds) against a numeric limit on the mean
    of ``seeds_needed`` seeds; a missing figure fails, for good. For a partial run: the mean
    the remaining seeds need, and whether any values within ``bounds`` could change the
    outcome."""
    if value is None:
        return _row(criterion, None, f"{op} {limit:.3f}", False, reference, paired)
    holds = _within(value, limit, op)
    remaining = seeds_needed - n_seeds
    if remaining <= 0:
        return _row(criterion, value, f"{op} {limit:.3f}", holds, reference, paired)
    total = value * n_seeds
    best, worst = (bounds[0], bounds[1]) if op == "<=" else (bounds[1], bounds[0])
    can_hold = _within((total + remaining * best) / seeds_needed, limit, op)
    must_hold = _within((total + remaining * worst) / seeds_needed, limit, op)
    needed = (limit * seeds_needed - total) / remaining
    return _row(
        criterion, value, f"{op} {limit:.3f}", holds, reference, paired,
        settled=(holds and must_hold) or not (holds or can_hold), needed=needed,
    )  # fmt: skip


def judge(
    candidate: dict,
    reference: dict,
    required: list[str],
    margins: dict,
    seeds_needed: int = 3,
    called_normal_change: bool = False,
    confidence: float | None = None,
    paired: bool = False,
) -> list[dict]:
    """One row per criterion (a)-(f) from two bench_chain_seeds.py summaries (the ``summary``
    of a results file): what, the candidate's mean, the limit, the reference's mean (over all
    its seeds, and over the candidate's seeds where it has them), whether it holds, whether
    the candidate's remaining seeds (up to ``seeds_needed``) could change that, and for a
    figure the mean they would need. A figure the candidate lacks fails its criterion; one
    the reference lacks is an error. With ``confidence``, (b)-(d) are ``bound_rows``
    (U-Net seeds as the unit, ``paired`` or not) and (g), ``better_row``, is added."""
    seeds = sorted(candidate["figures"]["lesion_dice"]["seeds"])
    complete = len(seeds) >= seeds_needed
    behaviour = candidate.get("behaviour")  # results written before it was kept have none
    rows = []
    recorded = behaviour is not None and set(seeds) <= set(behaviour)
    for check in required:
        failed_in = [s for s in seeds if recorded and check in behaviour[s]]
        rows.append(
            _row(
                f"(a) {check} passes in every seed",
                f"fails in {len(failed_in)} of {len(seeds)}" if recorded else "not recorded",
                "fails in none",
                recorded and not failed_in,
                settled=complete or bool(failed_in) or not recorded,
            )
        )
    if confidence:
        rows.extend(bound_rows(candidate, reference, margins, confidence, paired))
    else:
        rows.extend(mean_rows(candidate, reference, margins, seeds, seeds_needed))
    rows.append(_majority_checks(behaviour, reference.get("behaviour"), seeds_needed))
    # unshifted called normal, for --called-normal-change ((b) has checked the reference's)
    base = candidate["figures"].get(STRESS_CALLED_NORMAL, {}).get("mean")
    ref_unshifted = reference["figures"][STRESS_CALLED_NORMAL]
    for shift, ref_keys in sorted(reference["stress"].items()):
        got = candidate["stress"].get(shift, {})
        rows.append(
            _figure_row(
                f"(f) Dice drop under {shift}",
                got.get(STRESS_DROP, {}).get("mean"),
                max(margins["dice_drop"], ref_keys[STRESS_DROP]["mean"]),
                "<=",
                ref_keys[STRESS_DROP]["mean"],
                _paired(ref_keys[STRESS_DROP], seeds),
                len(seeds),
                seeds_needed,
                DROP,
            )
        )
        value = got.get(STRESS_CALLED_NORMAL, {}).get("mean")
        ref = ref_keys[STRESS_CALLED_NORMAL]["mean"]
        paired_mean = _paired(ref_keys[STRESS_CALLED_NORMAL], seeds)
        if not called_normal_change:
            criterion = f"(f) called normal under {shift}"
            limit, bounds = ref + margins["stress_called_normal"], RATE
        else:
            criterion = f"(f) called normal under {shift}, change from unshifted"
            value = None if value is None or base is None else value - base
            paired_base = _paired(ref_unshifted, seeds)
            paired_mean = (
                None if paired_mean is None or paired_base is None else paired_mean - paired_base
            )
            ref -= ref_unshifted["mean"]
            limit, bounds = max(margins["stress_called_normal"], ref), DROP
        rows.append(
            _figure_row(
                criterion, value, limit, "<=", ref, paired_mean, len(seeds), seeds_needed, bounds
            )
        )
    if confidence:
        rows.append(better_row(candidate, reference, confidence, paired))
    return rows


def mean_rows(
    candidate: dict, reference: dict, margins: dict, seeds: list[str], seeds_needed: int
) -> list[dict]:
    """(b)-(d) on the means over runs: each figure's mean within its margin of the
    reference's."""
    rows = []
    for tag, figure, op, margin_key in FIGURE_CRITERIA:
        margin = margins[margin_key] if op == "<=" else -margins[margin_key]
        ref = reference["figures"].get(figure, {}).get("mean")
        if ref is None:
            raise SystemExit(f"the reference has no mean {figure}: it cannot judge ({tag})")
        entry = candidate["figures"].get(figure, {})
        rows.append(
            _figure_row(
                f"{tag} {figure}",
                entry.get("mean"),
                ref + margin,
                op,
                ref,
                _paired(reference["figures"][figure], seeds),
                len(seeds),
                seeds_needed,
            )
        )
    return rows


def _majority_checks(candidate: dict | None, reference: dict | None, seeds_needed: int = 3) -> dict:
    """(e): the checks that fail in a majority of the candidate's seeds but pass in a majority
    of the reference's. ``candidate`` and ``reference`` map a seed to its failed checks; where
    either is missing (an older results file) the criterion cannot hold. A failure is settled
    once a check has failed in a majority of ``seeds_needed`` seeds; a pass only when the
    candidate has them all."""
    criterion = "(e) no check the reference passes (majority) fails (majority)"
    if not candidate or not reference:
        return _row(criterion, "not recorded", "none", False)

    def failures(behaviour: dict, check: str) -> int:
        return sum(check in failed for failed in behaviour.values())

    def fails_in_majority(behaviour: dict, check: str) -> bool:
        return failures(behaviour, check) * 2 > len(behaviour)

    def passes_in_majority(behaviour: dict, check: str) -> bool:
        return sum(check not in failed for failed in behaviour.values()) * 2 > len(behaviour)

    worse = sorted(
        check
        for check in {c for failed in candidate.values() for c in failed}
        if fails_in_majority(candidate, check) and passes_in_majority(reference, check)
    )
    # a failure in a majority of all the seeds to come cannot be undone by the others
    n_seeds = max(len(candidate), seeds_needed)
    settled = len(candidate) >= seeds_needed or any(
        failures(candidate, check) * 2 > n_seeds for check in worse
    )
    return _row(criterion, ", ".join(worse) or "none", "none", not worse, settled=settled)


def unchanged_rows(candidate: dict, reference: dict, figures: list[str], tolerance: float) -> list:
    """(P) rows for a candidate whose premise is that it leaves ``figures`` as they are (e.g.
    a veto that empties masks cannot change a class): each figure must equal the reference's
    same run (seed and offsets) within ``tolerance`` in every run of the candidate. The value
    is the largest difference; a run the reference lacks, or a figure either lacks, fails."""
    rows = []
    for figure in figures:
        ours = (candidate["figures"].get(figure) or {}).get("seeds") or {}
        theirs = (reference["figures"].get(figure) or {}).get("seeds") or {}
        diffs, unpaired = {}, []
        for run, entry in sorted(ours.items()):
            a, b = _value(entry), _value(theirs.get(run))
            if a is None or b is None:
                unpaired.append(run)
            else:
                diffs[run] = abs(a - b)
        off = sorted(run for run, d in diffs.items() if d > tolerance + 1e-12)
        holds = bool(ours) and not unpaired and not off
        limit = (
            f"<= {tolerance:.3f} in every run"
            + (f"; differs in {', '.join(off)}" if off else "")
            + (f"; unpaired: {', '.join(unpaired)}" if unpaired else "")
        )
        rows.append(
            _row(
                f"(P) {figure} as the reference's, run by run",
                max(diffs.values()) if diffs else None,
                limit,
                holds,
            )
        )
    return rows


def unet_seed_means(entry: dict) -> dict[str, float]:
    """A figure's per-run values averaged per whole-chain seed (the part of a run key before
    its offsets: ``0+train_classifier=100`` -> ``0``): runs that share a U-Net are not
    independent draws of it, so a U-Net seed counts once."""
    groups: dict[str, list[float]] = {}
    for run, item in (entry.get("seeds") or {}).items():
        value = _value(item)
        if value is not None:
            groups.setdefault(str(run).split("+")[0], []).append(value)
    return {seed: sum(v) / len(v) for seed, v in groups.items()}


def _variance(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values) / (len(values) - 1)


def difference(ours: dict[str, float], theirs: dict[str, float], paired: bool = False) -> tuple:
    """Candidate less reference from two {U-Net seed: figure} maps: (difference, its standard
    error, its degrees of freedom). Unpaired (a candidate with U-Nets of its own): the
    difference of the means, SE sqrt(var_c / k_c + var_r / k_r), Welch-Satterthwaite's degrees
    of freedom. Paired (a candidate on the reference's own U-Nets): the mean of the
    per-U-Net-seed differences over the seeds both have, SE sd / sqrt(k), k - 1 degrees of
    freedom, leaving out the U-Net draw they share. SE and degrees of freedom are None where
    there are under 2 U-Net seeds (a side, or shared)."""
    d = sum(ours.values()) / len(ours) - sum(theirs.values()) / len(theirs)
    if paired:
        diffs = [ours[seed] - theirs[seed] for seed in sorted(set(ours) & set(theirs))]
        if len(diffs) < 2:
            return d, None, None
        return sum(diffs) / len(diffs), (_variance(diffs) / len(diffs)) ** 0.5, len(diffs) - 1
    if len(ours) < 2 or len(theirs) < 2:
        return d, None, None
    sides = (ours, theirs)
    parts = [_variance(list(side.values())) / len(side) for side in sides]
    se = sum(parts) ** 0.5
    if se == 0:
        return d, 0.0, float("inf")
    dof = se**4 / sum(part**2 / (len(side) - 1) for part, side in zip(parts, sides, strict=True))
    return d, se, dof


def noise_rows(candidate: dict, reference: dict, margins: dict, paired: bool = False) -> list[dict]:
    """How far (b)-(d)'s verdicts stand from the noise of the U-Net draws: per figure, the
    candidate's mean less the reference's, the criterion's margin, and the standard error of
    that difference with the whole-chain (U-Net) seed as the unit (``difference``: unpaired
    for a candidate with U-Nets of its own, ``paired`` for one on the reference's own U-Nets).
    ``margin_under_2se``: a difference as large as the margin is within what the U-Net draws
    alone give, so the criterion cannot tell a candidate equal to the reference from one
    worse by the margin."""
    rows = []
    for _, figure, _, margin_key in FIGURE_CRITERIA:
        ours = unet_seed_means(candidate["figures"].get(figure) or {})
        theirs = unet_seed_means(reference["figures"].get(figure) or {})
        if not ours or not theirs:
            continue
        d, se, _ = difference(ours, theirs, paired)
        margin = margins[margin_key]
        rows.append(
            {
                "figure": figure,
                "difference": d,
                "margin": margin,
                "se": se,
                "unet_seeds": (len(ours), len(theirs)),
                "paired": paired,
                "margin_under_2se": None if se is None else margin < 2 * se,
            }
        )
    return rows


def one_sided_quantile(confidence: float, dof: float) -> float:
    """Student's one-sided quantile: the difference lies below d + t SE (above d - t SE) with
    probability ``confidence``."""
    return float(student_t.ppf(confidence, dof))


def bound_rows(
    candidate: dict, reference: dict, margins: dict, confidence: float, paired: bool = False
) -> list[dict]:
    """(b)-(d) by non-inferiority (``--confidence``): with d the candidate's mean less the
    reference's over U-Net seeds (each seed the mean of its runs, counted once) and SE as
    ``difference`` gives it, the one-sided ``confidence`` bound of d on the worse side (d + t
    SE for a rate, d - t SE for macro-F1) must be within the margin: a candidate worse than
    the reference by the margin passes at most 1 - ``confidence`` of the time. Under 2 U-Net
    seeds a side there is no bound, and the criterion does not hold (not for good: more seeds
    can give one)."""
    rows = []
    for tag, figure, op, margin_key in FIGURE_CRITERIA:
        ours = unet_seed_means(candidate["figures"].get(figure) or {})
        theirs = unet_seed_means(reference["figures"].get(figure) or {})
        if not theirs:
            raise SystemExit(f"the reference has no {figure}: it cannot judge ({tag})")
        side = "+" if op == "<=" else "-"
        criterion = f"{tag} {figure}: difference {side} t SE (one-sided {confidence:.0%})"
        limit = margins[margin_key] if op == "<=" else -margins[margin_key]
        ref = sum(theirs.values()) / len(theirs)
        if not ours:
            rows.append(_row(criterion, None, f"{op} {limit:+.3f}", False, ref))
            continue
        d, se, dof = difference(ours, theirs, paired)
        if se is None:
            rows.append(
                _row(criterion, None, f"{op} {limit:+.3f} (needs 2 U-Net seeds a side)", False,
                     ref, settled=False)
            )  # fmt: skip
            continue
        t = one_sided_quantile(confidence, dof)
        bound = d + t * se if op == "<=" else d - t * se
        how = f"{op} {limit:+.3f} (d {d:+.3f}, SE {se:.3f}, t {t:.2f})"
        rows.append(_row(criterion, bound, how, _within(bound, limit, op), ref, settled=False))
    return rows


def worst_drop_per_run(summary: dict) -> dict:
    """A figure entry (run -> value) of each run's largest Dice drop over the shifts."""
    worst: dict[str, float] = {}
    for keys in (summary.get("stress") or {}).values():
        for run, item in ((keys.get(STRESS_DROP) or {}).get("seeds") or {}).items():
            value = _value(item)
            if value is not None:
                worst[run] = max(worst.get(run, value), value)
    return {"seeds": worst}


def better_row(candidate: dict, reference: dict, confidence: float, paired: bool = False) -> dict:
    """(g): the candidate beats the reference by more than the noise on at least one figure:
    the worst stress Dice drop (each run's largest over the shifts) or one of (b)-(d)'s, i.e.
    the one-sided ``confidence`` bound of its improvement (the reference's less the
    candidate's, the other way for macro-F1) is above zero. The value names the figure with
    the largest bound and gives it."""
    entries = [
        (figure, op, candidate["figures"].get(figure) or {}, reference["figures"].get(figure) or {})
        for _, figure, op, _ in FIGURE_CRITERIA
    ]
    entries.append(
        (
            "worst_stress_dice_drop",
            "<=",
            worst_drop_per_run(candidate),
            worst_drop_per_run(reference),
        )
    )
    best = None
    for figure, op, ours_entry, theirs_entry in entries:
        ours, theirs = unet_seed_means(ours_entry), unet_seed_means(theirs_entry)
        if not ours or not theirs:
            continue
        d, se, dof = difference(ours, theirs, paired)
        if se is None:
            continue
        improvement = -d if op == "<=" else d
        bound = improvement - one_sided_quantile(confidence, dof) * se
        if best is None or bound > best[1]:
            best = (figure, bound)
    criterion = (
        f"(g) better than the reference beyond noise on one figure (one-sided {confidence:.0%})"
    )
    if best is None:
        return _row(criterion, None, "> 0 (needs 2 U-Net seeds a side)", False, settled=False)
    return _row(criterion, f"{best[0]} {best[1]:+.3f}", "> 0", best[1] > 0, settled=False)


def render_noise(rows: list[dict]) -> str:
    how = "paired by U-Net seed" if rows and rows[0].get("paired") else "unpaired"
    lines = [
        f"Noise of the U-Net draws ({how}, a U-Net seed counts once; not part of the verdict):",
        "",
        "| figure | candidate - reference | margin | SE of the difference | U-Net seeds "
        "(candidate, reference) | margin under 2 SE |",
        "|---|---:|---:|---:|---|---|",
    ]
    for r in rows:
        under = {None: "n/a", True: "yes", False: "no"}[r["margin_under_2se"]]
        lines.append(
            f"| {r['figure']} | {r['difference']:+.3f} | {r['margin']:.3f} | {_fmt(r['se'])} | "
            f"{r['unet_seeds'][0]}, {r['unet_seeds'][1]} | {under} |"
        )
    return "\n".join(lines)


def decide(rows: list[dict], n_seeds: int, seeds_needed: int) -> str:
    """adopt / not adopted on ``seeds_needed`` seeds; with fewer, not adopted only when a
    criterion has failed for good, else undecided."""
    if n_seeds < seeds_needed:
        settled_fail = any(not row["holds"] and row["settled"] for row in rows)
        return "not adopted" if settled_fail else "undecided"
    return "adopt" if all(row["holds"] for row in rows) else "not adopted"


def _fmt(value) -> str:
    if value is None:
        return ""
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def render(rows: list[dict], verdict: str, n_seeds: int, seeds_needed: int) -> str:
    failed = [row["criterion"] for row in rows if not row["holds"]]
    partial = n_seeds < seeds_needed
    lines = [
        f"**{verdict}** ("
        + (
            f"{n_seeds} of the {seeds_needed} seeds the rule needs; "
            if n_seeds <= seeds_needed
            else f"{n_seeds} runs; the rule needs {seeds_needed} seeds; "
        )
        + f"{len(rows) - len(failed)} of {len(rows)} criteria hold"
        + (f"; fails: {'; '.join(failed)})" if failed else ")"),
        "",
        "| criterion | candidate | limit | reference | reference, same seeds | holds |"
        + (" the remaining seeds' mean needs |" if partial else ""),
        "|---|---:|---|---:|---:|---|" + ("---:|" if partial else ""),
    ]
    for row in rows:
        holds = "yes" if row["holds"] else "**no**"
        if partial and row["settled"]:
            holds += " (for good)"
        line = (
            f"| {row['criterion']} | {_fmt(row['value'])} | {row['limit'] or ''} | "
            f"{_fmt(row['reference'])} | {_fmt(row['reference_same_seeds'])} | {holds} |"
        )
        if partial:
            op = row["limit"].split()[0] if row["needed"] is not None else ""
            line += f" {op} {_fmt(row['needed'])} |" if op else " |"
        lines.append(line)
    return "\n".join(lines)


def load(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as failed:
        raise SystemExit(f"{path}: not a readable results file ({failed})") from failed
    if "summary" not in record:
        raise SystemExit(f"{path}: no summary; write it with bench/bench_chain_seeds.py")
    return record


def _run_key(seed: str, offsets: dict) -> str:
    """A run's key in a pool: its seed, and the offsets its steps' seeds were moved by."""
    return str(seed) + "".join(f"+{step}={n}" for step, n in sorted(offsets.items()))


def _value(entry) -> float | None:
    return entry["value"] if isinstance(entry, dict) else entry


def _pooled(entries: list[dict], tags: list[str]) -> dict:
    """One figure's entries from several files as one: each run under its seed and its
    file's tag, and the mean, min and max over them all (a run without a value counts in
    none)."""
    seeds = {
        f"{seed}{tag}": value
        for entry, tag in zip(entries, tags, strict=True)
        for seed, value in (entry.get("seeds") or {}).items()
    }
    values = [v for v in map(_value, seeds.values()) if v is not None]
    spread = {
        "mean": _mean(values),
        "min": min(values, default=None),
        "max": max(values, default=None),
        "n": len(values),
    }
    return {**{k: v for k, v in entries[0].items() if k == "bar"}, **spread, "seeds": seeds}


def _same(parts: list[set], names: list[str], what: str) -> set:
    if any(part != parts[0] for part in parts):
        raise SystemExit(f"{', '.join(names)}: not the same {what} in every file")
    return parts[0]


def pool(records: list[dict], names: list[str] | None = None) -> dict:
    """One results record from several of one candidate's, which differ only in their seeds
    or seed offsets: its summary has every run of every record, keyed by ``_run_key``.
    Refused: files of another candidate, profile or split, the same run (seed and offsets)
    twice, or a figure, shift or behaviour record that some of the files lack (the means
    would be over other runs)."""
    if len(records) == 1:
        return records[0]
    names = names or [f"file {i + 1}" for i in range(len(records))]
    first = records[0]
    for key in ("profile", "split", "changes"):
        for name, record in zip(names[1:], records[1:], strict=True):
            if record.get(key) != first.get(key):
                raise SystemExit(
                    f"{name}: its {key} ({record.get(key)!r}) is not {names[0]}'s "
                    f"({first.get(key)!r}): pool only runs of one candidate, made the same way"
                )
    offsets = [record.get("seed_offsets") or {} for record in records]
    tags = [_run_key("", o) for o in offsets]
    summaries = [record["summary"] for record in records]
    seen: dict[str, str] = {}
    for name, s, tag in zip(names, summaries, tags, strict=True):
        for seed in (s["figures"].get("lesion_dice") or {}).get("seeds") or {}:
            run = f"{seed}{tag}"
            if run in seen:
                raise SystemExit(
                    f"{seen[run]} and {name} both have run {run} (the same seed and seed "
                    "offsets): the same run twice would count twice"
                )
            seen[run] = name
    figures = {
        name: _pooled([s["figures"][name] for s in summaries], tags)
        for name in sorted(_same([set(s["figures"]) for s in summaries], names, "figures"))
    }
    stress = {}
    for shift in sorted(_same([set(s.get("stress") or {}) for s in summaries], names, "shifts")):
        keys = _same([set(s["stress"][shift]) for s in summaries], names, f"{shift} figures")
        stress[shift] = {
            key: _pooled([s["stress"][shift][key] for s in summaries], tags) for key in sorted(keys)
        }
    kept = [s.get("behaviour") is not None for s in summaries]
    if any(kept) and not all(kept):
        raise SystemExit(f"{', '.join(names)}: some record the behavioural checks, some not")
    behaviour = None
    if all(kept):
        behaviour = {
            f"{seed}{tag}": failed
            for s, tag in zip(summaries, tags, strict=True)
            for seed, failed in s["behaviour"].items()
        }
    n_runs = sum(s["n_seeds"] for s in summaries)
    summary = {"figures": figures, "stress": stress, "behaviour": behaviour, "n_seeds": n_runs}
    return {**first, "seed_offsets": offsets, "summary": summary}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "candidate", type=Path, nargs="+",
        help="the candidate's results JSON; several: one candidate's runs with other seed "
        "offsets, pooled",
    )  # fmt: skip
    parser.add_argument(
        "--reference", type=Path, nargs="+", required=True, help="the reference's (likewise)"
    )
    parser.add_argument("--require", nargs="*", default=[], help="checks every seed must pass")
    parser.add_argument("--not-found", type=float, default=0.02)
    parser.add_argument("--called-normal", type=float, default=0.02)
    parser.add_argument("--macro-f1", type=float, default=0.01)
    parser.add_argument("--false-lesion", type=float, default=0.05)
    parser.add_argument("--dice-drop", type=float, default=0.05, help="the stress tests' bar")
    parser.add_argument("--stress-called-normal", type=float, default=0.05)
    parser.add_argument(
        "--called-normal-change",
        action="store_true",
        help="judge called normal under a shift by its change from the unshifted figure",
    )
    parser.add_argument("--seeds-needed", type=int, default=3)
    parser.add_argument(
        "--unchanged",
        nargs="*",
        default=[],
        metavar="FIGURE",
        help="a premise: these figures equal the reference's run by run (within "
        "--unchanged-tolerance); if one does not, the verdict is undecided (e.g. macro_f1 "
        "accuracy malignant_auc lesion_called_normal for a change that cannot move a class)",
    )
    parser.add_argument("--unchanged-tolerance", type=float, default=0.002)
    parser.add_argument(
        "--paired-unets",
        action="store_true",
        help="the candidate ran on the reference's own U-Nets (a crop or classifier "
        "candidate in the same seed workspaces): the noise table pairs them by U-Net seed",
    )
    parser.add_argument(
        "--confidence",
        type=float,
        default=None,
        help="judge (b)-(d) by non-inferiority at this one-sided confidence (e.g. 0.95), with "
        "the U-Net seed as the unit, and add (g): better beyond noise on one figure",
    )
    parser.add_argument(
        "--unet-seeds-needed",
        type=int,
        default=6,
        help="with --confidence: the U-Net seeds each side needs for a verdict",
    )
    args = parser.parse_args(argv)
    if args.confidence is not None and not 0.5 < args.confidence < 1:
        raise SystemExit(f"--confidence {args.confidence}: give a one-sided level in (0.5, 1)")
    candidate = pool([load(p) for p in args.candidate], [str(p) for p in args.candidate])
    reference = pool([load(p) for p in args.reference], [str(p) for p in args.reference])
    for key in ("profile", "split"):
        if candidate.get(key) != reference.get(key):
            raise SystemExit(
                f"the candidate's {key} is {candidate.get(key)!r}, the reference's "
                f"{reference.get(key)!r}: judge against a reference run the same way"
            )
    margins = {
        "not_found": args.not_found,
        "called_normal": args.called_normal,
        "macro_f1": args.macro_f1,
        "false_lesion": args.false_lesion,
        "dice_drop": args.dice_drop,
        "stress_called_normal": args.stress_called_normal,
    }
    rows = judge(
        candidate["summary"],
        reference["summary"],
        args.require,
        margins,
        args.seeds_needed,
        args.called_normal_change,
        args.confidence,
        args.paired_unets,
    )
    n_seeds = candidate["summary"]["n_seeds"]
    verdict = decide(rows, n_seeds, args.seeds_needed)
    if args.confidence:
        counts = [
            len(unet_seed_means(side["summary"]["figures"].get("lesion_dice") or {}))
            for side in (candidate, reference)
        ]
        enough = min(counts) >= args.unet_seeds_needed
        rows.insert(
            0,
            _row(
                "(k) U-Net seeds a side (candidate, reference)",
                f"{counts[0]}, {counts[1]}",
                f">= {args.unet_seeds_needed} each",
                enough,
                settled=False,
            ),
        )
        if not enough:  # too few draws: only a failure no seed can mend decides
            settled_fail = any(not row["holds"] and row["settled"] for row in rows)
            verdict = "not adopted" if settled_fail else "undecided"
    premise = unchanged_rows(
        candidate["summary"], reference["summary"], args.unchanged, args.unchanged_tolerance
    )
    if not all(row["holds"] for row in premise):
        verdict = "undecided"  # the comparison is not the one the rule describes
    print(render(premise + rows, verdict, n_seeds, args.seeds_needed))
    print()
    noise = noise_rows(candidate["summary"], reference["summary"], margins, args.paired_unets)
    print(render_noise(noise))
    return {"adopt": 0, "not adopted": 1}.get(verdict, 2)


if __name__ == "__main__":
    sys.exit(main())
