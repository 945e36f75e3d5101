"""crop_rois: segment every split image with the trained U-Net and cut out the region of
interest (the kept lesion component with a margin; the whole image when no lesion is
found) as the classifier's input.

Which masks train the classifier (``train_masks``): ``predicted`` by default, for every
split. At inference the crop always comes from a predicted mask, so the classifier must
learn on crops made the same way. Crops from ground-truth masks would teach a shortcut:
lesion images get tight crops while normal images (empty masks) stay whole, and
"uncropped means normal" collapses once masks are predicted. ``both`` adds the
ground-truth crops of the train split as extra examples; val and test always use
predicted masks.

The classifier's second channel (``mask_channel``) is the cleaned ``binary`` mask, or the
U-Net's lesion ``probability`` over the same box (params.yaml's choice: it keeps the
U-Net's confidence and the lesion's soft edge, and beat the binary mask on the val split
with every U-Net of bench/results/sweep.md). The dataclass default stays ``binary``, which
is what crop settings recorded before the option existed mean. With ``context: image`` the
classifier also sees the whole image and the U-Net's whole probability map (two more
channels), so that a lesion the crop missed is still in front of it.

With ``train_segmenter: out_of_fold`` the train split is segmented by the fold U-Nets of
``train_unet_folds``, each image by the one that did not see it, so its crops are as hard as
those of new images (the U-Net misses under 1 % of the lesions it trained on); val and test
are segmented by the U-Net, as serving does.

With ``missed_lesions`` (a share, 0 by default) that share of the train lesion images gets
one more example made as the chain makes it when the U-Net finds nothing. Behind t04's
U-Nets (bench/results, threshold 0.4) the fold U-Nets miss 2-5 % of the train lesion images,
the U-Net 8-19 % of the val ones; behind the defaults' (threshold 0.5) the train misses are
near-misses (a peak probability of about 0.45), the val ones blank (about 0.1). So the
classifier meets few lesion images without a lesion found, none that blank, and reads
"nothing found" as normal. The copy (``missed_copy``) fades the U-Net's map to a peak drawn under
half the threshold, finds no lesion, takes the peak crop (``empty_crop``) and keeps the
image's class; which images get one, and how faint, follows from each id alone.

Core: ``rois_for_split`` (images, masks and a segmenter in; crops out) and
``out_of_fold_predict`` (a segmenter per fold in; one that segments each image by its
fold's). Shell: ``main`` writes ``data/rois/{train,val,test}.npz`` (crops, second channel,
boxes, labels, ids, shape features, and the context channels when they are on).
"""

from __future__ import annotations

import json
import logging
import zlib
from dataclasses import asdict
from pathlib import Path

import numpy as np

from busi.config import load_section
from busi.data.preprocess import CLASSES
from busi.errors import BusiError
from busi.model.chain import CropConfig, clean_mask, context_maps, rois_from_masks, segment

logger = logging.getLogger(__name__)


def choose_threshold(probs, true_masks, labels, cfg: CropConfig) -> tuple[float, list[dict]]:
    """The lesion threshold by ``cfg.threshold_choice: val`` (see CropConfig) from the val
    split's probability maps, true masks and class names; returns it and the figures of
    every candidate (lesions missed, false-lesion rate on normal images, lesion Dice)."""
    import math
    from dataclasses import replace

    from busi.model.metrics import segmentation_metrics

    rows = []
    for threshold in sorted(cfg.threshold_grid):
        roi = replace(cfg.roi, threshold=threshold)
        cleaned = [clean_mask(p, roi) for p in probs]
        seg = segmentation_metrics(list(true_masks), cleaned, list(labels), lesion_min_area=0.0)
        lesion = [i for i, m in enumerate(true_masks) if np.asarray(m).any()]
        missed = sum(not cleaned[i].any() for i in lesion) / len(lesion) if lesion else 0.0
        false_rate = seg["normal_false_lesion_rate"]
        rows.append(
            {
                "threshold": threshold,
                "lesions_missed": missed,
                "normal_false_lesion_rate": 0.0 if math.isnan(false_rate) else false_rate,
                "lesion_dice": seg["dice_mean"],
            }
        )

    def dice(row: dict) -> float:
        return -1.0 if math.isnan(row["lesion_dice"]) else row["lesion_dice"]

    allowed = [r for r in rows if r["normal_false_lesion_rate"] <= cfg.max_val_false_lesion_rate]
    if allowed:
        best = min(allowed, key=lambda r: (r["lesions_missed"], -dice(r), -r["threshold"]))
    else:  # none keeps false lesions low enough: the one that comes closest
        best = min(rows, key=lambda r: (r["normal_false_lesion_rate"], r["lesions_missed"]))
    return best["threshold"], rows


def out_of_fold_predict(ids, fold_of: dict[str, int], predictors: list):
    """A segmenter ``predict(images) -> probability maps`` for the images of ``ids`` (in that
    order) that segments each with ``predictors[fold_of[id]]``."""
    missing = [i for i in ids if str(i) not in fold_of]
    if missing:
        raise BusiError(
            f"{len(missing)} train images have no fold (e.g. {missing[0]!r}): the fold U-Nets "
            "are older than data/splits.csv; run `busi train-unet-folds` again"
        )
    folds = [fold_of[str(i)] for i in ids]

    def predict(images):
        if len(images) != len(folds):
            raise ValueError(f"{len(images)} images for {len(folds)} ids")
        probs: list = [None] * len(images)
        for fold, fold_predict in enumerate(predictors):
            index = [n for n, f in enumerate(folds) if f == fold]
            for n, prob in zip(index, fold_predict([images[n] for n in index]), strict=True):
                probs[n] = prob
        return probs

    return predict


def missed_copy(image_id: str, share: float, threshold: float) -> float | None:
    """The peak probability of ``image_id``'s missed-lesion copy (``missed_lesions``), drawn
    uniformly under ``threshold`` / 2, or None when the image gets none (it does with
    probability ``share``). Both draws follow from the id alone, so the same images get a
    copy, equally faint, whatever the order, the split's size or the run's seeds."""
    rng = np.random.default_rng(zlib.crc32(str(image_id).encode()))
    chosen, level = rng.random(2)
    return float(level * threshold / 2) if chosen < share else None


def rois_for_split(images, true_masks, labels, ids, predict, cfg: CropConfig, split: str) -> dict:
    """Crops for one split. ``predict(images) -> probability maps`` is the segmenter."""
    probs = predict(images)
    pred_masks = [clean_mask(p, cfg.roi) for p in probs]
    every = list(range(len(images)))
    sources = []  # (mask source, the images' indices, their masks, their probability maps)
    if split != "train" or cfg.train_masks in ("predicted", "both"):
        sources.append(("predicted", every, pred_masks, probs))
    if split == "train" and cfg.train_masks in ("ground_truth", "both"):
        sources.append(("ground_truth", every, [np.asarray(m, bool) for m in true_masks], probs))
    if split == "train" and cfg.missed_lesions > 0:
        normal = CLASSES.index("normal")
        faded = {}
        for i in every:
            level = missed_copy(ids[i], cfg.missed_lesions, cfg.threshold)
            if labels[i] != normal and level is not None:
                peak = float(np.max(probs[i]))
                faded[i] = probs[i] * (level / peak) if peak > 0 else probs[i]
        if faded:
            index = sorted(faded)
            empty = [np.zeros(np.shape(probs[i]), bool) for i in index]
            sources.append(("missed", index, empty, [faded[i] for i in index]))
    parts = []
    for source, index, masks, maps in sources:
        part_images = [images[i] for i in index]
        crops, channel, boxes, features = rois_from_masks(part_images, masks, cfg.roi, probs=maps)
        part = {
            "crops": crops,
            # the classifier's second channel: mask crops, or probability crops
            "channel": channel.astype(np.float16),
            "boxes": boxes,
            "labels": np.asarray(labels, dtype=np.int64)[index],
            "ids": np.asarray(ids, dtype=str)[index],
            "mask_source": np.array([source] * len(index)),
            "area": np.array([f["area"] for f in features], dtype=np.float32),
            "aspect": np.array([f["aspect"] for f in features], dtype=np.float32),
            "extent": np.array([f["extent"] for f in features], dtype=np.float32),
        }
        if cfg.roi.context == "image":
            # the classifier's context channels: the whole image and probability map
            whole, whole_maps = context_maps(part_images, maps, cfg.crop_size)
            part.update(context_image=whole, context_prob=whole_maps.astype(np.float16))
        parts.append(part)
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def main(argv: list[str] | None = None) -> int:
    from busi.cli import parser_for

    parser = parser_for(
        "crop-rois", "--data-dir", "--manifest", "--splits", "--unet", "--unet-folds", "--params"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("data/rois"),
        help="the folder for the crops (npz per split) and summary.json (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    cfg = load_section(args.params, "crop_rois", CropConfig)
    if not args.unet.is_file():
        raise BusiError(f"{args.unet} not found: run `busi train-unet` first")

    from busi import tracking
    from busi.data.splits import load_split_rows
    from busi.model.unet import load_unet

    unet = load_unet(args.unet)
    # loaded (or refused) before any work
    folds = _load_fold_unets(args.unet_folds, cfg) if cfg.train_segmenter == "out_of_fold" else None
    rows = load_split_rows(args.manifest, args.splits)
    with tracking.step_run("crop_rois", asdict(cfg)):
        summary = _crop_all(rows, unet, args, cfg, folds)
        tracking.log_step_outputs(
            {f"{s}_no_lesion_found": v["no_lesion_found"] for s, v in summary["splits"].items()},
            artifacts=[args.out / "summary.json"],
        )
    for split, info in summary["splits"].items():
        print(
            f"{split}: {info['rows']} crops, no lesion found in {info['no_lesion_found']} "
            f"({info['no_lesion_found_per_class']})"
        )
    return 0


def _crop_all(rows, unet, args, cfg: CropConfig, folds=None) -> dict:
    """``folds``: ``_load_fold_unets``' answer when the train split is segmented out of fold."""
    from dataclasses import replace

    from tqdm import tqdm

    from busi.data.preprocess import load_pair

    def load(split: str):
        part = rows[rows["split"] == split]
        images, masks = [], []
        for _, row in tqdm(
            part.iterrows(), total=len(part), desc=f"crop-rois {split}", unit="img", leave=False
        ):
            image, mask = load_pair(args.data_dir, row["path"], row["mask_files"])
            images.append(image)
            masks.append(mask)
        return part, images, masks

    args.out.mkdir(parents=True, exist_ok=True)

    def predict(imgs):
        return segment(unet, imgs, unet.input_shape[1], cfg.tta_flip)

    search, val = None, None
    if cfg.threshold_choice == "val":
        part, images, masks = load("val")
        probs = predict(images)
        chosen, search = choose_threshold(probs, masks, part["class"].to_list(), cfg)
        logger.info("lesion threshold chosen on the val split: %s", chosen)
        cfg = replace(cfg, threshold=chosen)
        val = (part, images, masks, probs)  # the threshold does not change the probabilities
    summary: dict = {"config": asdict(cfg), "splits": {}}
    if search is not None:
        summary["threshold_search"] = search
    for split in ("train", "val", "test"):
        if split == "val" and val is not None:
            part, images, masks, probs = val
            split_predict = lambda _imgs, probs=probs: probs  # noqa: E731
        else:
            part, images, masks = load(split)
            split_predict = predict
        segmenter = "out_of_fold" if split == "train" and folds is not None else "full"
        if segmenter == "out_of_fold":
            split_predict = out_of_fold_predict(part["id"].to_list(), *folds)
        labels = [CLASSES.index(c) for c in part["class"]]
        result = rois_for_split(
            images, masks, labels, part["id"].to_list(), split_predict, cfg, split
        )
        np.savez_compressed(args.out / f"{split}.npz", **result)
        predicted = result["mask_source"] == "predicted"
        whole = (result["area"][predicted] == 0).astype(bool)
        summary["splits"][split] = {
            "rows": len(result["ids"]),
            "no_lesion_found": int(whole.sum()),
            "segmenter": segmenter,
            "missed_lesion_copies": int((result["mask_source"] == "missed").sum()),
            "no_lesion_found_per_class": {
                c: int(whole[result["labels"][predicted] == i].sum()) for i, c in enumerate(CLASSES)
            },
        }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _load_fold_unets(folder: Path, cfg: CropConfig) -> tuple[dict[str, int], list]:
    """The fold of each train id and a segmenter per fold U-Net that train-unet-folds saved
    in ``folder`` (``out_of_fold_predict``'s arguments after the ids)."""
    import pandas as pd

    from busi.model.unet import load_unet

    info = folder / "folds.json"
    folds = json.loads(info.read_text())["folds"] if info.is_file() else 0
    if not folds:
        raise BusiError(
            f"crop_rois.train_segmenter is out_of_fold but {folder} has no fold U-Nets: set "
            "train_unet_folds.folds (e.g. 2) and run `busi train-unet-folds`, or set "
            "train_segmenter: full"
        )
    table = pd.read_csv(folder / "folds.csv")
    fold_of = dict(zip(table["id"].astype(str), table["fold"].astype(int), strict=True))
    unets = [load_unet(folder / f"fold-{k}.keras") for k in range(folds)]
    predictors = [
        (lambda imgs, u=u: segment(u, imgs, u.input_shape[1], cfg.tta_flip)) for u in unets
    ]
    return fold_of, predictors
