"""Where the spread of a chain's val figures between seeds comes from: images flipping one by
one, or the whole chain shifting with its seed. From the per-image tables of several runs of
one setting (``bench_chain_seeds.py`` keeps one per run), per figure:

- each run's rate, and their standard deviation between runs (what the judge's SEs are made
  of);
- the standard deviation the runs would have if each image flipped on its own: with p_i the
  share of runs in which image i counts (e.g. is called normal), sqrt(sum p_i (1 - p_i) x
  k / (k - 1)) / N. A judged set n times larger cuts this part by sqrt(n);
- the share of images that count in every run or in none.

Where the runs' spread is well above the independent-flip figure, images move together: the
seed shifts the chain as a whole (how readily it calls normal, how much it marks), and more
images of the same kind would not shrink that part. Descriptive: it chooses nothing.

    python bench/seed_spread.py --name defaults_xeon \
        bench/results/per_image/chain_seeds_val_defaults_xeon_rerun_seed{0,1,2}.csv \
        bench/results/per_image/chain_seeds_val_defaults_xeon_more_seed{3,4,5}.csv

Writes bench/results/seed_spread_<name>.{json,md} (the .md's generated part).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SCRIPT = "bench/seed_spread.py"
TITLE = "Where the seeds' spread comes from"
# figure: (the images it is a rate over, whether an image counts), as evaluate_models
# defines them from a per-image table
FIGURES = {
    "lesion_called_normal": (
        lambda t: t["class"] != "normal",
        lambda t: t["predicted"] == "normal",
    ),
    "lesion_not_found": (lambda t: t["class"] != "normal", lambda t: t["pred_area_fraction"] == 0),
    "normal_false_lesion_rate": (
        lambda t: t["class"] == "normal",
        lambda t: t["pred_area_fraction"] > 0,
    ),
}


def spread(tables: list[pd.DataFrame]) -> list[dict]:
    """Per figure: the runs' rates, their SD, the independent-flip SD, the stable share. The
    tables must hold the same images (indexed by id)."""
    if len(tables) < 2:
        raise SystemExit("give at least two runs' per-image tables: a spread needs two")
    ids = [set(t.index) for t in tables]
    if any(i != ids[0] for i in ids):
        raise SystemExit("the tables do not hold the same images: runs of one split only")
    rows = []
    for figure, (among, counts) in FIGURES.items():
        hits = pd.concat(
            [counts(t)[among(t)].astype(float).rename(n) for n, t in enumerate(tables)], axis=1
        )
        k, n = hits.shape[1], hits.shape[0]
        rates = hits.mean(axis=0).to_numpy()
        p = hits.mean(axis=1).to_numpy()
        rows.append(
            {
                "figure": figure,
                "images": n,
                "rates": rates.tolist(),
                "sd_runs": float(np.std(rates, ddof=1)),
                "sd_independent": float(np.sqrt((p * (1 - p)).sum() * k / (k - 1)) / n),
                "stable_share": float(((p == 0) | (p == 1)).mean()),
            }
        )
    return rows


def render(paths: list[str], rows: list[dict]) -> str:
    """The generated part of ``seed_spread_<name>.md``."""
    lines = [
        f"Per-image tables of {len(paths)} runs (val): "
        + ", ".join(f"`{Path(p).name}`" for p in paths)
        + ". Descriptive.",
        "",
        "| figure | images | each run (%) | SD between runs | SD if images flipped on their own "
        "| ratio | images the same in every run |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = r["sd_runs"] / r["sd_independent"] if r["sd_independent"] else float("nan")
        lines.append(
            f"| {r['figure']} | {r['images']} | {' '.join(f'{v * 100:.1f}' for v in r['rates'])} "
            f"| {r['sd_runs'] * 100:.1f} points | {r['sd_independent'] * 100:.1f} points "
            f"| {ratio:.1f} | {r['stable_share'] * 100:.0f} % |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tables", nargs="+", type=Path, help="per-image CSVs, one per run")
    parser.add_argument("--name", required=True)
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.tables if not p.is_file()]
    if missing:
        raise SystemExit(f"no such per-image table: {', '.join(missing)}")
    sys.path.insert(0, str(REPO))
    from bench.results_files import write_results

    paths = [str(p) for p in args.tables]
    rows = spread([pd.read_csv(p).set_index("id") for p in args.tables])
    text = render(paths, rows)
    record = {"name": args.name, "tables": paths, "figures": rows}
    write_results(f"seed_spread_{args.name}", f"{TITLE}: {args.name}", record, text, SCRIPT)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
