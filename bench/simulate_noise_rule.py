"""How often the noise-sized rule's (b)-(d) (``judge_candidate.py --confidence``) pass a
candidate whose true figures differ from the reference's by given amounts: draws of k U-Net
seed means a side from normal distributions with the reference's measured spread per U-Net
seed, judged by the same one-sided bounds (Welch) and margins. Descriptive: it says what the
rule can tell apart with k seeds a side, it judges nothing.

    python bench/simulate_noise_rule.py --name defaults_xeon \
        --reference bench/results/chain_seeds_val_defaults_xeon{,_c100,_c200,_more}.json \
        --scenario equal= better_fl=normal_false_lesion_rate:-0.10 \
        worse_cn=lesion_called_normal:0.05,normal_false_lesion_rate:-0.10

Writes bench/results/simulate_noise_rule_<name>.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.stats import t as student_t

REPO = Path(__file__).resolve().parents[1]
SCRIPT = "bench/simulate_noise_rule.py"
TITLE = "How often the noise-sized rule passes a candidate"


def parse_scenario(item: str, figures: list[str]) -> tuple[str, dict[str, float]]:
    """``NAME=FIGURE:SHIFT,...`` (an empty list: equal to the reference) -> (name, shifts)."""
    name, sep, body = item.partition("=")
    if not sep or not name:
        raise SystemExit(f"--scenario {item!r}: write NAME=FIGURE:SHIFT,... (or NAME= for equal)")
    shifts = {}
    for part in filter(None, body.split(",")):
        figure, sep, value = part.partition(":")
        if not sep or figure not in figures:
            raise SystemExit(
                f"--scenario {item!r}: {part!r} is not FIGURE:SHIFT, FIGURE one of {figures}"
            )
        shifts[figure] = float(value)
    return name, shifts


def pass_rate(
    sds: dict[str, float], criteria: list[tuple[str, str, float]], shifts: dict[str, float],
    k: int, confidence: float, trials: int, seed: int,
) -> float:  # fmt: skip
    """The share of ``trials`` in which every criterion (figure, "<=" or ">=", margin) holds:
    per trial and figure, k candidate and k reference U-Net seed means drawn with the
    figure's SD, the candidate's shifted; the bound d + t SE (d - t SE for ">=") at Welch's
    degrees of freedom against +margin (-margin), as ``judge_candidate.bound_rows``."""
    rng = np.random.default_rng(seed)
    holds = np.ones(trials, dtype=bool)
    for figure, op, margin in criteria:
        ours = rng.normal(shifts.get(figure, 0.0), sds[figure], (trials, k))
        theirs = rng.normal(0.0, sds[figure], (trials, k))
        va, vb = ours.var(axis=1, ddof=1) / k, theirs.var(axis=1, ddof=1) / k
        se = np.sqrt(va + vb)
        dof = se**4 / (va**2 / (k - 1) + vb**2 / (k - 1))
        d = ours.mean(axis=1) - theirs.mean(axis=1)
        t = student_t.ppf(confidence, dof)
        holds &= (d + t * se <= margin) if op == "<=" else (d - t * se >= -margin)
    return float(holds.mean())


def render(record: dict) -> str:
    lines = [
        f"{record['trials']} trials a scenario (numpy seed {record['seed']}), {record['k']} U-Net "
        f"seeds a side, one-sided {record['confidence']:.0%} bounds; the reference's spread per "
        f"U-Net seed from {', '.join(f'`{Path(p).name}`' for p in record['reference'])}:",
        "",
        "| figure | SD of a U-Net seed's figure | margin |",
        "|---|---:|---:|",
    ]
    for figure, op, margin in record["criteria"]:
        limit = margin if op == "<=" else -margin
        lines.append(f"| {figure} | {record['sds'][figure]:.3f} | {op} {limit:+.3f} |")
    lines += ["", "| scenario (candidate's true shift) | (b)-(d) all hold |", "|---|---:|"]
    for s in record["scenarios"]:
        what = ", ".join(f"{f} {v:+.3f}" for f, v in s["shifts"].items()) or "equal"
        lines.append(f"| {s['name']}: {what} | {s['pass_rate'] * 100:.1f} % |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, nargs="+", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--scenario", nargs="+", default=["equal="])
    parser.add_argument("--k", type=int, default=6, help="U-Net seeds a side")
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--not-found", type=float, default=0.04)
    parser.add_argument("--called-normal", type=float, default=0.05)
    parser.add_argument("--macro-f1", type=float, default=0.03)
    parser.add_argument("--false-lesion", type=float, default=0.10)
    parser.add_argument("--trials", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.k < 2:
        raise SystemExit("--k: a spread needs at least 2 U-Net seeds a side")
    sys.path.insert(0, str(REPO))
    from bench import judge_candidate as jc
    from bench.results_files import write_results

    reference = jc.pool([jc.load(p) for p in args.reference], [str(p) for p in args.reference])
    margins = {
        "not_found": args.not_found, "called_normal": args.called_normal,
        "macro_f1": args.macro_f1, "false_lesion": args.false_lesion,
    }  # fmt: skip
    criteria = [(figure, op, margins[key]) for _, figure, op, key in jc.FIGURE_CRITERIA]
    sds = {}
    for figure, _, _ in criteria:
        means = list(jc.unet_seed_means(reference["summary"]["figures"][figure]).values())
        if len(means) < 2:
            raise SystemExit(
                f"the reference has {len(means)} U-Net seed(s) of {figure}: give 2 or more"
            )
        sds[figure] = float(np.std(means, ddof=1))
    figures = [c[0] for c in criteria]
    scenarios = []
    for item in args.scenario:
        name, shifts = parse_scenario(item, figures)
        rate = pass_rate(sds, criteria, shifts, args.k, args.confidence, args.trials, args.seed)
        scenarios.append({"name": name, "shifts": shifts, "pass_rate": rate})
    record = {
        "reference": [str(p) for p in args.reference], "k": args.k,
        "confidence": args.confidence, "trials": args.trials, "seed": args.seed,
        "criteria": criteria, "sds": sds, "scenarios": scenarios,
    }  # fmt: skip
    text = render(record)
    write_results(f"simulate_noise_rule_{args.name}", f"{TITLE}: {args.name}", record, text, SCRIPT)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
