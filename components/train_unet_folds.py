"""train_unet_folds: K U-Nets, each trained on the train split minus one fold, so that every
train image can be segmented by a U-Net that never saw it (``crop_rois.train_segmenter:
out_of_fold``).

Why: the classifier learns on crops of the train split. The U-Net that makes them has seen
those images, so it almost never misses a lesion there (under 1 % of train lesions against
2-16 % on val, bench/results/chain_seeds_val_cosnorm_ctx.md). The classifier then learns
that "no lesion found" means normal, and a lesion the U-Net misses on a new image is called
normal. Out-of-fold crops are as hard as the crops of new images.

Folds are whole near-duplicate groups (``dup_group`` of data/splits.csv), spread over the
folds class by class in a seeded order, and the augmented copies of an image (same id in the
TFRecord) go with it: nothing a fold U-Net trained on is a copy or near-duplicate of an
image it segments. Each fold U-Net is trained as ``train_unet`` trains the U-Net (its
settings, seed and early stopping on the val split); only the train records differ.

``folds: 0`` (off; the default is 2) trains nothing and writes only ``folds.json``, so the DVC stage
stays cheap when the option is off.

Core: ``assign_folds`` (split rows in, fold per id out) and ``fold_records`` (which TFRecord
records a fold U-Net trains on). Shell: ``main`` writes ``models/unet_folds/``
(``fold-<k>.keras``, ``history-<k>.csv``, ``folds.csv``, ``folds.json``) and the metrics.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from busi.config import load_section
from busi.errors import BusiError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FoldsConfig:
    # 0: off (no fold U-Nets). K >= 2: K U-Nets, each on the train split minus one fold.
    folds: int = 0

    def __post_init__(self) -> None:
        if self.folds == 1 or self.folds < 0 or self.folds > 10:
            raise ValueError(
                f"folds {self.folds}: 0 (off) or 2-10 (the number of fold U-Nets); one fold "
                "would leave no image out"
            )


def assign_folds(rows, folds: int, seed: int) -> dict[str, int]:
    """{id: fold} for the train rows of ``rows`` (data/splits.csv columns id, class,
    dup_group, split). Whole ``dup_group``s go to one fold; the groups of each class (the
    class of their first row) are shuffled with ``seed`` and dealt round-robin, continuing
    where the previous class stopped, so folds get about the same size and class mix."""
    import numpy as np

    train = rows[rows["split"] == "train"]
    if train.empty:
        raise BusiError("the split has no train rows: run `busi split-data` first")
    groups = train.groupby("dup_group", sort=True)["class"].first()
    if len(groups) < folds:
        raise BusiError(
            f"{len(groups)} near-duplicate groups in the train split cannot fill {folds} "
            "folds: lower train_unet_folds.folds"
        )
    rng = np.random.default_rng(seed)
    fold_of_group: dict[str, int] = {}
    turn = 0
    for cls in sorted(groups.unique()):
        names = sorted(groups[groups == cls].index)
        for index in rng.permutation(len(names)):
            fold_of_group[names[index]] = turn % folds
            turn += 1
    return {str(i): fold_of_group[g] for i, g in zip(train["id"], train["dup_group"], strict=True)}


def fold_records(records, fold_of: dict[str, int], fold: int) -> list[bytes]:
    """The serialized TFRecord examples (``records``) a fold U-Net trains on: those whose id
    is in another fold. An id with no fold is an error (the TFRecords and the split differ)."""
    import tensorflow as tf

    kept = []
    for raw in records:
        image_id = (
            tf.train.Example.FromString(raw).features.feature["id"].bytes_list.value[0].decode()
        )
        if image_id not in fold_of:
            raise BusiError(
                f"train record {image_id!r} is not in the split's train rows: the prepared "
                "data is older than data/splits.csv; run `busi augment-data` again"
            )
        if fold_of[image_id] != fold:
            kept.append(raw)
    return kept


def main(argv: list[str] | None = None) -> int:
    from busi.cli import parser_for

    parser = parser_for("train-unet-folds", "--data", "--splits", "--params")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("models/unet_folds"),
        help="the folder for the fold U-Nets, their histories and folds.csv (default: %(default)s)",
    )
    parser.add_argument(
        "--backup-dir",
        type=Path,
        default=Path("models/unet_folds.backup"),
        help="the per-fold backups a killed run resumes the running fold from (default: "
        "%(default)s)",
    )
    parser.add_argument(
        "--metrics",
        type=Path,
        default=Path("metrics/train_unet_folds.json"),
        help="where to write the step's figures (JSON) (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    from busi.model.unet_training import UnetConfig, chain_config, encoder_weights_record

    cfg = load_section(args.params, "train_unet_folds", FoldsConfig)
    unet_cfg = load_section(args.params, "train_unet", UnetConfig)
    roi = chain_config(args.params)
    if cfg.folds:  # checked before the old output is removed
        for split in ("train", "val"):
            if not (args.data / f"{split}.tfrecord").is_file():
                raise BusiError(f"{args.data}/{split}.tfrecord not found: run `busi augment-data`")
        if not args.splits.is_file():
            raise BusiError(f"{args.splits} not found: run `busi split-data` first")
    if args.out.exists():
        shutil.rmtree(args.out)  # a DVC output: rebuilt whole
    args.out.mkdir(parents=True)
    args.metrics.parent.mkdir(parents=True, exist_ok=True)
    from busi import tracking

    params = asdict(cfg) | {f"unet_{k}": v for k, v in asdict(unet_cfg).items()}
    params |= {f"unet_{k}": v for k, v in encoder_weights_record(unet_cfg).items()}
    # a step run even when off: every stage of a pipeline run has one (lineage)
    with tracking.step_run("train_unet_folds", params):
        summary: dict = {"folds": cfg.folds}
        if cfg.folds:
            summary = _train_folds(args, cfg, unet_cfg, roi, params)
        (args.out / "folds.json").write_text(json.dumps(summary, indent=2) + "\n")
        args.metrics.write_text(json.dumps(summary, indent=2) + "\n")
        figures = {
            f"fold{r['fold']}_{k}": v
            for r in summary.get("per_fold", [])
            for k, v in r.items()
            if k.startswith("val_")
        }
        tracking.log_step_outputs(
            {"folds": cfg.folds, **figures}, artifacts=[args.out / "folds.json"]
        )
    if not cfg.folds:
        print("train_unet_folds.folds is 0: no fold U-Nets (crop_rois uses the U-Net)")
    return 0


def _train_folds(args, cfg: FoldsConfig, unet_cfg, roi, params: dict) -> dict:
    import pandas as pd
    import tensorflow as tf

    from busi.data.tfrecords import read_tfrecord
    from busi.model.unet_training import (
        chain_scores,
        fit_unet,
        segmentation_dataset,
        split_arrays,
        training_fingerprint,
        val_probabilities,
    )

    image_size = json.loads((args.data / "meta.json").read_text())["config"]["image_size"]
    rows = pd.read_csv(args.splits)
    fold_of = assign_folds(rows, cfg.folds, unet_cfg.seed)
    pd.DataFrame({"id": list(fold_of), "fold": list(fold_of.values())}).to_csv(
        args.out / "folds.csv", index=False
    )
    records = [r.numpy() for r in tf.data.TFRecordDataset(str(args.data / "train.tfrecord"))]
    val_ds = segmentation_dataset(args.data / "val.tfrecord", image_size, unet_cfg, False)
    val_arrays = split_arrays(read_tfrecord(args.data / "val.tfrecord", image_size))
    summary: dict = {"folds": cfg.folds, "image_size": image_size, "per_fold": []}
    with tempfile.TemporaryDirectory() as tmp:
        for fold in range(cfg.folds):
            kept = fold_records(records, fold_of, fold)
            path = Path(tmp) / f"train-{fold}.tfrecord"
            with tf.io.TFRecordWriter(str(path)) as writer:
                for raw in kept:
                    writer.write(raw)
            history = args.out / f"history-{fold}.csv"
            model = fit_unet(
                segmentation_dataset(path, image_size, unet_cfg, True),
                val_ds,
                image_size,
                unet_cfg,
                args.backup_dir / f"fold-{fold}",
                history,
                val_arrays,
                roi,
                fingerprint=training_fingerprint(params | {"fold": fold}, path),
            )
            model.save(args.out / f"fold-{fold}.keras")
            probs = val_probabilities(
                model, val_arrays[0], unet_cfg.batch_size, unet_cfg.monitor_flip
            )
            scores = chain_scores(
                probs, val_arrays[1], val_arrays[2], roi, unet_cfg.false_lesion_weight
            )
            left_out = sum(1 for f in fold_of.values() if f == fold)
            row = {
                "fold": fold,
                "left_out_images": left_out,
                "train_records": len(kept),
                "epochs_run": len(history.read_text().splitlines()) - 1,
                **scores,
            }
            summary["per_fold"].append(row)
            print(
                f"fold U-Net {fold}: {len(kept)} train records ({left_out} images left out), "
                f"val lesion Dice {scores['val_lesion_dice']:.3f}"
            )
    return summary
