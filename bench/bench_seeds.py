"""Spread of the chain's test figures over classifier seeds, with the project's trained U-Net
and crops fixed (retraining the U-Net per seed costs ~28 min each on 2 CPU cores).

Run after `make run`:  python bench/bench_seeds.py --seeds 0 1 2

Trains the classifier once per seed in memory (nothing of the project is overwritten),
evaluates the whole chain on the test split for each, and writes bench/results/seeds.json
and a table to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))

    from busi.config import from_dict
    from busi.data.preprocess import load_pair
    from busi.data.splits import load_split_rows
    from busi.model.loading import chain_settings
    from busi.model.unet import load_unet
    from components.evaluate_models import CLASSES, EvaluateConfig, evaluate_chain, headline
    from components.train_classifier import ClassifierConfig, fit_classifier, load_rois

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    base = from_dict(ClassifierConfig, params["train_classifier"])
    x_train, y_train = load_rois(REPO / "data" / "rois" / "train.npz")
    x_val, y_val = load_rois(REPO / "data" / "rois" / "val.npz")
    unet = load_unet(REPO / "models" / "unet.keras")
    crop = chain_settings(REPO / "data" / "rois" / "summary.json")
    rows = load_split_rows(REPO / "data" / "manifest.csv", REPO / "data" / "splits.csv")
    test = rows[rows["split"] == "test"]
    pairs = [
        load_pair(REPO / "data" / "busi", r["path"], r["mask_files"]) for _, r in test.iterrows()
    ]
    images, masks = [p[0] for p in pairs], [p[1] for p in pairs]
    labels = [CLASSES.index(c) for c in test["class"]]

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            cfg = dataclasses.replace(base, seed=seed)
            model = fit_classifier(x_train, y_train, x_val, y_val, cfg, Path(tmp) / f"h{seed}.csv")
            out = evaluate_chain(images, masks, labels, unet, model, crop.roi, crop.tta_flip,
                                 EvaluateConfig())  # fmt: skip
            results[seed] = {k: v for k, v in headline(out).items()}
            print(seed, results[seed], flush=True)
    keys = ["accuracy", "macro_f1", "malignant_auc", "ece"]
    spread = {
        k: {"mean": float(np.mean([r[k] for r in results.values()])),
            "min": float(min(r[k] for r in results.values())),
            "max": float(max(r[k] for r in results.values()))}
        for k in keys
    }  # fmt: skip
    out_path = REPO / "bench" / "results" / "seeds.json"
    out_path.write_text(json.dumps({"per_seed": results, "spread": spread}, indent=2) + "\n")
    print("| metric | mean | min | max |\n|---|---:|---:|---:|")
    for k, s in spread.items():
        print(f"| {k} | {s['mean']:.3f} | {s['min']:.3f} | {s['max']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
