"""Two chains compared image by image on one split (issue 13: what a candidate changes, and
where), from evaluate_models' per-image tables of each chain's runs (typically one U-Net
seed and its classifier reseeds, kept by bench_chain_seeds.py in bench/results/per_image/).
No model runs.

For each chain, over its runs: the lesion images called normal and the normal images called
a lesion (how many runs, the mean P(normal)), the benign/malignant confusions, and the rates
of lesions not found and called normal both per image and per near-duplicate group (each
group's share, averaged over groups: one patient's series of images weighs once). Then the
images the two chains call differently, largest difference first.

    P=bench/results/per_image
    python bench/compare_chains.py --name t04_vs_defaults_xeon_useed2 \\
        --a defaults_xeon $P/chain_seeds_val_defaults_xeon{,_c100,_c200}_seed2.csv \\
        --b snf_fov_ema_veto_t04_xeon \\
        $P/chain_seeds_val_snf_fov_ema_veto_t04_xeon{,_c100,_c200}_seed2.csv

A lesion counts as "found" where the table's cleaned mask is not empty: with a normal veto
(crop_rois.normal_veto < 1) that is after the veto, so a vetoed lesion is not found.

Writes bench/results/compare_chains_<name>.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ("id", "dup_group", "class", "predicted", "prob_normal", "pred_area_fraction")


def read_runs(paths: list[Path]) -> list[pd.DataFrame]:
    """Each path's per-image table, indexed by image id; all must hold the same images."""
    tables = []
    for path in paths:
        if not path.is_file():
            raise SystemExit(f"{path}: no such per-image table (evaluate_models writes one)")
        table = pd.read_csv(path)
        missing = [c for c in COLUMNS if c not in table.columns]
        if missing:
            raise SystemExit(f"{path}: no column(s) {missing}; it is not a per_image.csv")
        tables.append(table.set_index("id"))
    first = tables[0]
    for path, table in zip(paths[1:], tables[1:], strict=True):
        if set(table.index) != set(first.index) or not table["class"].equals(
            first.loc[table.index, "class"]
        ):
            raise SystemExit(f"{path}: other images (or labels) than {paths[0]}")
    return tables


def per_image(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """One row per image: class, group, and over the runs the mean P(normal), how many runs
    call it normal, call it a lesion, find a lesion, and the most frequent call."""
    first = tables[0]
    out = first[["class", "dup_group"]].copy()
    out["prob_normal"] = sum(t.loc[out.index, "prob_normal"] for t in tables) / len(tables)
    out["called_normal"] = sum((t.loc[out.index, "predicted"] == "normal") for t in tables)
    out["found"] = sum((t.loc[out.index, "pred_area_fraction"] > 0) for t in tables)
    out["runs"] = len(tables)
    return out


def rates(table: pd.DataFrame) -> dict[str, float]:
    """One run's lesion not found and lesion called normal, as the share of lesion images
    and as the mean over near-duplicate groups of each group's share."""
    lesion = table[table["class"] != "normal"]
    flags = pd.DataFrame(
        {
            "lesion_not_found": lesion["pred_area_fraction"] <= 0,
            "lesion_called_normal": lesion["predicted"] == "normal",
        }
    )
    by_group = flags.groupby(lesion["dup_group"]).mean().mean()
    out = {}
    for key in flags.columns:
        out[f"{key} (images)"] = float(flags[key].mean())
        out[f"{key} (groups)"] = float(by_group[key])
    normal = table[table["class"] == "normal"]
    out["normal_called_lesion (images)"] = float((normal["predicted"] != "normal").mean())
    out["benign_called_malignant"] = int(
        ((table["class"] == "benign") & (table["predicted"] == "malignant")).sum()
    )
    out["malignant_called_benign"] = int(
        ((table["class"] == "malignant") & (table["predicted"] == "benign")).sum()
    )
    return out


def differences(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """The images the two chains call differently: a lesion image called normal, or a normal
    image called a lesion, in a different share of each chain's runs; largest first."""
    both = a.add_suffix("_a").join(b.add_suffix("_b"))
    lesion = both["class_a"] != "normal"
    share_a = both["called_normal_a"] / both["runs_a"]
    share_b = both["called_normal_b"] / both["runs_b"]
    # for a normal image the wrong call is "a lesion": 1 - called normal
    wrong_a = share_a.where(lesion, 1 - share_a)
    wrong_b = share_b.where(lesion, 1 - share_b)
    rows = pd.DataFrame(
        {
            "class": both["class_a"],
            "dup_group": both["dup_group_a"],
            "error": lesion.map({True: "called normal", False: "called a lesion"}),
            "wrong_a": wrong_a.round(3),
            "wrong_b": wrong_b.round(3),
            "prob_normal_a": both["prob_normal_a"].round(3),
            "prob_normal_b": both["prob_normal_b"].round(3),
            "found_a": both["found_a"],
            "found_b": both["found_b"],
        }
    )
    rows = rows[wrong_a != wrong_b]
    order = (rows["wrong_b"] - rows["wrong_a"]).abs().sort_values(ascending=False, kind="stable")
    return rows.loc[order.index]


def compare(runs_a: list[pd.DataFrame], runs_b: list[pd.DataFrame]) -> dict:
    """The comparison's record: each chain's per-run rates and their means, and the images
    called differently."""
    a, b = runs_a[0], runs_b[0]
    if set(a.index) != set(b.index) or not b["class"].equals(a.loc[b.index, "class"]):
        raise SystemExit("the two chains' tables hold other images (or labels): compare one split")
    out: dict = {"chains": {}}
    for key, runs in (("a", runs_a), ("b", runs_b)):
        per_run = [rates(t) for t in runs]
        means = {k: sum(r[k] for r in per_run) / len(per_run) for k in per_run[0]}
        out["chains"][key] = {"runs": per_run, "mean": means}
    diff = differences(per_image(runs_a), per_image(runs_b))
    out["differences"] = diff.reset_index().to_dict(orient="records")
    return out


def render(result: dict) -> str:
    names = result["names"]
    lines = [
        f"Compared {result['date']}, no model run: chain A `{names['a']}` "
        f"({len(result['tables']['a'])} runs), chain B `{names['b']}` "
        f"({len(result['tables']['b'])} runs), from the per-image tables "
        + "; ".join(f"`{p}`" for k in ("a", "b") for p in result["tables"][k])
        + ".",
        "",
        "| figure (each run; mean) | A | B |",
        "|---|---|---|",
    ]
    chains = result["chains"]
    for key in chains["a"]["mean"]:
        cells = []
        for side in ("a", "b"):
            values = [r[key] for r in chains[side]["runs"]]
            fmt = "{}" if isinstance(values[0], int) else "{:.3f}"  # counts, rates
            mean = chains[side]["mean"][key]
            cells.append(", ".join(fmt.format(v) for v in values) + f"; **{mean:.3f}**")
        lines.append(f"| {key} | {cells[0]} | {cells[1]} |")
    diffs = result["differences"]
    lines += [
        "",
        f"Images called differently ({len(diffs)}): the share of each chain's runs with the "
        "error, the mean P(normal), and in how many runs a lesion was found (after any veto).",
        "",
        "| image | group | error | A | B | P(normal) A | P(normal) B | found A | found B |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in diffs:
        lines.append(
            f"| {row['id']} | {row['dup_group']} | {row['error']} | {row['wrong_a']:.2f} | "
            f"{row['wrong_b']:.2f} | {row['prob_normal_a']:.2f} | {row['prob_normal_b']:.2f} | "
            f"{row['found_a']} | {row['found_b']} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--a", nargs="+", required=True, metavar=("NAME", "TABLE"))
    parser.add_argument("--b", nargs="+", required=True, metavar=("NAME", "TABLE"))
    parser.add_argument("--name", required=True, help="the results file's name")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from bench import results_files

    for option, values in (("--a", args.a), ("--b", args.b)):
        if len(values) < 2:
            raise SystemExit(f"{option}: write a chain's name, then its per-image tables")
    runs = {k: read_runs([Path(p) for p in v[1:]]) for k, v in (("a", args.a), ("b", args.b))}
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "names": {"a": args.a[0], "b": args.b[0]},
        "tables": {"a": args.a[1:], "b": args.b[1:]},
        **compare(runs["a"], runs["b"]),
    }
    name = f"compare_chains_{args.name}"
    title = f"Two chains image by image: {args.a[0]} (A) and {args.b[0]} (B)"
    results_files.write_results(
        name, title, result, render(result), script="bench/compare_chains.py"
    )
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
