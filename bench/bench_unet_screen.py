"""Screen a U-Net candidate before the rest of its chain is trained: the figures that the
U-Net alone decides, on the val split (issue 13: choose on val, never on test), from a
workspace whose train_unet has run (a bench_chain_seeds.py seed workspace stopped after
train_unet, or any finished one).

    python bench/bench_unet_screen.py --workspace scratch/chain-seeds/default/seed-1/workspace \
        --name sitenorm_flatneg --stress-reference bench/results/chain_seeds_val_repro.json \
        --require blank_image --limit lesion_not_found<=0.204 normal_false_lesion_rate<=0.75

Scored as evaluate_models and stress_test_models score the chain (the workspace's
params.yaml: crop_rois' lesion rule and test-time flip, stress_test_models' shifts and
seed, evaluate_models' behavioural settings), but without the classifier:
- unshifted: lesion Dice (mean over lesion images), lesion images with no lesion found,
  normal images with a false lesion; and each image's lesion score, the highest threshold
  at which the rule finds a lesion (``detection``: the whole trade of missed and false
  lesions over the threshold, and its AUC);
- under each stress shift: the same, and the Dice drop from unshifted;
- the behavioural checks that need only the U-Net: blank_image, lesion_free_tissue,
  drawn_lesion, and flip_invariance without its class part;
- from the training log, how much the false-lesion rate and the Dice moved from one epoch
  to the next (descriptive: no criterion reads it).
What the classifier decides (called normal, accuracy, macro-F1, AUC) is not here: a
candidate that passes a screen still needs its whole chain run.

The verdict applies the criteria given: ``--require CHECK`` (a check that must pass),
``--limit FIGURE<=X`` / ``FIGURE>=X`` on the unshifted figures, and with
``--stress-reference`` (a bench_chain_seeds.py results JSON, the defaults' seeds) every
shift's Dice drop at most max(stress_test_models' max_dice_drop, the reference's mean drop
under that shift). Where the workspace has the pipeline's own ``metrics/stress_test.json``
for the same split, the screen checks that its figures equal it.

Writes bench/results/unet_screen_<name>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# The figures a U-Net alone decides, as robustness_figures names them.
SEG_FIGURES = ("lesion_dice_mean", "lesion_not_found", "normal_false_lesion_rate")
LIMIT = re.compile(r"^(?P<figure>[a-z_]+)(?P<op><=|>=)(?P<value>[-+0-9.eE]+)$")


def segmentation_figures(true_masks: list, labels: list[str], pred_masks: list) -> dict:
    """SEG_FIGURES from cleaned masks, defined by robustness_figures (the stress tests' and
    evaluation's definitions). Its class figures need class probabilities, which a U-Net
    alone has none of: a uniform placeholder goes in and those figures are dropped."""
    from busi.data.preprocess import CLASSES
    from busi.model.metrics import robustness_figures

    placeholder = np.full((len(labels), len(CLASSES)), 1.0 / len(CLASSES))
    figures = robustness_figures(true_masks, labels, pred_masks, placeholder, CLASSES)
    return {key: figures[key] for key in SEG_FIGURES}


def lesion_score(prob: np.ndarray, min_area: float, tolerance: float = 1e-4) -> float:
    """The highest lesion threshold at which the chain's rule (``clean_mask``: a component of
    ``prob >= threshold`` covering ``min_area`` of the image) still finds a lesion, to within
    ``tolerance`` (bisection: a lesion found at a threshold is found at every lower one). At
    a threshold T an image has a lesion exactly when its score is >= T (up to the
    tolerance), so the scores give the U-Net's whole trade of missed and false lesions over
    the threshold, not one point of it."""
    from types import SimpleNamespace

    from busi.model.masks import clean_mask

    def found(threshold: float) -> bool:
        rule = SimpleNamespace(threshold=threshold, min_area=min_area, keep="largest")
        return bool(clean_mask(prob, rule).any())

    if found(1.0):
        return 1.0
    low, high = 0.0, 1.0  # found at 0 (every pixel), not at 1
    while high - low > tolerance:
        middle = (low + high) / 2
        low, high = (middle, high) if found(middle) else (low, middle)
    return low


def detection_auc(lesion_scores: list[float], normal_scores: list[float]) -> float | None:
    """The chance that a lesion image scores above a normal one (ties half): the area under
    the curve of lesions found against normal images marked, over every threshold. None
    without images of both kinds."""
    if not lesion_scores or not normal_scores:
        return None
    ours, theirs = np.asarray(lesion_scores)[:, None], np.asarray(normal_scores)[None, :]
    return float(np.mean((ours > theirs) + 0.5 * (ours == theirs)))


def not_found_at(lesion_scores: list[float], normal_scores: list[float], rate: float) -> float:
    """Lesion images with no lesion found at the lowest threshold that marks at most
    ``rate`` of the normal images (the fewest lesions missed for that false-lesion rate): a
    threshold just above the (m+1)-th highest normal score, m = floor(rate x normals)."""
    marked = int(np.floor(rate * len(normal_scores) + 1e-9))
    ranked = sorted(normal_scores, reverse=True)
    if marked >= len(ranked):
        return 0.0
    bar = ranked[marked]  # an image scoring at most this is not found
    return float(np.mean(np.asarray(lesion_scores) <= bar))


def detection(probs: list, labels: list[str], min_area: float) -> dict:
    """Each image's ``lesion_score`` (lesion and normal images apart) and the
    ``detection_auc``."""
    scores = [lesion_score(prob, min_area) for prob in probs]
    lesion = [s for s, label in zip(scores, labels, strict=True) if label != "normal"]
    normal = [s for s, label in zip(scores, labels, strict=True) if label == "normal"]
    return {
        "lesion_detection_auc": detection_auc(lesion, normal),
        "lesion_scores": lesion,
        "normal_scores": normal,
    }


def screen(images, masks, labels, unet, roi, tta_flip: bool, stress_cfg, behaviour_cfg) -> dict:
    """The unshifted figures and the lesion scores behind them (``detection``), the figures
    and Dice drop under each of stress_test_models' shifts, and the U-Net-only behavioural
    checks."""
    from busi.model.behaviour import check_blank, check_drawn_lesion, check_flip, check_tissue
    from busi.model.chain import clean_mask, segment
    from components.stress_test_models import apply_shift, shifts

    size = unet.input_shape[1]

    def figures_of(probs, msks) -> dict:
        return segmentation_figures(msks, labels, [clean_mask(p, roi) for p in probs])

    probs = segment(unet, images, size, tta_flip)
    base = figures_of(probs, masks)
    shifted = {}
    for name, shift in shifts(stress_cfg).items():
        imgs, msks = apply_shift(name, shift, images, masks, stress_cfg.seed)
        figures = figures_of(segment(unet, imgs, size, tta_flip), msks)
        drop = None
        if figures["lesion_dice_mean"] is not None and base["lesion_dice_mean"] is not None:
            drop = base["lesion_dice_mean"] - figures["lesion_dice_mean"]
        shifted[name] = {**figures, "lesion_dice_mean_drop": drop}
    normals = [img for img, label in zip(images, labels, strict=True) if label == "normal"]
    checks = [
        check_blank(unet, roi, tta_flip, behaviour_cfg),
        check_tissue(unet, normals, roi, tta_flip, behaviour_cfg),
        check_flip(unet, images, roi, behaviour_cfg, classifier=None, tta=tta_flip),
        check_drawn_lesion(unet, normals, roi, tta_flip, behaviour_cfg),
    ]
    return {
        "unshifted": base,
        "detection": detection(probs, labels, roi.min_area),
        "shifts": shifted,
        "checks": {c.name: asdict(c) for c in checks},
    }


# What is screened: the workspace's U-Net, the mean of its lesion probabilities and its
# fold U-Nets' (train_unet_folds' models/unet_folds/fold-<k>.keras, which make run trains),
# or the mean of the fold U-Nets' alone (no full U-Net).
SEGMENTER_NAMES = {
    "unet": "U-Net",
    "unet+folds": "mean of the U-Net and its fold U-Nets",
    "folds": "mean of the fold U-Nets",
}
SEGMENTERS = tuple(SEGMENTER_NAMES)


def load_segmenter(ws: Path, segmenter: str = "unet"):
    """The segmenter ``segmenter`` names, from workspace ``ws``: its U-Net, or
    ``busi.model.unet.average_unets`` of the U-Net and every fold U-Net (unet+folds) or of
    every fold U-Net alone (folds)."""
    from busi.model.unet import average_unets, load_unet

    if segmenter not in SEGMENTERS:
        raise SystemExit(f"segmenter {segmenter!r} unknown; choose one of {SEGMENTERS}")
    if segmenter == "unet":
        return load_unet(ws / "models/unet.keras")
    folds = sorted((ws / "models" / "unet_folds").glob("fold-*.keras"))
    if len(folds) < 2:
        raise SystemExit(
            f"{ws}: {len(folds)} models/unet_folds/fold-*.keras for the {segmenter} segmenter"
            ", which needs at least 2: run train_unet_folds there first "
            "(train_unet_folds.folds >= 2)"
        )
    members = [load_unet(path) for path in folds]
    if segmenter == "unet+folds":
        members.insert(0, load_unet(ws / "models/unet.keras"))
    return average_unets(members)


def load_workspace(
    ws: Path, split: str, threshold: float | None = None, segmenter: str = "unet"
) -> dict:
    """What a screen of ``ws``'s segmenter (``load_segmenter``) on ``split`` needs, from the
    workspace's params.yaml and data: ``crop`` (crop_rois), ``stress`` (stress_test_models,
    on ``split``), ``labels`` and ``screen_args``, the keyword arguments of :func:`screen`.
    ``threshold`` replaces crop_rois' lesion threshold (a candidate threshold for the same
    U-Net)."""
    from busi.config import load_section
    from busi.data.preprocess import load_pair
    from busi.data.splits import load_split_rows
    from busi.model.chain import CropConfig
    from components.evaluate_models import EvaluateConfig
    from components.stress_test_models import StressConfig

    params = ws / "params.yaml"
    crop = load_section(params, "crop_rois", CropConfig)
    if crop.threshold_choice != "fixed":
        raise SystemExit(
            f"{params}: crop_rois.threshold_choice is {crop.threshold_choice!r}; the screen "
            "knows the lesion threshold only when it is fixed"
        )
    if threshold is not None:
        crop = replace(crop, threshold=threshold)  # CropConfig checks it
    stress = replace(load_section(params, "stress_test_models", StressConfig), split=split)
    rows = load_split_rows(ws / "data/manifest.csv", ws / "data/splits.csv")
    part = rows[rows["split"] == split]
    pairs = [load_pair(ws / "data/busi", r["path"], r["mask_files"]) for _, r in part.iterrows()]
    labels = part["class"].to_list()
    return {
        "crop": crop,
        "stress": stress,
        "labels": labels,
        "screen_args": {
            "images": [p[0] for p in pairs],
            "masks": [p[1] for p in pairs],
            "labels": labels,
            "unet": load_segmenter(ws, segmenter),
            "roi": crop.roi,
            "tta_flip": crop.tta_flip,
            "stress_cfg": stress,
            "behaviour_cfg": load_section(
                params, "evaluate_models", EvaluateConfig
            ).behaviour_config(),
        },
    }


# The per-epoch validation figures whose epoch-to-epoch jumps the screen reports.
HISTORY_FIGURES = ("val_false_lesion_rate", "val_lesion_dice")


def training_history(history_csv: Path) -> dict | None:
    """What the U-Net's training log (``plots/train_unet.csv``) says about how steady
    training was: each epoch's ``HISTORY_FIGURES`` and, for each, the mean absolute change
    from one epoch to the next. None without a log (or with fewer than two epochs)."""
    import csv

    if not history_csv.is_file():
        return None
    rows = list(csv.DictReader(history_csv.open()))
    if len(rows) < 2:
        return None
    out: dict = {"epochs": len(rows)}
    for figure in HISTORY_FIGURES:
        values = [float(row[figure]) for row in rows]
        out[figure] = values
        out[f"{figure}_mean_jump"] = float(np.mean(np.abs(np.diff(values))))
    return out


def parse_limits(items: list[str]) -> list[tuple[str, str, float]]:
    """``FIGURE<=X`` / ``FIGURE>=X`` -> (figure, op, value), the figure one of SEG_FIGURES."""
    out = []
    for item in items:
        match = LIMIT.match(item.replace(" ", ""))
        if not match or match["figure"] not in SEG_FIGURES:
            raise SystemExit(
                f"--limit {item!r}: write FIGURE<=X or FIGURE>=X, FIGURE one of "
                + ", ".join(SEG_FIGURES)
            )
        out.append((match["figure"], match["op"], float(match["value"])))
    return out


def reference_drops(reference: dict) -> dict[str, float]:
    """{shift: mean Dice drop} from a bench_chain_seeds.py results record."""
    stress = reference.get("summary", {}).get("stress", {})
    drops = {
        name: figures["lesion_dice_mean_drop"]["mean"]
        for name, figures in stress.items()
        if figures.get("lesion_dice_mean_drop", {}).get("mean") is not None
    }
    if not drops:
        raise SystemExit("the stress reference has no per-shift Dice drops (summary.stress)")
    return drops


def verdict(
    result: dict,
    required: list[str],
    limits: list[tuple[str, str, float]],
    drops: dict[str, float] | None,
    max_dice_drop: float,
) -> list[dict]:
    """One row per criterion: what, the value, the limit, whether it holds. A figure that is
    undefined (None) fails its criterion: the screen cannot vouch for it."""
    rows = []
    for name in required:
        if name not in result["checks"]:
            raise SystemExit(f"--require {name}: not a check here ({', '.join(result['checks'])})")
        check = result["checks"][name]
        rows.append(
            {
                "criterion": f"{name} passes",
                "value": check["detail"],
                "limit": "passes",
                "holds": bool(check["passed"]),
            }
        )
    for figure, op, value in limits:
        got = result["unshifted"][figure]
        holds = got is not None and bool(
            got <= value + 1e-12 if op == "<=" else got >= value - 1e-12
        )
        rows.append({"criterion": figure, "value": got, "limit": f"{op} {value:g}", "holds": holds})
    if drops is not None:
        for name, figures in result["shifts"].items():
            if name not in drops:
                raise SystemExit(f"the stress reference has no shift {name!r}")
            limit = max(max_dice_drop, drops[name])
            got = figures["lesion_dice_mean_drop"]
            rows.append(
                {
                    "criterion": f"Dice drop under {name}",
                    "value": got,
                    "limit": f"<= {limit:.3f} (reference mean {drops[name]:.3f})",
                    "holds": got is not None and bool(got <= limit + 1e-12),
                }
            )
    return rows


def matches_stress_test(result: dict, record: dict) -> bool:
    """Whether the screen's segmentation figures equal those stress_test_models wrote for
    the workspace (``metrics/stress_test.json``): the screen scores as the pipeline does."""
    pairs = [(result["unshifted"][k], record["unshifted"][k]) for k in SEG_FIGURES]
    for name, figures in result["shifts"].items():
        theirs = record["shifts"].get(name)
        if theirs is None:
            return False
        pairs += [(figures[k], theirs.get(k)) for k in (*SEG_FIGURES, "lesion_dice_mean_drop")]
    return all(
        (a is None and b is None) or (a is not None and b is not None and abs(a - b) < 1e-9)
        for a, b in pairs
    )


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def render(record: dict) -> str:
    result = record["result"]
    segmenter = SEGMENTER_NAMES[record.get("segmenter", "unet")]
    lines = [
        f"Measured {record['date']} on {record['machine']}, commit {record['commit']}, the "
        f"{record['split']} split ({record['n_images']} images, {record['n_normal']} normal), "
        f"the {segmenter} of `{record['workspace']}` (lesion rule {record['rule']}, test-time flip "
        f"{record['tta_flip']}); {record['minutes']:.1f} min.",
        "",
        "| | " + " | ".join(SEG_FIGURES) + " | Dice drop |",
        "|---|" + "---:|" * (len(SEG_FIGURES) + 1),
        "| unshifted | " + " | ".join(_fmt(result["unshifted"][k]) for k in SEG_FIGURES) + " | |",
    ]
    for name, figures in result["shifts"].items():
        lines.append(
            f"| {name} | "
            + " | ".join(_fmt(figures[k]) for k in SEG_FIGURES)
            + f" | {_fmt(figures['lesion_dice_mean_drop'])} |"
        )
    found = result.get("detection")
    if found and found["lesion_detection_auc"] is not None:
        lines += [
            "",
            "Over every lesion threshold (each image's highest threshold with a lesion found): "
            f"lesion detection AUC {found['lesion_detection_auc']:.3f}; lesion images with no "
            "lesion found at the lowest threshold marking at most 25 / 50 % of the normal "
            f"images: {not_found_at(found['lesion_scores'], found['normal_scores'], 0.25):.3f}"
            f" / {not_found_at(found['lesion_scores'], found['normal_scores'], 0.5):.3f}.",
        ]
    history = record.get("history")
    if history:
        lines += ["", f"Training (`plots/train_unet.csv`, {history['epochs']} epochs):", ""]
        for figure in HISTORY_FIGURES:
            values = " ".join(f"{v:.2f}" for v in history[figure])
            lines.append(
                f"- {figure}: {values}; mean change from one epoch to the next "
                f"{history[f'{figure}_mean_jump']:.3f}"
            )
    lines += ["", "Behavioural checks (the U-Net's part):", ""]
    for name, check in result["checks"].items():
        lines.append(f"- {name}: {'passed' if check['passed'] else 'FAILED'} ({check['detail']})")
    if record.get("matches_stress_test") is not None:
        lines += [
            "",
            "Check: the figures equal the workspace's own stress_test_models figures "
            f"(metrics/stress_test.json): {'yes' if record['matches_stress_test'] else 'NO'}.",
        ]
    if record["verdict"]:
        lines += ["", "| criterion | value | limit | holds |", "|---|---|---|---|"]
        for row in record["verdict"]:
            lines.append(
                f"| {row['criterion']} | {_fmt(row['value'])} | {row['limit']} | "
                f"{'yes' if row['holds'] else 'NO'} |"
            )
        held = sum(row["holds"] for row in record["verdict"])
        lines += [
            "",
            f"Screen: {held} of {len(record['verdict'])} criteria hold: "
            + ("passes." if held == len(record["verdict"]) else "fails."),
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workspace",
        type=Path,
        required=True,
        help="a workspace with models/unet.keras, params.yaml and data/{busi,manifest.csv,"
        "splits.csv}",
    )
    parser.add_argument("--name", required=True, help="the candidate's name (results file)")
    parser.add_argument("--split", default="val", choices=("val", "train"))
    parser.add_argument("--require", nargs="*", default=[], metavar="CHECK")
    parser.add_argument("--limit", nargs="*", default=[], metavar="FIGURE<=X")
    parser.add_argument(
        "--stress-reference",
        type=Path,
        help="a bench_chain_seeds.py results JSON whose mean Dice drops bound each shift's",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        help="screen at this lesion threshold instead of the workspace's crop_rois.threshold",
    )
    parser.add_argument(
        "--segmenter",
        default="unet",
        choices=SEGMENTERS,
        help="the U-Net, or the mean of it and its fold U-Nets (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    limits = parse_limits(args.limit)
    ws = args.workspace
    for needed in ("models/unet.keras", "params.yaml", "data/manifest.csv", "data/splits.csv"):
        if not (ws / needed).exists():
            raise SystemExit(f"{ws}: no {needed}; run train_unet in that workspace first")
    drops = None
    if args.stress_reference:
        drops = reference_drops(json.loads(args.stress_reference.read_text()))
    sys.path.insert(0, str(REPO))
    from bench.bench_data import machine_info
    from bench.results_files import write_results
    from busi.model.metrics import to_jsonable

    try:
        loaded = load_workspace(ws, args.split, args.threshold, args.segmenter)
    except ValueError as bad:
        raise SystemExit(f"--threshold {args.threshold}: {bad}") from bad
    crop, stress_cfg, labels = loaded["crop"], loaded["stress"], loaded["labels"]
    started = time.monotonic()
    result = screen(**loaded["screen_args"])
    machine = machine_info()
    record = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": "{cpu_model} ({nproc} cores; {cpu_isa})".format(**machine),
        "commit": machine["project_commit"],
        "workspace": str(ws),
        "split": args.split,
        "n_images": len(labels),
        "n_normal": labels.count("normal"),
        "rule": f"threshold {crop.threshold}, min_area {crop.min_area}, keep {crop.keep}",
        "tta_flip": crop.tta_flip,
        "segmenter": args.segmenter,
        "minutes": (time.monotonic() - started) / 60,
        "result": result,
        "history": training_history(ws / "plots" / "train_unet.csv"),
        "matches_stress_test": None,
        "verdict": verdict(result, args.require, limits, drops, stress_cfg.max_dice_drop),
    }
    stress_file = ws / "metrics" / "stress_test.json"
    if stress_file.is_file():
        theirs = json.loads(stress_file.read_text())
        # the pipeline's own figures are the U-Net's at the workspace's threshold: compare
        # only there
        same = args.threshold is None and args.segmenter == "unet"
        if theirs.get("split") == args.split and same:
            record["matches_stress_test"] = matches_stress_test(result, theirs)
    record = to_jsonable(record)  # numpy scalars (a check's passed, a figure) to JSON's
    text = render(record)
    write_results(
        f"unet_screen_{args.name}",
        f"A U-Net screened before its chain, candidate {args.name}",
        record,
        text,
        "bench/bench_unet_screen.py",
    )
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
