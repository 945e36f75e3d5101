"""Loading the trained chain and a split's images for scoring (evaluate_models and
stress_test_models)."""

from __future__ import annotations

import json
from pathlib import Path

from busi.errors import BusiError


def load_chain_and_split(args, split: str):
    """What scoring the chain on a split needs, from a step's path options (``--unet``,
    ``--classifier``, ``--rois``, ``--manifest``, ``--splits``, ``--data-dir``): the two
    models, the crop settings they were trained with, the split's rows, its images and true
    masks. Shared by evaluate_models and stress_test_models."""
    for path, step in ((args.unet, "train-unet"), (args.classifier, "train-classifier")):
        if not path.is_file():
            raise BusiError(f"{path} not found: run `busi {step}` first")
    import keras

    from busi.data.preprocess import load_pair
    from busi.data.splits import load_split_rows
    from busi.model.unet import load_unet

    unet = load_unet(args.unet)
    classifier = keras.models.load_model(args.classifier)
    crop = chain_settings(args.rois / "summary.json")
    rows = load_split_rows(args.manifest, args.splits)
    part = rows[rows["split"] == split]
    if part.empty:
        raise BusiError(f"the split has no '{split}' images")
    pairs = [load_pair(args.data_dir, r["path"], r["mask_files"]) for _, r in part.iterrows()]
    return unet, classifier, crop, part, [p[0] for p in pairs], [p[1] for p in pairs]


def chain_settings(summary_path: Path):
    """The crop_rois settings recorded beside the crops: evaluation runs the same chain."""
    from busi.config import from_dict
    from busi.model.chain import CropConfig

    if not summary_path.is_file():
        raise BusiError(f"{summary_path} not found: run `busi crop-rois` first")
    return from_dict(CropConfig, json.loads(summary_path.read_text())["config"], str(summary_path))
