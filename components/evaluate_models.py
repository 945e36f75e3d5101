"""evaluate_models: run the whole chain (image -> predicted mask -> crop -> class) on the
frozen test split and score it: lesion Dice/IoU per image from TP/FP/FN, false lesions on
normal images, 3-class accuracy, macro-F1, per-class precision/recall, the confusion
matrix, malignant-vs-rest ROC AUC and calibration error. Pixel accuracy is reported only
as a secondary figure: the background dominates it.

Core: ``evaluate_chain`` (images, masks, labels and the two models in; metrics out).
Shell: ``main`` writes ``metrics/evaluation.json`` and the plots.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from components.chain import RoiConfig, predict_chain
from components.config import load_section
from components.errors import BusiError
from components.metrics import classification_metrics, segmentation_metrics, to_jsonable
from components.preprocess import CLASSES

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateConfig:
    split: str = "test"
    calibration_bins: int = 10
    overlay_examples: int = 12


def evaluate_chain(
    images,
    true_masks,
    labels,
    unet,
    classifier,
    roi: RoiConfig,
    tta_flip: bool,
    cfg: EvaluateConfig,
) -> dict:
    """Scores of the chain on one split, plus the per-image predictions. ``roi`` and
    ``tta_flip`` are the crop_rois settings the classifier was trained with."""
    chain = predict_chain(images, unet, classifier, roi, tta_flip)
    pred_masks, proba = chain.masks, chain.proba
    names = [CLASSES[i] for i in labels]
    # The masks are already cleaned of components below min_area, so any foreground left
    # is a lesion.
    seg = segmentation_metrics(true_masks, pred_masks, names, lesion_min_area=0.0)
    cls = classification_metrics(
        np.asarray(labels), proba, list(CLASSES), positive="malignant", n_bins=cfg.calibration_bins
    )
    return {
        "segmentation": seg,
        "classification": cls,
        "pred_masks": pred_masks,
        "proba": proba,
        "boxes": chain.boxes,
    }


def headline(result: dict) -> dict:
    seg, cls = result["segmentation"], result["classification"]
    auc = next((v for k, v in cls.items() if k.startswith("roc_auc_")), None)
    return {
        "lesion_dice": seg["dice_mean"],
        "lesion_iou": seg["iou_mean"],
        "normal_false_lesion_rate": seg["normal_false_lesion_rate"],
        "accuracy": cls["accuracy"],
        "macro_f1": cls["macro_f1"],
        "malignant_auc": auc,
        "ece": cls["ece"],
        "pixel_accuracy": seg["pixel_accuracy"],
    }


def plot_confusion(matrix, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(CLASSES)), CLASSES)
    ax.set_yticks(range(len(CLASSES)), CLASSES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(
            j,
            i,
            str(v),
            ha="center",
            va="center",
            color="white" if v > matrix.max() / 2 else "black",
        )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_roc(fpr, tpr, auc, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot(fpr, tpr, label=f"malignant vs rest, AUC {auc:.3f}" if auc is not None else "")
    ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_overlays(images, true_masks, pred_masks, labels, proba, ids, n: int, path: Path):
    """A grid: image, true mask outline (green), predicted (red), with true/predicted class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picks = np.linspace(0, len(images) - 1, num=min(n, len(images))).astype(int)
    cols = 4
    rows = int(np.ceil(len(picks) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, picks, strict=False):
        ax.imshow(images[i], cmap="gray")
        if true_masks[i].any():
            ax.contour(true_masks[i], levels=[0.5], colors="lime", linewidths=1)
        if pred_masks[i].any():
            ax.contour(pred_masks[i], levels=[0.5], colors="red", linewidths=1)
        pred = CLASSES[int(np.argmax(proba[i]))]
        ax.set_title(f"{ids[i].split('/')[-1]}\ntrue {CLASSES[labels[i]]}, pred {pred}", fontsize=8)
    fig.suptitle("green: true mask, red: predicted mask", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="busi evaluate-models", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--data-dir", type=Path, default=Path("data/busi"))
    parser.add_argument("--manifest", type=Path, default=Path("data/manifest.csv"))
    parser.add_argument("--splits", type=Path, default=Path("data/splits.csv"))
    parser.add_argument("--unet", type=Path, default=Path("models/unet.keras"))
    parser.add_argument("--classifier", type=Path, default=Path("models/classifier.keras"))
    parser.add_argument(
        "--rois",
        type=Path,
        default=Path("data/rois"),
        help="crop_rois output: its summary.json holds the chain settings",
    )
    parser.add_argument("--metrics", type=Path, default=Path("metrics/evaluation.json"))
    parser.add_argument("--plots", type=Path, default=Path("plots/evaluation"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    cfg = load_section(args.params, "evaluate_models", EvaluateConfig)

    for path, step in ((args.unet, "train-unet"), (args.classifier, "train-classifier")):
        if not path.is_file():
            raise BusiError(f"{path} not found: run `busi {step}` first")
    import keras

    from components import tracking
    from components.augment_data import load_split_rows
    from components.preprocess import load_pair
    from components.train_unet import CUSTOM_OBJECTS

    unet = keras.models.load_model(args.unet, custom_objects=CUSTOM_OBJECTS)
    classifier = keras.models.load_model(args.classifier)
    crop = chain_settings(args.rois / "summary.json")
    rows = load_split_rows(args.manifest, args.splits)
    part = rows[rows["split"] == cfg.split]
    if part.empty:
        raise BusiError(f"the split has no '{cfg.split}' images")
    pairs = [load_pair(args.data_dir, r["path"], r["mask_files"]) for _, r in part.iterrows()]
    images = [p[0] for p in pairs]
    true_masks = [p[1] for p in pairs]
    labels = [CLASSES.index(c) for c in part["class"]]
    ids = part["id"].to_list()

    with tracking.step_run("evaluate_models", asdict(cfg) | {"chain": asdict(crop)}):
        result = evaluate_chain(
            images, true_masks, labels, unet, classifier, crop.roi, crop.tta_flip, cfg
        )
        seg, cls = result["segmentation"], result["classification"]
        per_image = [
            {
                "id": i,
                "class": CLASSES[y],
                "predicted": CLASSES[int(np.argmax(p))],
                **{k: v for k, v in s.items()},
            }
            for i, y, p, s in zip(ids, labels, result["proba"], seg["per_image"], strict=True)
        ]
        report = {
            "split": cfg.split,
            "n_images": len(images),
            "headline": headline(result),
            "segmentation": {k: v for k, v in seg.items() if k != "per_image"},
            "classification": {k: v for k, v in cls.items() if k != "roc_curve"},
            "chain": asdict(crop),
            "lesion_definition": f"a connected predicted component covering >= {crop.min_area:.3%} "
            "of the image (smaller ones are dropped)",
        }
        args.metrics.parent.mkdir(parents=True, exist_ok=True)
        args.metrics.write_text(json.dumps(to_jsonable(report), indent=2, allow_nan=False) + "\n")
        args.plots.mkdir(parents=True, exist_ok=True)
        (args.plots / "per_image.json").write_text(
            json.dumps(to_jsonable(per_image), indent=1, allow_nan=False) + "\n"
        )
        plot_confusion(cls["confusion_matrix"], args.plots / "confusion_matrix.png")
        roc = cls.get("roc_curve") or {}
        auc = report["headline"]["malignant_auc"]
        plot_roc(roc.get("fpr", []), roc.get("tpr", []), auc, args.plots / "roc_malignant.png")
        (args.plots / "roc_malignant.json").write_text(
            json.dumps(
                to_jsonable(
                    [
                        {"fpr": f, "tpr": t}
                        for f, t in zip(roc.get("fpr", []), roc.get("tpr", []), strict=True)
                    ]
                ),
                indent=0,
            )
            + "\n"
        )
        plot_overlays(
            images,
            true_masks,
            result["pred_masks"],
            labels,
            result["proba"],
            ids,
            cfg.overlay_examples,
            args.plots / "overlays.png",
        )
        tracking.log_metrics(to_jsonable(report["headline"]))
        tracking.log_step_outputs({}, artifacts=[args.metrics, *sorted(args.plots.iterdir())])
    head = report["headline"]
    print(
        f"test split, {len(images)} images: lesion Dice {_fmt(head['lesion_dice'])}, "
        f"IoU {_fmt(head['lesion_iou'])}, false lesion on normal "
        f"{_fmt(head['normal_false_lesion_rate'])}; accuracy {_fmt(head['accuracy'])}, "
        f"macro-F1 {_fmt(head['macro_f1'])}, malignant AUC {_fmt(head['malignant_auc'])}"
    )
    return 0


def chain_settings(summary_path: Path):
    """The crop_rois settings recorded beside the crops: evaluation runs the same chain."""
    from components.config import from_dict
    from components.crop_rois import CropConfig

    if not summary_path.is_file():
        raise BusiError(f"{summary_path} not found: run `busi crop-rois` first")
    return from_dict(CropConfig, json.loads(summary_path.read_text())["config"], str(summary_path))


def _fmt(value) -> str:
    return (
        "n/a" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.3f}"
    )
