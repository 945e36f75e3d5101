"""Would an ensemble of U-Nets hold up better than one? The segmentation figures of each
seed's U-Net and of the mean of their lesion probabilities, on the val split (issue 13:
choose on val, never on test), from the seed workspaces of bench_chain_seeds.py. Only the
U-Nets run (with the flip average, as the chain does); the lesion rule is params.yaml's.

    python bench/bench_unet_ensemble.py                    # seeds 0 1 2 of chain_seeds
    python bench/bench_unet_ensemble.py --workspace 0=PATH 1=PATH

Writes bench/results/unet_ensemble.{json,md}.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SEEDS_DIR = REPO / "scratch" / "chain-seeds" / "default"


def figures(probs: list[np.ndarray], truth: list[np.ndarray], labels: list[str], rule) -> dict:
    """Lesion Dice (mean over lesion images), false-lesion rate on normal images, and the
    share of lesion images with no lesion found, for probability maps under ``rule``."""
    from busi.model.masks import clean_mask
    from busi.model.metrics import segmentation_metrics

    pred = [clean_mask(p, rule) for p in probs]
    seg = segmentation_metrics(truth, pred, labels)
    lesion = [i for i, label in enumerate(labels) if label != "normal"]
    return {
        "lesion_dice": float(seg["dice_mean"]),
        "normal_false_lesion_rate": float(seg["normal_false_lesion_rate"]),
        "lesion_not_found": float(np.mean([not pred[i].any() for i in lesion])),
    }


def ensemble_figures(
    probs_by_seed: dict[int, list[np.ndarray]], truth: list, labels: list[str], rule
) -> dict[str, dict]:
    """Each seed alone, then the mean probability of every combination of two or more."""
    seeds = sorted(probs_by_seed)
    out = {f"seed {s}": figures(probs_by_seed[s], truth, labels, rule) for s in seeds}
    for k in range(2, len(seeds) + 1):
        for combo in itertools.combinations(seeds, k):
            mean = [
                np.mean([probs_by_seed[s][i] for s in combo], axis=0) for i in range(len(truth))
            ]
            out["mean of " + "+".join(map(str, combo))] = figures(mean, truth, labels, rule)
    return out


def render(result: dict) -> str:
    rows = result["figures"]
    singles = [v for k, v in rows.items() if k.startswith("seed ")]
    lines = [
        f"Measured {result['date']} on {result['machine']}, commit {result['commit']}, the "
        f"{result['split']} split ({result['n_images']} images, {result['n_normal']} normal), "
        f"lesion rule {result['rule']}, U-Nets of: "
        + "; ".join(f"seed {s} `{p}`" for s, p in result["workspaces"].items())
        + ".",
        "",
        "| U-Net | lesion Dice | false lesion on normal images | lesion images not found |",
        "|---|---:|---:|---:|",
    ]
    for name, f in rows.items():
        lines.append(
            f"| {name} | {f['lesion_dice']:.3f} | {f['normal_false_lesion_rate']:.3f} | "
            f"{f['lesion_not_found']:.3f} |"
        )
    if singles:
        mean = {k: np.mean([s[k] for s in singles]) for k in singles[0]}
        lines.append(
            f"| mean of the single seeds | {mean['lesion_dice']:.3f} | "
            f"{mean['normal_false_lesion_rate']:.3f} | {mean['lesion_not_found']:.3f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workspace",
        nargs="+",
        default=[f"{s}={SEEDS_DIR / f'seed-{s}' / 'workspace'}" for s in (0, 1, 2)],
        metavar="SEED=PATH",
        help="a seed workspace with models/unet.keras and the data (default: chain_seeds' 0-2)",
    )
    parser.add_argument(
        "--split", default="val", choices=("val", "train"), help="default: %(default)s"
    )
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    import subprocess
    from argparse import Namespace

    import yaml

    from bench.bench_data import machine_info
    from bench.results_files import seed_paths, write_results
    from busi.model.chain import segment
    from busi.model.loading import load_chain_and_split
    from busi.model.masks import LesionRule

    workspaces = seed_paths(args.workspace, "--workspace", "SEED=PATH to a seed workspace")
    crop = yaml.safe_load((REPO / "params.yaml").read_text())["crop_rois"]
    rule = LesionRule(crop["threshold"], crop["min_area"], crop["keep"])
    probs, truth, labels = {}, None, None
    for seed, ws in sorted(workspaces.items()):
        if not (ws / "models" / "unet.keras").is_file():
            raise SystemExit(f"{ws}: no models/unet.keras; run bench_chain_seeds.py first")
        paths = Namespace(
            unet=ws / "models/unet.keras",
            classifier=ws / "models/classifier.keras",
            rois=ws / "data/rois",
            manifest=ws / "data/manifest.csv",
            splits=ws / "data/splits.csv",
            data_dir=ws / "data/busi",
        )
        unet, _, _, part, images, masks = load_chain_and_split(paths, args.split)
        these = part["class"].to_list()
        if labels is not None and these != labels:
            raise SystemExit(f"{ws}: its {args.split} split differs from the first workspace's")
        probs[seed] = segment(unet, images, unet.input_shape[1], tta_flip=crop["tta_flip"])
        truth, labels = masks, these
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": "{cpu_model} ({nproc} cores)".format(**machine_info()),
        "commit": commit,
        "split": args.split,
        "n_images": len(labels),
        "n_normal": labels.count("normal"),
        "rule": f"threshold {rule.threshold}, min_area {rule.min_area}, keep {rule.keep}",
        "workspaces": {str(s): str(p) for s, p in sorted(workspaces.items())},
        "figures": ensemble_figures(probs, truth, labels, rule),
    }
    write_results("unet_ensemble", "U-Net ensembles on the val split", result, render(result))
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
