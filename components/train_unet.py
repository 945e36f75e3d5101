"""train_unet: train the U-Net lesion segmenter on the prepared TFRecords.

How the U-Net is built and trained (loss, the lesion Dice, early stopping on the chain's own
validation figures, resumable backups) is ``busi.model.unet_training``, which
``train_unet_folds`` shares. Shell: ``main`` reads params and data and writes the model, the
per-epoch history, the step's figures and the MLflow records.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from busi.config import load_section
from busi.errors import BusiError
from busi.model.unet_training import (
    CHAIN_KEYS,
    UnetConfig,
    chain_config,
    chain_scores,
    encoder_weights_record,
    fit_unet,
    segmentation_dataset,
    split_arrays,
    training_fingerprint,
    val_probabilities,
)


def main(argv: list[str] | None = None) -> int:
    from busi.cli import parser_for

    parser = parser_for("train-unet", "--data", "--params")
    parser.add_argument(
        "--model",
        type=Path,
        default=Path("models/unet.keras"),
        help="where to save the trained U-Net (default: %(default)s)",
    )
    parser.add_argument(
        "--backup-dir",
        type=Path,
        default=Path("models/unet.backup"),
        help="the backup a killed run resumes from (default: %(default)s)",
    )
    parser.add_argument(
        "--history",
        type=Path,
        default=Path("plots/train_unet.csv"),
        help="where to write the per-epoch history (CSV) (default: %(default)s)",
    )
    parser.add_argument(
        "--metrics",
        type=Path,
        default=Path("metrics/train_unet.json"),
        help="where to write the step's figures (JSON) (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    cfg = load_section(args.params, "train_unet", UnetConfig)
    roi = chain_config(args.params)
    for split in ("train", "val"):
        if not (args.data / f"{split}.tfrecord").is_file():
            raise BusiError(f"{args.data}/{split}.tfrecord not found: run `busi augment-data`")
    image_size = json.loads((args.data / "meta.json").read_text())["config"]["image_size"]
    if image_size % 2**cfg.arch.depth:
        raise BusiError(
            f"augment_data.image_size={image_size} must be divisible by "
            f"{2**cfg.arch.depth} for the {cfg.architecture} U-Net"
        )
    from busi import tracking

    for path in (args.model, args.history, args.metrics):
        path.parent.mkdir(parents=True, exist_ok=True)
    chain = {f"chain_{k}": v for k, v in asdict(roi).items() if k in CHAIN_KEYS}
    params = (
        asdict(cfg)
        | asdict(cfg.arch)
        | {"image_size": image_size}
        | chain
        | encoder_weights_record(cfg)
    )
    with tracking.step_run("train_unet", params) as run:
        from busi.data.tfrecords import read_tfrecord

        train_ds = segmentation_dataset(args.data / "train.tfrecord", image_size, cfg, True)
        val_ds = segmentation_dataset(args.data / "val.tfrecord", image_size, cfg, False)
        val_arrays = split_arrays(read_tfrecord(args.data / "val.tfrecord", image_size))
        model = fit_unet(
            train_ds,
            val_ds,
            image_size,
            cfg,
            args.backup_dir,
            args.history,
            val_arrays,
            roi,
            extra_callbacks=[tracking.epoch_logger()] if run else [],
            fingerprint=training_fingerprint(params, args.data / "train.tfrecord"),
        )
        model.save(args.model)
        probs = val_probabilities(model, val_arrays[0], cfg.batch_size, cfg.monitor_flip)
        scores = chain_scores(probs, val_arrays[1], val_arrays[2], roi, cfg.false_lesion_weight)
        summary = {
            **scores,
            "monitor": cfg.monitor,
            "params": int(model.count_params()),
            "epochs_run": len(args.history.read_text().splitlines()) - 1,
        }
        args.metrics.write_text(json.dumps(summary, indent=2) + "\n")
        tracking.log_step_outputs(
            summary,
            artifacts=[args.history],
            model=model,
            model_name="unet",
            example=next(iter(val_ds))[0][:1].numpy(),
        )
    print(
        f"U-Net {cfg.architecture}: val lesion Dice {summary['val_lesion_dice']:.3f}, "
        f"false lesion on {summary['val_false_lesion_rate']:.0%} of normal images, "
        f"{summary['params']:,} parameters, saved to {args.model}"
    )
    return 0
