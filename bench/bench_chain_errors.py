"""Where the chain's errors come from, from evaluate_models' per-image table (issue 13): of
the lesion images called normal, how many had no lesion found by the U-Net (the classifier
then sees the whole image) and how many had one; of the normal images, how many got a false
lesion and what the classifier made of them; per class and per lesion size. No model runs.

    python bench/bench_chain_errors.py                       # the project's run (seed 0)
    python bench/bench_chain_errors.py --per-image 0=plots/evaluation/per_image.csv \\
        1=scratch/chain-seeds/default/seed-1/workspace/plots/evaluation/per_image.csv

Writes bench/results/chain_errors.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
# Lesion size buckets, as evaluate_models' per_lesion_size: share of the image.
SIZES = ((0.0, 0.01, "under 1 %"), (0.01, 0.05, "1-5 %"), (0.05, 1.01, "5 % or more"))


def error_sources(table: pd.DataFrame) -> dict:
    """Counts from one per_image.csv (columns class, predicted, pred_area_fraction,
    true_area_fraction): a lesion is "found" when the cleaned mask is not empty."""
    found = table["pred_area_fraction"] > 0
    lesion = table["class"] != "normal"
    called_normal = table["predicted"] == "normal"
    out = {
        "lesion_images": int(lesion.sum()),
        "lesion_not_found": int((lesion & ~found).sum()),
        "lesion_called_normal": int((lesion & called_normal).sum()),
        "called_normal_not_found": int((lesion & called_normal & ~found).sum()),
        "called_normal_found": int((lesion & called_normal & found).sum()),
        "not_found_but_not_called_normal": int((lesion & ~found & ~called_normal).sum()),
        "normal_images": int((~lesion).sum()),
        "normal_false_lesion": int((~lesion & found).sum()),
        "normal_false_lesion_called_lesion": int((~lesion & found & ~called_normal).sum()),
        "normal_no_lesion_called_lesion": int((~lesion & ~found & ~called_normal).sum()),
    }
    for cls in ("benign", "malignant"):
        rows = table["class"] == cls
        out[f"{cls}_not_found"] = int((rows & ~found).sum())
        out[f"{cls}_called_normal"] = int((rows & called_normal).sum())
        out[f"{cls}_images"] = int(rows.sum())
    for low, high, name in SIZES:
        rows = lesion & (table["true_area_fraction"] >= low) & (table["true_area_fraction"] < high)
        out[f"size {name}: images"] = int(rows.sum())
        out[f"size {name}: not found"] = int((rows & ~found).sum())
        out[f"size {name}: called normal"] = int((rows & called_normal).sum())
    return out


def parse_tables(items: list[str]) -> dict[int, Path]:
    from bench.results_files import seed_paths

    out = seed_paths(items, "--per-image", "SEED=PATH to a per_image.csv")
    for seed, path in out.items():
        if not path.is_file():
            raise SystemExit(f"--per-image {seed}={path}: no file; run evaluate_models first")
    return out


def render(result: dict) -> str:
    seeds = result["seeds"]
    lines = [
        f"From {len(seeds)} run(s) of the chain on the BUSI test split, {result['date']}: "
        + "; ".join(f"seed {s}: `{p}`" for s, p in result["tables"].items())
        + ".",
        "",
        "| count | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |",
        "|---|" + "---:|" * (len(seeds) + 1),
    ]
    for key in result["per_seed"][str(seeds[0])]:
        values = [result["per_seed"][str(s)][key] for s in seeds]
        mean = sum(values) / len(values)
        lines.append(f"| {key} | " + " | ".join(str(v) for v in values) + f" | {mean:.1f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--per-image",
        nargs="+",
        default=["0=plots/evaluation/per_image.csv"],
        metavar="SEED=PATH",
        help="evaluate_models' per_image.csv of each run (default: the project's own run)",
    )
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from bench.results_files import write_results

    tables = parse_tables(args.per_image)
    per_seed = {str(s): error_sources(pd.read_csv(p)) for s, p in sorted(tables.items())}
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "seeds": sorted(tables),
        "tables": {str(s): str(p) for s, p in sorted(tables.items())},
        "per_seed": per_seed,
    }
    rendered = render(result)
    write_results("chain_errors", "Where the chain's errors come from", result, rendered)
    print(rendered)
    return 0


if __name__ == "__main__":
    sys.exit(main())
