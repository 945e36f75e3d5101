"""Where the chain's errors come from, from evaluate_models' per-image table (issue 13): of
the lesion images called normal, how many had no lesion found by the U-Net (the classifier
then sees the whole image) and how many had one; of the normal images, how many got a false
lesion and what the classifier made of them; per class and per lesion size. With the
``id`` and ``dup_group`` columns, across the seeds: the lesion images no seed found, by
near-duplicate group (one patient's series of images), and the lesion Dice with each group
weighing once beside the per-image mean. No model runs.

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


def if_hidden_when_called_normal(table: pd.DataFrame) -> dict[str, list[float]]:
    """A chain that shows no lesion on an image it calls normal, from the same table: each
    segmentation figure [as it is, with the mask hidden]. Normal images lose the false
    lesions the classifier calls normal; lesion images called normal lose their mask (Dice 0,
    "not found"). Needs the ``dice`` column (NaN on normal images)."""
    lesion = table["class"] != "normal"
    found = table["pred_area_fraction"] > 0
    hidden = table["predicted"] == "normal"
    dice = table["dice"].where(~hidden, 0.0)
    return {
        "normal_false_lesion_rate": [
            float(found[~lesion].mean()),
            float((found & ~hidden)[~lesion].mean()),
        ],
        "lesion_dice": [float(table["dice"][lesion].mean()), float(dice[lesion].mean())],
        "lesion_not_found_rate": [
            float((~found)[lesion].mean()),
            float((~found | hidden)[lesion].mean()),
        ],
    }


def missed_by_group(tables: dict[str, pd.DataFrame]) -> dict:
    """Across seeds' tables of one split (columns id, dup_group, class, pred_area_fraction,
    dice): the lesion images the chain found in no seed and the near-duplicate groups they
    belong to (with each group's number of lesion images), and per seed the lesion Dice as
    the mean over images and as the mean over groups of each group's mean (each patient's
    series weighing once)."""
    indexed = {s: t.set_index("id") for s, t in tables.items()}
    first = next(iter(indexed.values()))
    ids = first.index[first["class"] != "normal"]
    for seed, table in indexed.items():
        if set(table.index[table["class"] != "normal"]) != set(ids):
            raise SystemExit(f"seed {seed}'s table has other lesion images than the first's")
    found = pd.DataFrame({s: t.loc[ids, "pred_area_fraction"] > 0 for s, t in indexed.items()})
    groups = first.loc[ids, "dup_group"]
    never = groups[~found.any(axis=1)]
    counts = never.value_counts()
    sizes = groups.value_counts()
    out = {
        "lesion_images": len(ids),
        "lesion_groups": int(groups.nunique()),
        "missed_in_every_seed": len(never),
        "missed_in_some_seed": int((~found.all(axis=1)).sum()),
        "groups_missed_in_every_seed": {
            str(g): [int(n), int(sizes[g])] for g, n in sorted(counts.items(), key=lambda x: -x[1])
        },
    }
    if all("dice" in t.columns for t in indexed.values()):
        out["dice_per_image_mean"] = {
            s: float(t.loc[ids, "dice"].mean()) for s, t in indexed.items()
        }
        out["dice_per_group_mean"] = {
            s: float(t.loc[ids, "dice"].groupby(groups).mean().mean()) for s, t in indexed.items()
        }
    return out


def render_groups(groups: dict) -> list[str]:
    listed = "; ".join(
        f"`{g}` {n} of {size}" for g, (n, size) in groups["groups_missed_in_every_seed"].items()
    )
    lines = [
        "",
        f"Lesion images found in no seed: {groups['missed_in_every_seed']} of "
        f"{groups['lesion_images']} ({groups['lesion_groups']} near-duplicate groups); missed "
        f"in at least one seed: {groups['missed_in_some_seed']}. Their groups (missed of the "
        f"group's lesion images): {listed or 'none'}.",
    ]
    if "dice_per_group_mean" in groups:
        seeds = list(groups["dice_per_image_mean"])
        lines += [
            "",
            "| lesion Dice | " + " | ".join(f"seed {s}" for s in seeds) + " |",
            "|---|" + "---:|" * len(seeds),
            "| mean over images | "
            + " | ".join(f"{groups['dice_per_image_mean'][s]:.3f}" for s in seeds)
            + " |",
            "| mean over groups (each group's mean) | "
            + " | ".join(f"{groups['dice_per_group_mean'][s]:.3f}" for s in seeds)
            + " |",
        ]
    return lines


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
        f"From {len(seeds)} run(s) of the chain on the BUSI {result.get('split', 'test')} "
        f"split, {result['date']}: "
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
    hidden = result.get("if_hidden_when_called_normal")
    if hidden:
        lines += [
            "",
            "If the chain showed no lesion on an image it calls normal (as it is -> hidden):",
            "",
            "| figure | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |",
            "|---|" + "---:|" * (len(seeds) + 1),
        ]
        for key in hidden[str(seeds[0])]:
            pairs = [hidden[str(s)][key] for s in seeds]
            mean = [sum(p[i] for p in pairs) / len(pairs) for i in (0, 1)]
            cells = [f"{a:.3f} -> {b:.3f}" for a, b in (*pairs, mean)]
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
    if result.get("missed_by_group"):
        lines += render_groups(result["missed_by_group"])
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
    parser.add_argument(
        "--split",
        default="test",
        choices=("test", "val"),
        help="the split the tables were evaluated on, as the report says (default: test)",
    )
    parser.add_argument(
        "--name",
        default=None,
        help="write chain_errors_<name>.{json,md} instead of chain_errors (a candidate's)",
    )
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from bench.results_files import write_results

    tables = parse_tables(args.per_image)
    read = {str(s): pd.read_csv(p) for s, p in sorted(tables.items())}
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "split": args.split,
        "seeds": sorted(tables),
        "tables": {str(s): str(p) for s, p in sorted(tables.items())},
        "per_seed": {s: error_sources(t) for s, t in read.items()},
    }
    if all("dice" in t.columns for t in read.values()):
        result["if_hidden_when_called_normal"] = {
            s: if_hidden_when_called_normal(t) for s, t in read.items()
        }
    if all({"id", "dup_group"} <= set(t.columns) for t in read.values()):
        result["missed_by_group"] = missed_by_group(read)
    rendered = render(result)
    name = f"chain_errors_{args.name}" if args.name else "chain_errors"
    title = "Where the chain's errors come from"
    write_results(name, title, result, rendered, script="bench/bench_chain_errors.py")
    print(rendered)
    return 0


if __name__ == "__main__":
    sys.exit(main())
