"""Every chain candidate scored on the val split, in one table: the runs of each candidate
pooled over its classifier reseeds (the ``_c<N>`` files), grouped by the host type that ran
them (hosts of two types train different models from the same seed, so only rows of one
host compare), with the val means of the figures the candidates were judged by. No model
runs; the verdicts, and the rule each was judged by, are in each candidate's results file.

    python bench/list_candidates.py        # bench/results/chain_seeds_val_*.json

Writes bench/results/candidates.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# (figure key in a results summary, column title, shown as a percentage)
FIGURES = (
    ("lesion_dice", "lesion Dice", False),
    ("lesion_not_found", "not found", True),
    ("lesion_called_normal", "called normal", True),
    ("normal_false_lesion_rate", "false lesions", True),
    ("macro_f1", "macro-F1", False),
    ("malignant_auc", "AUC", False),
)
OFFSET_SUFFIX = re.compile(r"_c\d+$")


def host_type(machine: dict) -> str:
    """``<vendor> f<family> m<model>`` from a results record's machine, or the CPU's name
    with "family not recorded" for records written before the family was kept."""
    cpu = machine.get("cpu") or "unknown CPU"
    vendor = "Intel Xeon" if "Xeon" in cpu else "AMD EPYC" if "EPYC" in cpu else cpu
    found = re.match(r"family (\d+) model (\d+)", machine.get("cpu_isa") or "")
    if not found:
        return f"{vendor} (family not recorded)"
    return f"{vendor} f{found.group(1)} m{found.group(2)}"


def candidate_of(path: Path) -> str:
    """A results file's candidate: its name less ``chain_seeds_val_`` and the classifier
    offset suffix (``defaults_xeon_c100`` -> ``defaults_xeon``)."""
    stem = path.stem.removeprefix("chain_seeds_val_")
    return OFFSET_SUFFIX.sub("", stem)


def settings_text(changes: dict | None) -> str:
    """``section.key=value`` for each recorded change, or "(its commit's defaults)"."""
    items = [
        f"{section}.{key}={value}"
        for section, values in sorted((changes or {}).items())
        for key, value in sorted(values.items())
    ]
    return " ".join(items) or "(its commit's defaults)"


def row(name: str, records: list[dict]) -> dict:
    """One candidate's row from its records (one per classifier offset), pooled by
    judge_candidate's ``pool`` (which refuses records of different settings)."""
    from bench.judge_candidate import pool

    pooled = pool(records, [f"{name} file {i + 1}" for i in range(len(records))])
    summary = pooled["summary"]
    figures = {key: summary["figures"].get(key, {}).get("mean") for key, _, _ in FIGURES}
    drops = {
        shift: values["lesion_dice_mean_drop"]["mean"]
        for shift, values in (summary.get("stress") or {}).items()
        if values.get("lesion_dice_mean_drop", {}).get("mean") is not None
    }
    worst = max(drops, key=drops.get) if drops else None
    behaviour = summary.get("behaviour")
    blank = (
        f"{sum('blank_image' not in failed for failed in behaviour.values())} of {len(behaviour)}"
        if behaviour
        else "not recorded"
    )
    offsets = sorted(
        {n for record in records for n in (record.get("seed_offsets") or {}).values()} | {0}
    )
    return {
        "candidate": name,
        "host": host_type(records[0].get("machine") or {}),
        "date": max(record.get("date", "") for record in records),
        "commit": (records[0].get("machine") or {}).get("commit"),
        "runs": summary["n_seeds"],
        "classifier_offsets": offsets,
        "settings": settings_text(records[0].get("changes")),
        "figures": figures,
        "worst_shift": worst,
        "worst_dice_drop": drops.get(worst) if worst else None,
        "blank_image_passed": blank,
    }


def collect(results: Path) -> tuple[list[dict], list[str]]:
    """Rows for every candidate of ``results/chain_seeds_val_*.json``, and a line for each
    candidate whose files could not be pooled or read (said, not dropped silently)."""
    groups: dict[str, list[tuple[Path, dict]]] = {}
    problems = []
    for path in sorted(results.glob("chain_seeds_val_*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as failed:
            problems.append(f"{path.name}: not readable ({failed})")
            continue
        if "summary" not in record:
            problems.append(f"{path.name}: no summary")
            continue
        groups.setdefault(candidate_of(path), []).append((path, record))
    rows = []
    for name, members in sorted(groups.items()):
        records = [record for _, record in members]
        try:
            rows.append(row(name, records))
        except SystemExit as refused:
            problems.append(f"{name}: its files were not pooled ({refused})")
    rows.sort(key=lambda r: (r["host"], r["date"], r["candidate"]))
    return rows, problems


def _fmt(value, percent: bool) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:.1f} %" if percent else f"{value:.3f}"


def render(rows: list[dict], problems: list[str], date: str) -> str:
    lines = [
        f"Every candidate's results file on the val split (`bench/results/chain_seeds_val_*.json`),"
        f" read {date}: {len(rows)} candidates, means over each candidate's runs (whole-chain"
        " seeds, and classifier reseeds where it has `_c<N>` files). Compare rows of one host"
        " type only, and a candidate with the reference it was judged against (its results"
        " file says which, and the verdict).",
        "",
    ]
    for host in sorted({r["host"] for r in rows}):
        lines += [
            f"### {host}",
            "",
            "| candidate | date | runs | "
            + " | ".join(title for _, title, _ in FIGURES)
            + " | worst stress Dice drop | blank image passed |",
            "|---|---|---:|" + "---:|" * len(FIGURES) + "---|---|",
        ]
        for r in (r for r in rows if r["host"] == host):
            cells = [_fmt(r["figures"][key], pct) for key, _, pct in FIGURES]
            worst = (
                f"{r['worst_dice_drop']:.3f} ({r['worst_shift']})" if r["worst_shift"] else "n/a"
            )
            lines.append(
                f"| `{r['candidate']}` | {r['date']} | {r['runs']} | "
                + " | ".join(cells)
                + f" | {worst} | {r['blank_image_passed']} |"
            )
        lines.append("")
    lines += ["Settings of each, as recorded (changes from the params.yaml of its commit):", ""]
    for r in rows:
        lines.append(f"- `{r['candidate']}` ({r['commit']}): {r['settings']}")
    if problems:
        lines += ["", "Not in the table:", ""] + [f"- {p}" for p in problems]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--results",
        type=Path,
        default=REPO / "bench" / "results",
        help="the folder of the chain_seeds_val_*.json files (default: bench/results)",
    )
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from bench.results_files import write_results

    if not args.results.is_dir():
        raise SystemExit(f"{args.results}: no such folder of results files")
    date = time.strftime("%Y-%m-%d")
    rows, problems = collect(args.results)
    if not rows:
        raise SystemExit(
            f"{args.results}: no chain_seeds_val_*.json results; score a candidate with "
            "bench/bench_chain_seeds.py --split val first"
        )
    rendered = render(rows, problems, date)
    result = {"date": date, "candidates": rows, "not_listed": problems}
    write_results(
        "candidates",
        "Candidates scored on the val split",
        result,
        rendered,
        script="bench/list_candidates.py",
    )
    print(rendered)
    return 0


if __name__ == "__main__":
    sys.exit(main())
