"""What a lesion rule with a peak gate would do to one trained U-Net, on the val split
(issue 13: choose on val, never on test): a component of ``probability >= threshold``
counts as a lesion only if it covers ``min_area`` of the image and its highest probability
reaches ``min_peak`` (hysteresis thresholding: the gate finds the lesion, the threshold
draws its outline). ``min_peak == threshold`` is the chain's rule today.

    python bench/sweep_lesion_rule.py --workspace . --name defaults_make_run

For each normal and lesion image it records the largest component's peak probability and
area at each threshold (so any gate can be read off), then the grid of (threshold,
min_peak, min_area): lesion images with no lesion found, normal images with a false
lesion, lesion Dice (mean over lesion images, a missed lesion scoring 0), as
robustness_figures defines them. Descriptive: it chooses nothing. Writes
bench/results/lesion_rule_<name>.{json,md} (the .md's generated part; ``--render`` writes it
again from the .json).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SCRIPT = "bench/sweep_lesion_rule.py"
TITLE = "A lesion rule with a peak gate, on one trained U-Net"
THRESHOLDS = (0.3, 0.4, 0.5)
PEAKS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
AREAS = (0.002, 0.005, 0.01)


def gated_mask(prob: np.ndarray, threshold: float, min_peak: float, min_area: float, keep: str):
    """The chain's clean_mask with a peak gate: components of ``prob >= threshold`` of at
    least ``min_area`` of the image whose maximum is at least ``min_peak``; the largest of
    those if ``keep == 'largest'``."""
    from scipy import ndimage

    labelled, n = ndimage.label(prob >= threshold, structure=np.ones((3, 3)))
    if n == 0:
        return np.zeros(prob.shape, dtype=bool)
    index = np.arange(1, n + 1)
    sizes = ndimage.sum_labels(np.ones_like(prob), labelled, index)
    peaks = ndimage.maximum(prob, labelled, index)
    min_px = max(int(np.ceil(min_area * prob.size)), 1)
    ok = (sizes >= min_px) & (peaks >= max(min_peak, threshold))
    if not ok.any():
        return np.zeros(prob.shape, dtype=bool)
    if keep == "largest":
        best = index[ok][np.argmax(sizes[ok])]
        return labelled == best
    return np.isin(labelled, index[ok])


def sweep(probs, masks, labels, keep: str) -> list[dict]:
    sys.path.insert(0, str(REPO))
    from bench.bench_unet_screen import segmentation_figures

    rows = []
    for threshold in THRESHOLDS:
        for min_peak in PEAKS:
            if min_peak < threshold:
                continue
            for min_area in AREAS:
                pred = [gated_mask(p, threshold, min_peak, min_area, keep) for p in probs]
                figures = segmentation_figures(masks, labels, pred)
                rows.append(
                    {"threshold": threshold, "min_peak": min_peak, "min_area": min_area, **figures}
                )
    return rows


def peaks_by_class(probs, labels, threshold: float) -> dict:
    """The highest probability in each image (the gate a lesion must pass to be found at
    all), by class: its quantiles."""
    out = {}
    for group in ("normal", "lesion"):
        values = [
            float(p.max())
            for p, label in zip(probs, labels, strict=True)
            if (label == "normal") == (group == "normal")
        ]
        out[group] = {
            "n": len(values),
            "quantiles": {
                q: round(float(np.quantile(values, q)), 3) for q in (0.1, 0.25, 0.5, 0.75, 0.9)
            },
            "above_threshold": round(float(np.mean([v >= threshold for v in values])), 3),
        }
    return out


def render(record: dict) -> str:
    from bench.results_files import measured_on

    lines = [
        f"Workspace `{record['workspace']}`, split {record['split']}, {record['n_images']} "
        f"images, test-time flip {record['tta_flip']}, keep {record['keep']}; "
        f"{measured_on(record['machine'], record['date'])}. Descriptive (it chooses "
        "nothing).",
        "",
        "Highest lesion probability per image (quantiles 10/25/50/75/90 %):",
        "",
    ]
    for group, item in record["peaks"].items():
        qs = " / ".join(f"{v:.3f}" for v in item["quantiles"].values())
        lines.append(f"- {group} ({item['n']}): {qs}")
    lines += [
        "",
        "| threshold | min_peak | min_area | not found | false lesion | lesion Dice |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in record["grid"]:
        lines.append(
            f"| {r['threshold']} | {r['min_peak']} | {r['min_area']} | "
            f"{r['lesion_not_found']:.3f} | {r['normal_false_lesion_rate']:.3f} | "
            f"{r['lesion_dice_mean']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", type=Path, help="a workspace whose train_unet has run")
    parser.add_argument("--name", required=True)
    parser.add_argument("--split", default="val", choices=("val", "train"))
    parser.add_argument(
        "--render", action="store_true", help="only write the .md again from the .json"
    )
    args = parser.parse_args(argv)
    if args.workspace is None and not args.render:
        parser.error("--workspace is needed (or --render)")
    sys.path.insert(0, str(REPO))
    from bench.results_files import RESULTS, write_results

    name = f"lesion_rule_{args.name}"
    if args.render:
        record = json.loads((RESULTS / f"{name}.json").read_text())
        write_results(name, f"{TITLE}: {args.name}", record, render(record), SCRIPT)
        return 0
    from bench.bench_data import machine_info
    from bench.bench_unet_screen import load_workspace
    from busi.model.chain import segment

    loaded = load_workspace(args.workspace, args.split)
    screen_args, crop = loaded["screen_args"], loaded["crop"]
    unet = screen_args["unet"]
    probs = segment(unet, screen_args["images"], unet.input_shape[1], crop.tta_flip)
    record = {
        "name": args.name,
        "workspace": str(args.workspace),
        "split": args.split,
        "n_images": len(probs),
        "tta_flip": crop.tta_flip,
        "keep": crop.keep,
        "machine": machine_info(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "peaks": peaks_by_class(probs, loaded["labels"], crop.threshold),
        "grid": sweep(probs, screen_args["masks"], loaded["labels"], crop.keep),
    }
    write_results(name, f"{TITLE}: {args.name}", record, render(record), SCRIPT)
    print(render(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
