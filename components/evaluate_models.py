"""evaluate_models: run the whole chain (image -> predicted mask -> crop -> class) on the
frozen test split and score it: lesion Dice/IoU per image from TP/FP/FN, false lesions on
normal images, 3-class accuracy, macro-F1, per-class precision/recall, the confusion
matrix, malignant-vs-rest ROC AUC and calibration error. Pixel accuracy is reported only
as a secondary figure: the background dominates it.

Each headline figure comes with a bootstrap interval (resampling near-duplicate groups,
see busi/model/uncertainty.py), and the figures are broken down per lesion size (share
of the image: < 1 %, 1-5 %, >= 5 %) and per class. The per-image predictions are kept
(``per_image.csv``) so that promote_model can compare two models image by image.

The behavioural checks (busi/model/behaviour.py: a blank image and the split's normal
images get no lesion, a flipped image the same answer, a dark lesion drawn on normal tissue
is found) go into ``evaluation.json: behaviour``; the promotion guard reads them.

Core: ``evaluate_chain`` (images, masks, labels and the two models in; metrics out),
``per_image_table`` and ``uncertainty_report`` (per-image table in; intervals out).
Shell: ``main`` writes ``metrics/evaluation.json``, ``per_image.csv`` and the plots.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from busi.config import from_dict, load_section
from busi.data.preprocess import CLASSES
from busi.model.behaviour import BehaviourConfig, run_checks
from busi.model.chain import RoiConfig, predict_chain
from busi.model.loading import load_chain_and_split
from busi.model.metrics import classification_metrics, segmentation_metrics, to_jsonable
from busi.model.uncertainty import (
    PER_IMAGE_COLUMNS,
    BootstrapConfig,
    figures_with_intervals,
    per_class,
    per_lesion_size,
    reliability_bins,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateConfig:
    split: str = "test"
    calibration_bins: int = 10
    overlay_examples: int = 12
    bootstrap_samples: int = 2000  # group resamples behind each interval
    interval_level: float = 0.95
    bootstrap_seed: int = 0
    behaviour: dict = field(default_factory=dict)  # BehaviourConfig's keys

    def __post_init__(self) -> None:
        self.behaviour_config()  # a bad key or value fails when params are read

    def bootstrap(self) -> BootstrapConfig:
        return BootstrapConfig(self.bootstrap_samples, self.interval_level, self.bootstrap_seed)

    def behaviour_config(self) -> BehaviourConfig:
        return from_dict(BehaviourConfig, self.behaviour, "evaluate_models.behaviour")


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


def per_image_table(ids, groups, labels, proba, seg_per_image) -> pd.DataFrame:
    """One row per image (``uncertainty.PER_IMAGE_COLUMNS``): its group, true and predicted
    class, the class probabilities and the segmentation counts."""
    proba = np.asarray(proba, dtype=float)
    rows = []
    for i, g, y, p, s in zip(ids, groups, labels, proba, seg_per_image, strict=True):
        rows.append(
            {
                "id": i,
                "dup_group": g,
                "class": CLASSES[y],
                "predicted": CLASSES[int(np.argmax(p))],
                **{f"prob_{c}": float(p[j]) for j, c in enumerate(CLASSES)},
                **{k: s[k] for k in PER_IMAGE_COLUMNS if k in s},
            }
        )
    return pd.DataFrame(rows, columns=list(PER_IMAGE_COLUMNS))


def uncertainty_report(table: pd.DataFrame, cfg: EvaluateConfig) -> dict:
    """Intervals of the headline figures, figures per lesion size and per class, and the
    reliability diagram's bins, from the per-image table."""
    boot = cfg.bootstrap()
    return {
        "intervals": {
            "method": "percentile bootstrap over near-duplicate groups (dup_group)",
            "level": boot.level,
            "samples": boot.samples,
            "n_groups": int(table["dup_group"].nunique()),
            "figures": figures_with_intervals(table, boot, n_bins=cfg.calibration_bins),
        },
        "per_lesion_size": per_lesion_size(table, boot),
        "per_class": per_class(table, boot),
        "calibration": {"bins": reliability_bins(table, cfg.calibration_bins)},
    }


def interval_metrics(report: dict) -> dict[str, float]:
    """Flat MLflow metrics: ``<figure>_ci_low``/``_ci_high``, and per size and class."""
    out = {}
    for name, entry in report["intervals"]["figures"].items():
        for end in ("low", "high"):
            if entry[end] is not None:
                out[f"{name}_ci_{end}"] = entry[end]
    for bucket, entry in report["per_lesion_size"].items():
        out[f"size.{bucket}.n_missed"] = entry["n_missed"]
        for figure in ("lesion_dice", "accuracy"):
            if entry.get(figure, {}).get("value") is not None:
                out[f"size.{bucket}.{figure}"] = entry[figure]["value"]
    for cls, entry in report["per_class"].items():
        for figure in ("precision", "recall", "f1"):
            if entry[figure]["value"] is not None:
                out[f"class.{cls}.{figure}"] = entry[figure]["value"]
    return out


def plot_reliability(bins: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    used = [b for b in bins if b["n_images"]]
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], "k--", linewidth=0.8, label="perfect calibration")
    ax.bar(
        [(b["low"] + b["high"]) / 2 for b in used],
        [b["accuracy"] for b in used],
        width=[b["high"] - b["low"] for b in used],
        edgecolor="black",
        alpha=0.6,
        label="accuracy in bin",
    )
    ax.plot([b["confidence"] for b in used], [b["accuracy"] for b in used], "o-", color="red")
    ax.set_xlabel("top-1 confidence")
    ax.set_ylabel("share correct")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
    from busi.cli import parser_for

    parser = parser_for(
        "evaluate-models",
        "--data-dir",
        "--manifest",
        "--splits",
        "--unet",
        "--classifier",
        "--rois",
        "--params",
    )
    parser.add_argument(
        "--metrics",
        type=Path,
        default=Path("metrics/evaluation.json"),
        help="where to write the step's figures (JSON) (default: %(default)s)",
    )
    parser.add_argument(
        "--plots",
        type=Path,
        default=Path("plots/evaluation"),
        help="the folder for the plots (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    cfg = load_section(args.params, "evaluate_models", EvaluateConfig)

    from busi import tracking

    unet, classifier, crop, part, images, true_masks = load_chain_and_split(args, cfg.split)
    labels = [CLASSES.index(c) for c in part["class"]]
    ids = part["id"].to_list()
    groups = part["dup_group"].astype(str).to_list()

    with tracking.step_run("evaluate_models", asdict(cfg) | {"chain": asdict(crop)}):
        result = evaluate_chain(
            images, true_masks, labels, unet, classifier, crop.roi, crop.tta_flip, cfg
        )
        seg, cls = result["segmentation"], result["classification"]
        table = per_image_table(ids, groups, labels, result["proba"], seg["per_image"])
        report = {
            "split": cfg.split,
            "n_images": len(images),
            "headline": headline(result),
            "segmentation": {k: v for k, v in seg.items() if k != "per_image"},
            "classification": {k: v for k, v in cls.items() if k != "roc_curve"},
            "chain": asdict(crop),
            "lesion_definition": f"a connected predicted component covering >= {crop.min_area:.3%} "
            "of the image (smaller ones are dropped)",
            **uncertainty_report(table, cfg),
            "behaviour": run_checks(
                unet,
                classifier,
                [img for img, y in zip(images, labels, strict=True) if CLASSES[y] == "normal"],
                images,
                crop.roi,
                crop.tta_flip,
                cfg.behaviour_config(),
            ),
        }
        args.metrics.parent.mkdir(parents=True, exist_ok=True)
        args.metrics.write_text(json.dumps(to_jsonable(report), indent=2, allow_nan=False) + "\n")
        args.plots.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.plots / "per_image.csv", index=False)
        plot_reliability(report["calibration"]["bins"], args.plots / "reliability.png")
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
        tracking.log_metrics(
            to_jsonable(report["headline"])
            | interval_metrics(report)
            | {"behaviour_passed": float(report["behaviour"]["passed"])}
        )
        tracking.log_step_outputs({}, artifacts=[args.metrics, *sorted(args.plots.iterdir())])
    ci = report["intervals"]["figures"]
    print(
        f"test split, {len(images)} images ({report['intervals']['n_groups']} groups), "
        f"{report['intervals']['level']:.0%} intervals: lesion Dice {_ci(ci['lesion_dice'])}, "
        f"IoU {_ci(ci['lesion_iou'])}, false lesion on normal "
        f"{_ci(ci['normal_false_lesion_rate'])}; accuracy {_ci(ci['accuracy'])}, "
        f"macro-F1 {_ci(ci['macro_f1'])}, malignant AUC {_ci(ci['malignant_auc'])}"
    )
    checks = report["behaviour"]["checks"].values()
    print(
        "behavioural checks: "
        + "; ".join(
            f"{c['name']} {'passed' if c['passed'] else 'FAILED'} ({c['detail']})" for c in checks
        )
    )
    return 0


def _ci(entry: dict) -> str:
    return f"{_fmt(entry['value'])} [{_fmt(entry['low'])}, {_fmt(entry['high'])}]"


def _fmt(value) -> str:
    return (
        "n/a" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.3f}"
    )
