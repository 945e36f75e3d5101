"""What the chain's lesion figures would be if the classifier could veto the U-Net's lesion:
the mask is shown only when the classifier's probability of "normal" is below ``veto``
(``veto`` 1.0: never vetoed, the chain today). On one trained chain (a workspace whose
crop_rois and train_classifier have run), on the val split (issue 13: choose on val, never
on test).

    python bench/sweep_normal_veto.py --workspace . --name defaults_make_run

Per veto level: lesion images with no lesion shown, normal images with a lesion shown, lesion
Dice (mean over lesion images, a vetoed or missed lesion scoring 0), as robustness_figures
defines them; and, unchanged by the veto, lesion images called normal. Also each class's
P(normal) where the U-Net found a lesion (what the veto reads). And per level below 1.0,
what the classes would be if the chain also called an image normal only at the same level
(``normal_call``: normal when P(normal) >= the level, else the likelier of benign and
malignant; at 1.0 the argmax, as today): lesion images called normal, normal images called a
lesion, accuracy and macro-F1. Descriptive: it chooses nothing. Writes
bench/results/normal_veto_<name>.{json,md} (the .md's generated part; ``--render``
writes it again from the .json).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SCRIPT = "bench/sweep_normal_veto.py"
TITLE = "The classifier's veto on the U-Net's lesion"
VETOES = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4)


def vetoed_masks(masks: list, p_normal: np.ndarray, veto: float) -> list:
    """The masks with those of images whose P(normal) is at least ``veto`` emptied."""
    return [m if p < veto else np.zeros_like(m) for m, p in zip(masks, p_normal, strict=True)]


def normal_call(proba: np.ndarray, classes: list[str], level: float) -> np.ndarray:
    """Class indices when an image is called normal only at P(normal) >= ``level``, and
    otherwise the likelier lesion class; ``level`` 1.0: the argmax (the chain today)."""
    proba = np.asarray(proba, dtype=float)
    if level >= 1.0:
        return proba.argmax(axis=1)
    k = classes.index("normal")
    lesion_only = proba.copy()
    lesion_only[:, k] = -1.0
    return np.where(proba[:, k] >= level, k, lesion_only.argmax(axis=1))


def call_figures(proba: np.ndarray, labels: list[str], classes: list[str], level: float) -> dict:
    """Lesion images called normal, normal images called a lesion, accuracy and macro-F1 of
    :func:`normal_call` at ``level``."""
    from sklearn.metrics import f1_score

    y = np.array([classes.index(label) for label in labels])
    pred = normal_call(proba, classes, level)
    k = classes.index("normal")
    lesion = y != k
    return {
        "lesion_called_normal": float((pred[lesion] == k).mean()) if lesion.any() else None,
        "normal_called_lesion": float((pred[~lesion] != k).mean()) if (~lesion).any() else None,
        "accuracy": float((pred == y).mean()),
        "macro_f1": float(
            f1_score(y, pred, labels=list(range(len(classes))), average="macro", zero_division=0)
        ),
    }


def sweep(true_masks, labels, masks, p_normal, proba=None, classes=None) -> list[dict]:
    """Per veto level: the lesion figures of the vetoed masks and, given the class
    probabilities, :func:`call_figures` at the same level."""
    sys.path.insert(0, str(REPO))
    from bench.bench_unet_screen import segmentation_figures

    rows = []
    for v in VETOES:
        kept = vetoed_masks(masks, p_normal, v)
        row = {"veto": v, **segmentation_figures(true_masks, labels, kept)}
        if proba is not None:
            row["call"] = call_figures(proba, labels, classes, v)
        rows.append(row)
    return rows


def p_normal_where_found(masks, p_normal, labels) -> dict:
    out = {}
    for cls in sorted(set(labels)):
        values = [
            float(p)
            for m, p, label in zip(masks, p_normal, labels, strict=True)
            if label == cls and m.any()
        ]
        out[cls] = {
            "n_found": len(values),
            "quantiles": {
                q: round(float(np.quantile(values, q)), 3) if values else None
                for q in (0.1, 0.5, 0.9)
            },
        }
    return out


def render(record: dict) -> str:
    from bench.results_files import measured_on

    lines = [
        f"Workspace `{record['workspace']}`, split {record['split']}, {record['n_images']} "
        f"images; {measured_on(record['machine'], record['date'])}. Descriptive (it chooses "
        "nothing).",
        "",
    ]
    if record.get("workspace_normal_veto", 1.0) < 1.0:
        lines += [
            f"The workspace's chain vetoes at {record['workspace_normal_veto']}; the masks "
            "swept here are the U-Net's before any veto.",
            "",
        ]
    lines += [
        f"Lesion images called normal (argmax; no veto changes it): {record['called_normal']:.3f}.",
        "",
        "P(normal) where the U-Net found a lesion (quantiles 10/50/90 %):",
        "",
    ]
    for cls, item in record["p_normal_found"].items():
        qs = " / ".join("-" if v is None else f"{v:.3f}" for v in item["quantiles"].values())
        lines.append(f"- {cls} ({item['n_found']} found): {qs}")
    calls = all("call" in r for r in record["grid"])
    head = "| veto at P(normal) >= | not found | false lesion | lesion Dice |"
    rule = "|---:|---:|---:|---:|"
    if calls:
        head += " called normal, normal_call at it | normal called a lesion | accuracy | macro-F1 |"
        rule += "---:|---:|---:|---:|"
    lines += ["", head, rule]
    for r in record["grid"]:
        line = (
            f"| {r['veto']} | {r['lesion_not_found']:.3f} | "
            f"{r['normal_false_lesion_rate']:.3f} | {r['lesion_dice_mean']:.3f} |"
        )
        if calls:
            c = r["call"]
            line += (
                f" {c['lesion_called_normal']:.3f} | {c['normal_called_lesion']:.3f} | "
                f"{c['accuracy']:.3f} | {c['macro_f1']:.3f} |"
            )
        lines.append(line)
    if calls:
        lines += [
            "",
            "At 1.0 the classes are the argmax (the chain today); below it, an image is called "
            "normal only at P(normal) >= the level.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", type=Path, help="a workspace whose chain has run")
    parser.add_argument("--name", required=True)
    parser.add_argument("--split", default="val", choices=("val", "train"))
    parser.add_argument(
        "--render", action="store_true", help="only write the .md again from the .json"
    )
    args = parser.parse_args(argv)
    if args.workspace is None and not args.render:
        parser.error("--workspace is needed (or --render)")
    sys.path.insert(0, str(REPO))
    from bench.results_files import RESULTS, chain_paths, write_results

    name = f"normal_veto_{args.name}"
    title = f"{TITLE}: {args.name}"
    if args.render:
        record = json.loads((RESULTS / f"{name}.json").read_text())
        write_results(name, title, record, render(record), SCRIPT)
        return 0
    from bench.bench_data import machine_info
    from busi.data.preprocess import CLASSES
    from busi.model.chain import predict_chain
    from busi.model.loading import load_chain_and_split

    ws = args.workspace
    chain = load_chain_and_split(chain_paths(ws), args.split)
    unet, classifier, crop, part, images, true_masks = chain
    # The U-Net's masks before any veto: a workspace trained with crop_rois.normal_veto below
    # 1.0 would otherwise hand over masks already vetoed at its level (the veto changes no
    # crop or class, only the masks shown).
    roi = dataclasses.replace(crop.roi, normal_veto=1.0)
    result = predict_chain(images, unet, classifier, roi, crop.tta_flip)
    labels = part["class"].to_list()
    proba = np.asarray(result.proba)
    p_normal = proba[:, CLASSES.index("normal")]
    record = {
        "name": args.name,
        "workspace": str(ws),
        "workspace_normal_veto": crop.roi.normal_veto,
        "split": args.split,
        "n_images": len(images),
        "machine": machine_info(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "called_normal": call_figures(proba, labels, list(CLASSES), 1.0)["lesion_called_normal"],
        "p_normal_found": p_normal_where_found(result.masks, p_normal, labels),
        "grid": sweep(true_masks, labels, result.masks, p_normal, proba, list(CLASSES)),
    }
    write_results(name, title, record, render(record), SCRIPT)
    print(render(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
