"""Screen a U-Net candidate over several U-Net seeds, paired against a reference screened
the same way (issue 13: choose on val; the U-Net seed as the unit, as the noise-sized rule
counts it), before any of its chains is trained.

    python bench/screen_unet_seeds.py --name t04_long --seeds 0 1 2 3 4 5 \\
        --set train_unet.input_norm=image ... train_unet.epochs=40 train_unet.patience=10 \\
        --reference bench/results/unet_screen_seeds_t04.json \\
        --better normal_false_lesion_rate --within lesion_not_found=0.04 \\
        --mean-at-most worst_dice_drop=0.05

Per seed: train_unet (and what it depends on) in bench_chain_seeds.py's workspace for that
seed (``scratch/chain-seeds/<profile>/seed-N/workspace``, the candidate's settings and the
seed's seeds; `dvc repro train_unet`: a run-cache hit where those settings trained before;
the later stages are left as they were, for bench_chain_seeds.py to rerun), then
bench_unet_screen.py on its U-Net (``unet_screen_<name>_seed<N>.{json,md}``). Per seed the
summary keeps the unshifted figures at the workspace's lesion rule (the U-Net alone, so no
classifier veto), the worst Dice drop over the stress shifts, the epochs run and the epoch
kept. Against ``--reference`` (another run of this script on the same seeds): per figure
the mean of the per-seed differences, its standard error and one-sided bounds
(judge_candidate.difference, paired, t with k - 1 degrees of freedom), and whether each
seed's first epochs equal the reference's (a constant learning rate trains the same first
epochs from the same seed on one machine). The criteria are given on the command line:
``--better F`` (the bound on F's better side beyond 0: lower for every figure here but the
Dice), ``--within F=M`` (the bound on F's worse side within M), ``--mean-at-most F=X``.
Seeds screened with lesion scores (bench_unet_screen's ``detection``) add two comparisons
over every threshold, CURVE_FIGURES: the lesion detection AUC, and the lesion images each
U-Net misses at the lowest threshold that marks no more normal images than the reference's
U-Net marks at its threshold (a candidate that only moves along the trade of missed and
false lesions shows no difference there; one that moves the curve does).
``--threshold T`` screens the same U-Nets at another lesion threshold than the workspace's
(another operating point: where missed and false lesions trade; compare with a reference
screened at the same threshold).

``--pool A.json B.json ...`` trains and screens nothing: it joins the seeds of one
candidate screened in several calls (seeds 0-2 one session, 3-5 the next) and judges them
as one screen, refusing parts of other settings, segmenters, thresholds or host types, or
that share a seed.

Writes bench/results/unet_screen_seeds_<name>[_t<T>].{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIGURES = ("lesion_dice_mean", "lesion_not_found", "normal_false_lesion_rate", "worst_dice_drop")
# Over every lesion threshold (bench_unet_screen's ``detection``; None in a seed screened
# before it existed): the lesion detection AUC, and lesion images missed at the lowest
# threshold marking no more normal images than the reference's U-Net of the same seed does
# at its threshold (both sides read off their own lesion scores).
CURVE_FIGURES = ("lesion_detection_auc", "not_found_at_reference_false_lesions")
HIGHER_IS_BETTER = {"lesion_dice_mean", "lesion_detection_auc"}
# False-lesion rates at which the summary reads each U-Net's misses off its lesion scores
# (0.1: the bar for the whole chain).
CURVE_RATES = (0.1, 0.25, 0.5)


def seed_row(screen: dict, history_rows: list[dict], kept_score: float | None) -> dict:
    """One seed's summary from its bench_unet_screen.py record and training log rows
    (``plots/train_unet.csv``): the unshifted figures, the worst shift's Dice drop, the
    epochs run and the epoch kept (the log's row whose val_score is the one train_unet
    reported, ``kept_score``; None without it)."""
    unshifted = screen["result"]["unshifted"]
    shifts = screen["result"]["shifts"]
    found = screen["result"].get("detection") or {}
    worst = max(shifts, key=lambda shift: shifts[shift]["lesion_dice_mean_drop"])
    kept = None
    if kept_score is not None and history_rows:
        gaps = [abs(float(row["val_score"]) - kept_score) for row in history_rows]
        kept = int(history_rows[gaps.index(min(gaps))]["epoch"])
    return {
        **{figure: float(unshifted[figure]) for figure in FIGURES[:3]},
        "worst_dice_drop": float(shifts[worst]["lesion_dice_mean_drop"]),
        "worst_shift": worst,
        "lesion_detection_auc": found.get("lesion_detection_auc"),
        "lesion_scores": found.get("lesion_scores"),
        "normal_scores": found.get("normal_scores"),
        "epochs_run": len(history_rows),
        "epoch_kept": kept,
        "history": {
            key: [float(row[key]) for row in history_rows]
            for key in ("val_lesion_dice", "val_false_lesion_rate")
        },
    }


def same_start(ours: dict, theirs: dict) -> float | None:
    """The largest difference between two seeds' training logs over the epochs both ran (0:
    the same first epochs); None when either has no log."""
    gaps = []
    for key, values in ours["history"].items():
        other = theirs["history"].get(key) or []
        gaps += [abs(a - b) for a, b in zip(values, other, strict=False)]
    return max(gaps) if gaps else None


def matched_not_found(ours: dict, theirs: dict) -> tuple[float, float] | None:
    """(candidate, reference): lesion images missed by each U-Net at the lowest threshold
    that marks at most the share of normal images the reference's marks at its threshold;
    None unless both have lesion scores."""
    from bench.bench_unet_screen import not_found_at

    if ours.get("lesion_scores") is None or theirs.get("lesion_scores") is None:
        return None
    rate = theirs["normal_false_lesion_rate"]
    return (
        not_found_at(ours["lesion_scores"], ours["normal_scores"], rate),
        not_found_at(theirs["lesion_scores"], theirs["normal_scores"], rate),
    )


def paired_values(ours: dict[int, dict], theirs: dict[int, dict], shared: list[int], figure):
    """({seed: candidate's}, {seed: reference's}) for ``figure`` over ``shared``, or None
    when a seed lacks it (a curve figure of a seed screened before the curve existed)."""
    a, b = {}, {}
    for seed in shared:
        if figure == "not_found_at_reference_false_lesions":
            pair = matched_not_found(ours[seed], theirs[seed])
        else:
            pair = (ours[seed].get(figure), theirs[seed].get(figure))
        if pair is None or None in pair:
            return None
        a[seed], b[seed] = pair
    return a, b


def compare(ours: dict[int, dict], theirs: dict[int, dict], confidence: float = 0.95) -> list:
    """Per figure (FIGURES, then CURVE_FIGURES where every shared seed has them), candidate
    less reference paired by seed over the seeds both have: mean difference, SE, degrees of
    freedom and the one-sided ``confidence`` bounds below and above (None with under 2
    shared seeds)."""
    from bench.judge_candidate import difference, one_sided_quantile

    shared = sorted(set(ours) & set(theirs))
    rows = []
    for figure in FIGURES + CURVE_FIGURES:
        values = paired_values(ours, theirs, shared, figure)
        if values is None:
            continue
        a, b = values
        d, se, dof = difference(a, b, paired=True) if shared else (None, None, None)
        low = high = None
        if se is not None:
            quantile = one_sided_quantile(confidence, dof)
            low, high = d - quantile * se, d + quantile * se
        rows.append(
            {
                "figure": figure,
                "seeds": shared,
                "difference": d,
                "se": se,
                "dof": dof,
                "lower_bound": low,
                "upper_bound": high,
            }
        )
    return rows


def seed_means(per_seed: dict[int, dict]) -> dict[str, float]:
    """The mean over seeds of FIGURES, and of the detection AUC where every seed has it."""
    means = {f: sum(row[f] for row in per_seed.values()) / len(per_seed) for f in FIGURES}
    aucs = [row.get("lesion_detection_auc") for row in per_seed.values()]
    if aucs and None not in aucs:
        means["lesion_detection_auc"] = sum(aucs) / len(aucs)
    return means


def parse_pairs(items: list[str], option: str) -> dict[str, float]:
    out = {}
    for item in items:
        figure, sep, value = item.partition("=")
        if not sep or figure not in FIGURES + CURVE_FIGURES:
            raise SystemExit(
                f"{option} {item!r}: write FIGURE=X with FIGURE one of {FIGURES + CURVE_FIGURES}"
            )
        try:
            out[figure] = float(value)
        except ValueError:
            raise SystemExit(f"{option} {item!r}: {value!r} is not a number") from None
    return out


def verdict(
    rows: list[dict],
    means: dict[str, float],
    better: list[str],
    within: dict[str, float],
    at_most: dict[str, float],
) -> list[dict]:
    """The criteria given, each a row (criterion, value, limit, holds). ``better``: the
    bound on the figure's better side is past 0; ``within``: the bound on its worse side
    within the margin; ``at_most``: the candidate's mean at most the value. A comparison
    without a bound (under 2 shared seeds) does not hold."""
    by_figure = {row["figure"]: row for row in rows}

    def bound(figure: str) -> float | None:
        """The one-sided bound that both criteria read: how far the figure may fall short
        (the lower bound where higher is better, else the upper): past 0 it is better beyond
        noise, within the margin it is not worse by more than that."""
        row = by_figure.get(figure)
        if row is None:
            return None
        return row["lower_bound"] if figure in HIGHER_IS_BETTER else row["upper_bound"]

    out = []
    for figure in better:
        up = figure in HIGHER_IS_BETTER
        bound_ = bound(figure)
        holds = bound_ is not None and bool(bound_ > 0 if up else bound_ < 0)
        out.append(
            {
                "criterion": f"{figure} better than the reference beyond noise",
                "value": bound_,
                "limit": "> 0" if up else "< 0",
                "holds": holds,
            }
        )
    for figure, margin in within.items():
        up = figure in HIGHER_IS_BETTER
        bound_ = bound(figure)
        holds = bound_ is not None and bool(bound_ >= -margin if up else bound_ <= margin)
        out.append(
            {
                "criterion": f"{figure} not worse than the reference by more than {margin}",
                "value": bound_,
                "limit": f">= {-margin}" if up else f"<= {margin}",
                "holds": holds,
            }
        )
    for figure, limit in at_most.items():
        value = means.get(figure)
        out.append(
            {
                "criterion": f"{figure}, mean over seeds",
                "value": value,
                "limit": f"<= {limit}",
                "holds": value is not None and bool(value <= limit),
            }
        )
    return out


def _fmt(value, signed: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:+.3f}" if signed else f"{value:.3f}"
    return str(value)


def curve_table(per_seed: dict) -> list[str]:
    """Lines of a table: per seed (and the mean), lesion images missed at the lowest
    threshold that marks at most each of CURVE_RATES of the normal images; none unless every
    seed has lesion scores."""
    from bench.bench_unet_screen import not_found_at

    rows = sorted(per_seed.items(), key=lambda item: int(item[0]))
    if not rows or any(row.get("lesion_scores") is None for _, row in rows):
        return []
    table = {
        seed: [not_found_at(row["lesion_scores"], row["normal_scores"], r) for r in CURVE_RATES]
        for seed, row in rows
    }
    means = [
        sum(values[i] for values in table.values()) / len(table) for i in range(len(CURVE_RATES))
    ]
    head = " | ".join(f"at most {r:.0%} marked" for r in CURVE_RATES)
    lines = [
        "",
        "Lesion images with no lesion found at the lowest threshold that marks at most this "
        "share of the normal images (each U-Net's own lesion scores):",
        "",
        f"| U-Net seed | {head} |",
        "|---:|" + "---:|" * len(CURVE_RATES),
    ]
    for seed, values in table.items():
        lines.append(f"| {seed} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    lines.append("| mean | " + " | ".join(f"{v:.3f}" for v in means) + " |")
    return lines


def render(record: dict) -> str:
    at = ""
    if record.get("threshold") is not None:
        at = f"lesion threshold {record['threshold']:g} (not the workspace's); "
    # train_unet's log scores one forward pass unless the screen set monitor_flip
    settings = dict(item.split("=", 1) for item in record["settings"] if "=" in item)
    flip = settings.get("train_unet.monitor_flip", "false").lower() == "true"
    segmenter = SEGMENTER_WORDS.get(record.get("segmenter", "unet"), "")
    measured = f"Measured {record['date']} on {record['machine']}"
    if record.get("pooled_from"):
        parts = ", ".join(f"`{path}`" for path in record["pooled_from"])
        commits = ", ".join(map(str, record.get("part_commits") or []))
        measured = (
            f"Pooled {record['date']} from {parts} (their commits: {commits}), measured on "
            f"{record['machine']}"
        )
    lines = [
        f"{measured}, commit {record['commit']}, the "
        f"{record['split']} split, U-Net seeds {', '.join(map(str, record['seeds']))}; "
        f"settings changed: `{' '.join(record['settings']) or 'none'}`; {at}{segmenter}"
        f"{record['minutes']:.1f} min in all.",
        "",
        "| U-Net seed | epochs run | epoch kept | lesion Dice | not found | false lesions | "
        "false lesions by train_unet's log at the epoch kept "
        f"({'flip-averaged' if flip else 'no flip'}) | "
        "worst Dice drop (shift) | lesion detection AUC (every threshold) | "
        "largest log difference from the reference's |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for seed, row in sorted(record["per_seed"].items(), key=lambda item: int(item[0])):
        kept = row["epoch_kept"]
        logged = None if kept is None else row["history"]["val_false_lesion_rate"][kept]
        lines.append(
            f"| {seed} | {row['epochs_run']} | {_fmt(kept)} | "
            f"{row['lesion_dice_mean']:.3f} | {row['lesion_not_found']:.3f} | "
            f"{row['normal_false_lesion_rate']:.3f} | {_fmt(logged)} | "
            f"{row['worst_dice_drop']:.3f} ({row['worst_shift']}) | "
            f"{_fmt(row.get('lesion_detection_auc'))} | {_fmt(row.get('start_gap'))} |"
        )
    means = record["means"]
    lines.append(
        f"| mean | | | {means['lesion_dice_mean']:.3f} | {means['lesion_not_found']:.3f} | "
        f"{means['normal_false_lesion_rate']:.3f} | | {means['worst_dice_drop']:.3f} | "
        f"{_fmt(means.get('lesion_detection_auc'))} | |"
    )
    lines += curve_table(record["per_seed"])
    if record.get("comparison"):
        lines += [
            "",
            f"Paired against `{record['reference']}` (candidate less reference, U-Net seeds "
            f"both have; one-sided {record['confidence']:.0%} bounds):",
            "",
            "| figure | difference | SE | lower bound | upper bound |",
            "|---|---:|---:|---:|---:|",
        ]
        for row in record["comparison"]:
            lines.append(
                f"| {row['figure']} | {_fmt(row['difference'], True)} | {_fmt(row['se'])} | "
                f"{_fmt(row['lower_bound'], True)} | {_fmt(row['upper_bound'], True)} |"
            )
    if record.get("verdict"):
        lines += ["", "| criterion | value | limit | holds |", "|---|---:|---|---|"]
        for row in record["verdict"]:
            lines.append(
                f"| {row['criterion']} | {_fmt(row['value'], True)} | {row['limit']} | "
                f"{'yes' if row['holds'] else 'NO'} |"
            )
        held = sum(row["holds"] for row in record["verdict"])
        total = len(record["verdict"])
        lines += [
            "",
            f"Screen: {held} of {total} criteria hold: "
            + ("passes." if held == total else "fails."),
        ]
    return "\n".join(lines)


def train_unet_only(
    profile: str, seed: int, base: Path, changes: dict, stages: tuple = ("train_unet",)
) -> Path:
    """``stages`` (train_unet, and train_unet_folds for a screen of the U-Net averaged with
    its fold U-Nets) and their upstream stages in the seed's bench_chain_seeds workspace."""
    from bench.bench_chain_seeds import seed_settings
    from components.run_pipeline import run

    workspace = base / f"seed-{seed}" / "workspace"
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{base / 'mlflow.db'}"
    for stage in stages:
        run(profile, None, REPO, workspace, seed_settings(seed, changes), stage=stage)
    return workspace


# How a seed screen's summary names a segmenter other than the U-Net alone.
SEGMENTER_WORDS = {
    "unet+folds": "segmenter: the mean of each U-Net and its fold U-Nets; ",
    "folds": "segmenter: the mean of each seed's fold U-Nets, no full U-Net (so no "
    "train_unet epochs); ",
}

# The stages each bench_unet_screen segmenter needs trained.
SEGMENTER_STAGES = {
    "unet": ("train_unet",),
    "unet+folds": ("train_unet", "train_unet_folds"),
    "folds": ("train_unet_folds",),
}


def threshold_suffix(threshold: float | None) -> str:
    """The results files' suffix for a screen at another threshold: 0.5 -> "_t05"."""
    return "" if threshold is None else "_t" + f"{threshold:g}".replace(".", "")


def read_seed(
    workspace: Path, screen_name: str, threshold: float | None = None, segmenter: str = "unet"
) -> dict:
    import csv

    from bench import bench_unet_screen, results_files

    at = [] if threshold is None else ["--threshold", str(threshold)]
    bench_unet_screen.main(
        ["--workspace", str(workspace), "--name", screen_name, "--segmenter", segmenter, *at]
    )
    screen = json.loads((results_files.RESULTS / f"unet_screen_{screen_name}.json").read_text())
    if "train_unet" not in SEGMENTER_STAGES[segmenter]:
        # the workspace's train_unet log is another model's (a full U-Net this segmenter
        # does not use, perhaps trained with other settings): no epochs, no kept epoch
        return seed_row(screen, [], None)
    log = workspace / "plots" / "train_unet.csv"
    rows = list(csv.DictReader(log.open())) if log.is_file() else []
    metrics = workspace / "metrics" / "train_unet.json"
    kept = json.loads(metrics.read_text()).get("val_score") if metrics.is_file() else None
    return seed_row(screen, rows, kept)


# What the parts of a pooled screen must share: the same candidate on the same host type.
POOL_KEYS = ("split", "segmenter", "threshold", "machine")


def pool_parts(paths: list[Path]) -> dict:
    """The parts of one screen run in several calls (e.g. seeds 0-2, then 3-5), each a
    results file of this script: their seeds as one ``per_seed`` (int keys), their settings,
    POOL_KEYS, summed minutes and the files. Refused, with what differs, unless every part
    screened the same settings (in any order), segmenter, threshold and split on the same
    host type (CPU model and instruction sets: hosts train other models), and no seed is in
    two parts."""
    if len(paths) < 2:
        raise SystemExit("--pool: give at least two results files to pool")
    parts = []
    for path in paths:
        if not path.is_file():
            raise SystemExit(f"--pool {path}: no such file")
        record = json.loads(path.read_text())
        if "per_seed" not in record or "settings" not in record:
            raise SystemExit(f"--pool {path}: not a results file of screen_unet_seeds.py")
        record.setdefault("segmenter", "unet")  # screens before --segmenter were the U-Net's
        parts.append(record)
    first = parts[0]
    for path, record in zip(paths[1:], parts[1:], strict=True):
        if sorted(record["settings"]) != sorted(first["settings"]):
            raise SystemExit(
                f"--pool: {path} screened settings {record['settings']}, {paths[0]} "
                f"{first['settings']}: pool parts of one candidate only"
            )
        for key in POOL_KEYS:
            if record.get(key) != first.get(key):
                raise SystemExit(
                    f"--pool: {path} has {key} {record.get(key)!r}, {paths[0]} "
                    f"{first.get(key)!r}: pool parts of one candidate on one host type only"
                )
    per_seed: dict[int, dict] = {}
    for path, record in zip(paths, parts, strict=True):
        for seed, row in record["per_seed"].items():
            if int(seed) in per_seed:
                raise SystemExit(f"--pool: seed {seed} is in two parts (again in {path})")
            per_seed[int(seed)] = row
    return {
        "per_seed": dict(sorted(per_seed.items())),
        "settings": first["settings"],
        **{key: first.get(key) for key in POOL_KEYS},
        "minutes": sum(record["minutes"] for record in parts),
        "pooled_from": [str(path) for path in paths],
        "part_commits": [record.get("commit") for record in parts],
    }


def rerender(name: str) -> int:
    """The summary ``<name>.md`` written again from ``<name>.json`` (after a change to what
    the summary shows); the record itself is left as it was."""
    from bench import results_files

    stored = results_files.RESULTS / f"{name}.json"
    if not stored.is_file():
        raise SystemExit(f"--render: {stored} not found; run the screen first")
    record = json.loads(stored.read_text())
    text = render(record)
    results_files.write_results(
        name, "U-Nets screened over seeds", record, text, "bench/screen_unet_seeds.py"
    )
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    import yaml

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True, help="the candidate's name (results files)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--profile", default="default")
    parser.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--reference", type=Path, help="an unet_screen_seeds_*.json")
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument(
        "--threshold", type=float, help="screen at this lesion threshold (default: the workspace's)"
    )
    parser.add_argument(
        "--segmenter",
        choices=tuple(SEGMENTER_STAGES),
        help="screen the U-Net, the mean of it and its fold U-Nets (train_unet_folds is "
        "trained too) or the mean of the fold U-Nets alone (train_unet_folds only); "
        "default: unet (with --pool: the parts')",
    )
    parser.add_argument("--better", nargs="*", default=[], metavar="FIGURE")
    parser.add_argument("--within", nargs="*", default=[], metavar="FIGURE=MARGIN")
    parser.add_argument("--mean-at-most", nargs="*", default=[], metavar="FIGURE=X")
    parser.add_argument(
        "--render",
        action="store_true",
        help="write the summary again from its stored .json (no training, no screen)",
    )
    parser.add_argument(
        "--pool",
        nargs="+",
        type=Path,
        metavar="RESULTS_JSON",
        help="no training, no screen: pool these results files of one candidate (disjoint "
        "seeds, same settings, segmenter, threshold and host type) into unet_screen_seeds_"
        "<name>, judged against --reference",
    )
    args = parser.parse_args(argv)
    if args.render:
        return rerender(f"unet_screen_seeds_{args.name}{threshold_suffix(args.threshold)}")
    for figure in args.better:
        if figure not in FIGURES + CURVE_FIGURES:
            raise SystemExit(f"--better {figure!r}: one of {FIGURES + CURVE_FIGURES}")
    within = parse_pairs(args.within, "--within")
    at_most = parse_pairs(args.mean_at_most, "--mean-at-most")
    if (args.better or within) and not args.reference:
        raise SystemExit("--better and --within compare with a reference: give --reference")
    pooled = None
    if args.pool:
        if args.set or args.threshold is not None or args.segmenter is not None:
            raise SystemExit(
                "--pool takes the settings, segmenter and threshold from its parts: leave "
                "out --set, --threshold and --segmenter"
            )
        pooled = pool_parts(args.pool)
        args.threshold = pooled["threshold"]  # the reference must match the parts'
    else:
        args.segmenter = args.segmenter or "unet"
    reference = None
    if args.reference:
        if not args.reference.is_file():
            raise SystemExit(f"--reference {args.reference}: no such file")
        reference = json.loads(args.reference.read_text())
        if reference.get("threshold") != args.threshold:

            def at(threshold: float | None) -> str:
                return "the workspace's threshold" if threshold is None else f"{threshold:g}"

            raise SystemExit(
                f"--reference {args.reference} was screened at {at(reference.get('threshold'))}"
                f", this run at {at(args.threshold)}: compare at one threshold (--threshold)"
            )
    sys.path.insert(0, str(REPO))
    from bench.bench_chain_seeds import parse_changes
    from bench.bench_data import machine_info
    from bench.results_files import write_results

    started = time.monotonic()
    suffix = threshold_suffix(args.threshold)
    per_seed = {}
    if pooled is not None:
        per_seed = pooled["per_seed"]
        args.seeds, args.set, args.segmenter = (
            list(per_seed),
            pooled["settings"],
            pooled["segmenter"],
        )
    else:
        params = yaml.safe_load((REPO / "params.yaml").read_text())
        changes = parse_changes(args.set, params, "val")
        base = REPO / "scratch" / "chain-seeds" / args.profile
        for seed in args.seeds:
            workspace = train_unet_only(
                args.profile, seed, base, changes, SEGMENTER_STAGES[args.segmenter]
            )
            per_seed[seed] = read_seed(
                workspace, f"{args.name}_seed{seed}{suffix}", args.threshold, args.segmenter
            )
    theirs = {int(seed): row for seed, row in (reference or {}).get("per_seed", {}).items()}
    for seed, row in per_seed.items():
        row["start_gap"] = same_start(row, theirs[seed]) if seed in theirs else None
    means = seed_means(per_seed)
    comparison = compare(per_seed, theirs, args.confidence) if reference else []
    machine = machine_info()
    record = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        # a pooled screen ran on its parts' host, not necessarily on this one
        "machine": pooled["machine"]
        if pooled
        else "{cpu_model} ({nproc} cores; {cpu_isa})".format(**machine),
        "commit": machine["project_commit"],
        "split": "val",
        "seeds": args.seeds,
        "settings": args.set,
        "threshold": args.threshold,
        "segmenter": args.segmenter,
        "minutes": pooled["minutes"] if pooled else (time.monotonic() - started) / 60,
        "per_seed": per_seed,
        "means": means,
        "reference": str(args.reference) if args.reference else None,
        "confidence": args.confidence,
        "comparison": comparison,
        "verdict": verdict(comparison, means, args.better, within, at_most),
    }
    if pooled:
        record["pooled_from"] = pooled["pooled_from"]
        record["part_commits"] = pooled["part_commits"]
    text = render(record)
    write_results(
        f"unet_screen_seeds_{args.name}{threshold_suffix(args.threshold)}",
        f"U-Nets screened over seeds, candidate {args.name}",
        record,
        text,
        "bench/screen_unet_seeds.py",
    )
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
