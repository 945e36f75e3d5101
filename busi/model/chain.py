"""The inference chain shared by crop_rois, evaluate_models and serving:
image -> lesion probability -> cleaned mask -> region of interest -> classifier input.

Everything here is pure (arrays in, arrays out) except ``segment``, which calls a model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from busi.data.preprocess import CLASSES, prepare_image, resize_gray, resize_mask, resize_prob
from busi.model.masks import LesionRule, clean_mask

MASK_CHANNELS = ("binary", "probability")
EMPTY_CROPS = ("whole", "peak")
CONTEXTS = ("none", "image")


@dataclass(frozen=True)
class RoiConfig:
    threshold: float = 0.5
    # A "lesion" is a connected component covering at least this share of the image;
    # smaller specks are dropped (and a normal image with none counts as lesion-free).
    min_area: float = 0.002
    keep: str = "largest"  # largest | all
    margin: float = 0.15  # added on each side, as a share of the box's height/width
    crop_size: int = 128
    # The classifier's second input channel over the crop: the cleaned ``binary`` mask, or
    # the U-Net's lesion ``probability``, which keeps the confidence and the soft edge of
    # the lesion that thresholding throws away (bench/results/sweep.md).
    mask_channel: str = "binary"
    # The crop when no lesion is found: the ``whole`` image, or a square of ``peak_window``
    # of the shorter side around the U-Net's highest lesion probability (``peak``), so that
    # a lesion the threshold missed is still in front of the classifier.
    empty_crop: str = "whole"
    peak_window: float = 0.35
    # What the classifier sees beside the crop: nothing (``none``), or the whole ``image``
    # and the U-Net's whole probability map, each resized to crop_size (two more input
    # channels), so that a lesion the crop missed is still in front of it.
    context: str = "none"
    # The classifier's veto on the lesion: the chain shows no lesion on an image to which
    # the classifier gives a probability of "normal" of at least ``normal_veto`` (the mask
    # is emptied; the class, box and crop stay). 1.0: never, the U-Net alone decides.
    normal_veto: float = 1.0

    def __post_init__(self) -> None:
        LesionRule(self.threshold, self.min_area, self.keep)  # checks these three
        if not 0 < self.normal_veto <= 1:
            raise ValueError("normal_veto must lie in (0, 1]: 1 is no veto")
        if self.context not in CONTEXTS:
            raise ValueError(f"context must be one of {CONTEXTS}")
        if self.mask_channel not in MASK_CHANNELS:
            raise ValueError(f"mask_channel must be one of {MASK_CHANNELS}")
        if self.margin < 0:
            raise ValueError("margin must be >= 0")
        if self.empty_crop not in EMPTY_CROPS:
            raise ValueError(f"empty_crop must be one of {EMPTY_CROPS}")
        if not 0 < self.peak_window <= 1:
            raise ValueError("peak_window must lie in (0, 1]")


def member_outputs(members: list, what: str, input_name: str, prefix: str):
    """(input, [each member's output]) of a model built from ``members``, which become its
    layers ``<prefix>_0``, ``<prefix>_1``, ... and must take the same input; ``what`` names
    the model in errors. The chain's ensembles (``average_models``, gated U-Nets) start here."""
    import keras

    if not members:
        raise ValueError(f"{what}: an average needs at least one member")
    shapes = {tuple(m.input_shape[1:]) for m in members}
    if len(shapes) != 1:
        raise ValueError(f"{what}: the members take different inputs {sorted(shapes)}")
    for k, member in enumerate(members):
        member.name = f"{prefix}_{k}"
    inputs = keras.Input(shapes.pop(), name=input_name)
    return inputs, [member(inputs) for member in members]


def average_models(members: list, what: str, input_name: str, output_name: str, prefix: str):
    """One Keras model whose output is the mean of the members' (a single member is returned
    as it is): the chain's ensembles, of U-Nets and of classifiers. The members become its
    layers ``<prefix>_0``, ``<prefix>_1``, ...; they must take the same input. ``what``
    names the model in its name and errors (``unet_average``, ``classifier_ensemble``)."""
    import keras

    if len(members) == 1:
        return members[0]
    inputs, outputs = member_outputs(members, what, input_name, prefix)
    mean = keras.layers.Average(name=output_name)(outputs)
    return keras.Model(inputs, mean, name=f"{what}_{len(members)}")


def segment(
    unet, images: list[np.ndarray], size: int, tta_flip: bool = True, batch_size: int = 32
) -> list[np.ndarray]:
    """Lesion probability maps at each image's own resolution. With ``tta_flip`` the
    prediction is averaged with that of the horizontally flipped image."""
    if not images:
        return []
    batch = np.stack([prepare_image(img, size) for img in images])
    prob = unet.predict(batch, batch_size=batch_size, verbose=0)
    if tta_flip:
        flipped = unet.predict(batch[:, :, ::-1], batch_size=batch_size, verbose=0)
        prob = (prob + flipped[:, :, ::-1]) / 2.0
    return [resize_prob(p[..., 0], *img.shape[:2]) for p, img in zip(prob, images, strict=True)]


def roi_box(mask: np.ndarray, margin: float) -> tuple[int, int, int, int]:
    """(top, left, bottom, right), bottom/right exclusive: the mask's bounding box grown by
    ``margin`` of its size on each side and clipped to the image; the whole image when the
    mask is empty."""
    height, width = mask.shape
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return 0, 0, height, width
    top, bottom = int(rows.min()), int(rows.max()) + 1
    left, right = int(cols.min()), int(cols.max()) + 1
    pad_y = round((bottom - top) * margin)
    pad_x = round((right - left) * margin)
    return (
        max(0, top - pad_y),
        max(0, left - pad_x),
        min(height, bottom + pad_y),
        min(width, right + pad_x),
    )


def peak_box(prob: np.ndarray, window: float) -> tuple[int, int, int, int]:
    """(top, left, bottom, right): a square of ``window`` of the shorter side centred on the
    highest lesion probability (the first such pixel), moved inside the image; centred on the
    image when the map is all zero."""
    height, width = prob.shape
    side = max(1, round(window * min(height, width)))
    if prob.max() > 0:
        row, col = np.unravel_index(int(np.argmax(prob)), prob.shape)
    else:
        row, col = height // 2, width // 2
    top = min(max(0, int(row) - side // 2), height - side)
    left = min(max(0, int(col) - side // 2), width - side)
    return top, left, top + side, left + side


def crop_roi(
    image: np.ndarray, mask: np.ndarray, box: tuple[int, int, int, int], size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The box cut from the image and the mask, each resized to size x size."""
    top, left, bottom, right = box
    return (
        resize_gray(image[top:bottom, left:right], size),
        resize_mask(mask[top:bottom, left:right], size),
    )


def shape_features(mask: np.ndarray) -> dict[str, float]:
    """Simple descriptors of the kept mask: area share, height/width ratio, fill of its box."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return {"area": 0.0, "aspect": 0.0, "extent": 0.0}
    h = rows.max() - rows.min() + 1
    w = cols.max() - cols.min() + 1
    return {
        "area": float(mask.mean()),
        "aspect": float(h / w),
        "extent": float(rows.size / (h * w)),
    }


def context_maps(
    images: list[np.ndarray], probs: list[np.ndarray], size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The whole images (uint8 [N,C,C]) and probability maps (float32 [N,C,C] in [0, 1]),
    each resized to ``size`` x ``size``: the classifier's context channels."""
    whole = [resize_gray(image, size) for image in images]
    maps = [np.clip(resize_prob(prob, size, size), 0.0, 1.0) for prob in probs]
    return np.stack(whole).astype(np.uint8), np.stack(maps).astype(np.float32)


def classifier_input(
    crops: np.ndarray,
    channel: np.ndarray,
    context: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """uint8 crops [N,C,C] and second channels [N,C,C] in [0,1] (mask or probability crops)
    -> float32 [N,C,C,2]: the crop in [0,1] and the second channel; with ``context``
    (``context_maps``: whole images, whole probability maps) -> [N,C,C,4], the whole image
    in [0,1] and its probability map after them. Grey channels are the even ones."""
    planes = [np.asarray(crops, dtype=np.float32) / 255.0, np.asarray(channel, dtype=np.float32)]
    if context is not None:
        whole, maps = context
        planes += [np.asarray(whole, dtype=np.float32) / 255.0, np.asarray(maps, np.float32)]
    return np.stack(planes, axis=-1)


def predict_proba(classifier, x: np.ndarray) -> np.ndarray:
    """Class probabilities as float64 rows summing to 1 (float32 softmax misses by ~1e-7)."""
    proba = classifier.predict(x, verbose=0).astype(np.float64)
    return proba / proba.sum(axis=1, keepdims=True)


def rois_from_masks(
    images: list[np.ndarray],
    masks: list[np.ndarray],
    cfg: RoiConfig,
    with_features: bool = True,
    probs: list[np.ndarray] | None = None,
):
    """Crops, second-channel crops, boxes and (unless ``with_features`` is false: an empty
    list) shape features for images with their (cleaned) masks. The box comes from the
    mask (from ``probs``' peak where the mask is empty and ``empty_crop`` is ``peak``); the
    second channel is the mask crop (uint8 0/1) or, with ``mask_channel:
    probability``, the crop of ``probs`` (float32 in [0, 1]) over the same box."""
    soft = cfg.mask_channel == "probability"
    if soft and probs is None:
        raise ValueError("mask_channel 'probability' needs the probability maps (probs)")
    if cfg.empty_crop == "peak" and probs is None:
        raise ValueError("empty_crop 'peak' needs the probability maps (probs)")
    crops, mask_crops, boxes, features = [], [], [], []
    for i, (image, mask) in enumerate(zip(images, masks, strict=True)):
        if cfg.empty_crop == "peak" and not mask.any():
            box = peak_box(probs[i], cfg.peak_window)
        else:
            box = roi_box(mask, cfg.margin)
        if soft:
            top, left, bottom, right = box
            crop = resize_gray(image[top:bottom, left:right], cfg.crop_size)
            window = probs[i][top:bottom, left:right]
            mask_crop = np.clip(resize_prob(window, cfg.crop_size, cfg.crop_size), 0.0, 1.0)
        else:
            crop, mask_crop = crop_roi(image, mask, box, cfg.crop_size)
        crops.append(crop)
        mask_crops.append(mask_crop)
        boxes.append(box)
        if with_features:
            features.append(shape_features(mask))
    return (
        np.stack(crops).astype(np.uint8),
        np.stack(mask_crops).astype(np.float32 if soft else np.uint8),
        np.array(boxes, dtype=np.int64),
        features,
    )


@dataclass(frozen=True)
class ChainResult:
    """What the chain says of each image: the cleaned lesion mask at the image's own size,
    the ROI box, the classifier's input crop and its class probabilities (CLASSES order)."""

    masks: list[np.ndarray]
    boxes: np.ndarray
    crops: np.ndarray
    proba: np.ndarray


def predict_chain(images: list[np.ndarray], unet, classifier, roi: RoiConfig, tta_flip: bool):
    """image -> mask -> crop -> class for grayscale uint8 images of any size: the one path
    used by evaluation and serving, with the crop settings the classifier was trained with."""
    probs = segment(unet, images, unet.input_shape[1], tta_flip)
    masks = [clean_mask(p, roi) for p in probs]
    crops, mask_crops, boxes, _ = rois_from_masks(
        images, masks, roi, with_features=False, probs=probs
    )
    context = context_maps(images, probs, roi.crop_size) if roi.context == "image" else None
    proba = predict_proba(classifier, classifier_input(crops, mask_crops, context))
    return ChainResult(
        masks=veto_masks(masks, proba, roi.normal_veto), boxes=boxes, crops=crops, proba=proba
    )


def veto_masks(masks: list[np.ndarray], proba: np.ndarray, normal_veto: float) -> list:
    """The masks, with that of each image whose probability of "normal" (CLASSES order) is
    at least ``normal_veto`` emptied; ``normal_veto`` 1.0 vetoes nothing."""
    if normal_veto >= 1.0:
        return masks
    p_normal = np.asarray(proba)[:, CLASSES.index("normal")]
    return [
        np.zeros_like(m) if p >= normal_veto else m for m, p in zip(masks, p_normal, strict=True)
    ]


# The crop_rois section of params.yaml: the chain as trained, evaluated and served.
@dataclass(frozen=True)
class CropConfig:
    threshold: float = 0.5
    min_area: float = 0.002
    keep: str = "largest"
    margin: float = 0.15
    crop_size: int = 128
    tta_flip: bool = True
    train_masks: str = "predicted"  # predicted | ground_truth | both
    # binary | probability; summaries written before this existed mean binary
    mask_channel: str = "binary"
    # fixed: ``threshold`` as given. val: chosen on the val split from threshold_grid, the
    # one that misses the fewest lesions while giving a false lesion to at most
    # max_val_false_lesion_rate of the normal images (ties: the better lesion Dice, then
    # the higher threshold); the summary records the choice, which evaluation and serving
    # then use.
    threshold_choice: str = "fixed"
    threshold_grid: tuple[float, ...] = (0.2, 0.3, 0.4, 0.5, 0.6)
    max_val_false_lesion_rate: float = 0.1
    # whole | peak (see RoiConfig); summaries written before this existed mean whole
    empty_crop: str = "whole"
    peak_window: float = 0.35
    # none | image (see RoiConfig); summaries written before this existed mean none
    context: str = "none"
    # What segments the train split for the classifier's crops: full (the U-Net, which has
    # seen those images) | out_of_fold (each image by the fold U-Net of train_unet_folds
    # that did not see it). Val, test and serving always use the U-Net.
    train_segmenter: str = "full"
    # see RoiConfig; summaries written before this existed mean 1.0 (no veto)
    normal_veto: float = 1.0
    # The share of the train split's lesion images given one more example made as the chain
    # makes one when the U-Net finds nothing (see components/crop_rois.py's ``missed_copy``):
    # the U-Net's map faded to a peak under threshold / 2, no mask, the crop from that
    # faint peak, and the image's own class. 0: none.
    missed_lesions: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.missed_lesions <= 1:
            raise ValueError("missed_lesions must lie in [0, 1]: the share of train lesion images")
        if self.train_masks not in ("predicted", "ground_truth", "both"):
            raise ValueError("train_masks must be predicted, ground_truth or both")
        if self.train_segmenter not in ("full", "out_of_fold"):
            raise ValueError("train_segmenter must be full or out_of_fold")
        if self.threshold_choice not in ("fixed", "val"):
            raise ValueError("threshold_choice must be fixed or val")
        if not self.threshold_grid or not all(0 < t < 1 for t in self.threshold_grid):
            raise ValueError("threshold_grid must list thresholds in (0, 1)")
        if not 0 <= self.max_val_false_lesion_rate <= 1:
            raise ValueError("max_val_false_lesion_rate must lie in [0, 1]")
        self.roi  # validates the ROI settings  # noqa: B018

    @property
    def roi(self) -> RoiConfig:
        return RoiConfig(
            self.threshold,
            self.min_area,
            self.keep,
            self.margin,
            self.crop_size,
            self.mask_channel,
            self.empty_crop,
            self.peak_window,
            self.context,
            self.normal_veto,
        )
