"""How a U-Net is built and trained: the core that ``train_unet`` and ``train_unet_folds``
share (a step never imports another step).

Loss BCE + soft Dice (and, with ``presence_weight``, an image-level lesion-present term:
``presence_loss``). One Dice everywhere (``busi.model.metrics``): the lesion Dice is the
mean, over images whose true mask is non-empty, of 2TP / (2TP + FP + FN); an image with an
empty true mask has no Dice (it is scored by the false-lesion rate instead). Training logs
it on the raw thresholded masks (``lesion_dice_raw``, ``val_lesion_dice_raw``); after each
epoch the validation split is scored as ``evaluate_models`` scores it (the chain's
threshold, small-blob removal and largest component from ``crop_rois``):
``val_lesion_dice``, ``val_false_lesion_rate`` and ``val_score`` (the Dice minus
``false_lesion_weight`` times the rate). Early stopping watches ``monitor``, one of those,
so what stops training is what is reported.
A backup every epoch (Keras BackupAndRestore, each file written whole), so a killed run
resumes where it stopped. ``weight_average`` > 0 validates, keeps and saves a moving average
of the weights instead of the raw ones (``busi.model.weight_average``).
``architecture: original`` is the published notebook's U-Net (base 64 filters, 31 M
parameters, dropout, no batch norm); ``compact`` is the default that fits the CPU budget.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

from busi.model.imagenet import weights_digest, weights_problem

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class UnetArch:
    base_filters: int
    depth: int
    dropout: float
    batchnorm: bool
    # Each block adds a 1x1-convolution shortcut of its input (a residual U-Net).
    residual: bool = False
    # A keras.applications network as the encoder (ENCODERS), whose ImageNet weights
    # train_unet.encoder_weights may load; the decoder is this project's (base_filters,
    # batch norm, dropout at the bottleneck). depth counts the encoder's halvings.
    encoder: str | None = None


@dataclass(frozen=True)
class EncoderSpec:
    # The layers whose outputs the decoder takes: at 1/2, 1/4, 1/8 and 1/16 of the input's
    # side (the skips), and at 1/32 (the bottleneck).
    skips: tuple[str, ...]
    bottom: str


# The usual U-Net taps of each network (as in Keras' and TensorFlow's segmentation examples).
ENCODERS = {
    "mobilenet_v2": EncoderSpec(
        skips=(
            "block_1_expand_relu",
            "block_3_expand_relu",
            "block_6_expand_relu",
            "block_13_expand_relu",
        ),
        bottom="block_16_project",
    ),
    "resnet50": EncoderSpec(
        skips=("conv1_relu", "conv2_block3_out", "conv3_block4_out", "conv4_block6_out"),
        bottom="conv5_block3_out",
    ),
}


ARCHITECTURES = {
    # The notebook's U-Net: 64-128-256-512-1024 filters, dropout in the deep layers.
    "original": UnetArch(base_filters=64, depth=4, dropout=0.5, batchnorm=False),
    "compact": UnetArch(base_filters=16, depth=4, dropout=0.1, batchnorm=True),
    "wide": UnetArch(base_filters=32, depth=4, dropout=0.1, batchnorm=True),
    "residual": UnetArch(base_filters=16, depth=4, dropout=0.1, batchnorm=True, residual=True),
    # Pretrainable encoders (5.6 M and 41 M parameters with the decoder, at 96 px), with
    # train_unet.encoder_weights: imagenet (or a weights file) where weights can be had.
    "mobilenet_v2": UnetArch(
        base_filters=16, depth=5, dropout=0.1, batchnorm=True, encoder="mobilenet_v2"
    ),
    "resnet50": UnetArch(base_filters=32, depth=5, dropout=0.1, batchnorm=True, encoder="resnet50"),
}


MONITORS = ("val_lesion_dice", "val_score")
INPUT_NORMS = ("none", "image")
LR_SCHEDULES = ("constant", "cosine")


def epoch_learning_rate(epoch: int, cfg: UnetConfig) -> float:
    """The learning rate of ``epoch`` (0-based) under ``cfg.lr_schedule``."""
    if cfg.lr_schedule == "constant":
        return float(cfg.learning_rate)
    return float(cfg.learning_rate * 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.epochs)))


@dataclass(frozen=True)
class UnetConfig:
    architecture: str = "compact"
    epochs: int = 40
    batch_size: int = 16
    learning_rate: float = 1e-3
    patience: int = 8
    # Keras' default 0.99 is unstable with ~100 steps an epoch or fewer.
    batchnorm_momentum: float = 0.9
    shuffle_buffer: int = 4096
    seed: int = 0
    # What early stopping (and the choice of the best epoch) watches: the validation split
    # scored as evaluate_models scores it (see the module docstring).
    monitor: str = "val_score"
    false_lesion_weight: float = 0.2
    # The image as the U-Net sees it: none (grey levels / 255) | image (each image
    # standardised to mean 0 and std 1 by a parameter-free layer inside the model, so that
    # serving and every step downstream get it too): a site's gain and contrast then change
    # nothing the U-Net sees.
    input_norm: str = "none"
    # constant: learning_rate throughout | cosine: annealed per epoch from learning_rate
    # towards 0 at the last of ``epochs`` (half a cosine), so the late epochs, where the
    # best one is picked, move the weights less.
    lr_schedule: str = "constant"
    # Uniform images (one grey level each, drawn evenly from [0, 1]) with empty masks added
    # to the train split, as a share of its size: a standardised U-Net sees every flat
    # image as all zeros, and without such examples it may read that as a lesion.
    flat_negatives: float = 0.0
    # Epochs before early stopping starts to watch ``monitor`` (and before an epoch can be
    # kept as the best): the false-lesion rate on 20 normal val images moves by up to 0.45
    # from one epoch to the next, and with a heavy false_lesion_weight an early epoch that
    # marks little can win and stop training (bench/results/chain_seeds_val_cosine_flw.md).
    min_epochs: int = 0
    # The momentum of an exponential moving average of the weights (all of them, batch-norm
    # statistics included), updated after every training batch; 0 turns it off. With it on,
    # the epoch-end validation figures, early stopping and the saved model see the averaged
    # weights, while training goes on from the raw ones (busi.model.weight_average). Why: the
    # false-lesion rate on the normal val images jumps by up to 0.6 from one epoch to the next
    # (0.40-1.00 in the defaults' U-Net), so which epoch is kept, and how many normal images
    # its U-Net marks, is largely luck. 0.995 weighs the last ~200 batches (3 epochs of
    # BUSI's train split at batch 16).
    weight_average: float = 0.0
    # The encoder's weights, for an architecture with a keras.applications encoder
    # (mobilenet_v2, resnet50): none (random, the offline default) | imagenet (downloaded by
    # Keras on first use: needs internet once) | the path of the network's no-top weights
    # file (e.g. Keras' download copied from a machine with internet). See busi.model.imagenet.
    encoder_weights: str = "none"
    # The weight of an image-level term added to the loss (0: off): the binary cross-entropy
    # between "the true mask has a lesion" and the mean of the image's k highest lesion
    # probabilities, k = crop_rois' min_area of the image's pixels (``presence_loss``): the
    # chain's own decision (a lesion is at least min_area above the threshold), which the
    # per-pixel loss barely sees. Soft Dice on an empty mask is ~1 once a few pixels are
    # marked, with a gradient near 0, so without it a false blob on a normal image costs
    # only its pixels' share of the mean BCE.
    presence_weight: float = 0.0
    # Whether the validation figures (early stopping, the best epoch, train_unet's metrics)
    # score the U-Net's map averaged with that of the horizontally flipped image, as every
    # step that reports a figure does with crop_rois.tta_flip on (``val_probabilities``);
    # false: one forward pass.
    monitor_flip: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.monitor_flip, bool):
            raise ValueError(
                f"monitor_flip {self.monitor_flip!r} must be true or false: whether the "
                "validation figures score the flip-averaged map"
            )
        if self.presence_weight < 0:
            raise ValueError(
                f"presence_weight {self.presence_weight} must be >= 0: the weight of the "
                "image-level lesion-present term in the loss (0: off)"
            )
        if not 0.0 <= self.weight_average < 1.0:
            raise ValueError(
                f"weight_average {self.weight_average} must be in [0, 1): the momentum of the "
                "moving average of the weights (0: off)"
            )
        if not 0 <= self.min_epochs < self.epochs:
            raise ValueError(
                f"min_epochs {self.min_epochs} must lie in [0, epochs={self.epochs}): the "
                "epochs before early stopping starts to watch the monitor"
            )
        if not 0 <= self.flat_negatives <= 1:
            raise ValueError(
                f"flat_negatives {self.flat_negatives} is a share of the train split: "
                "give a number in [0, 1]"
            )
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"lr_schedule '{self.lr_schedule}' unknown; choose one of {LR_SCHEDULES}"
            )
        if self.input_norm not in INPUT_NORMS:
            raise ValueError(f"input_norm '{self.input_norm}' unknown; choose one of {INPUT_NORMS}")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"architecture '{self.architecture}' unknown; choose one of {sorted(ARCHITECTURES)}"
            )
        if self.monitor not in MONITORS:
            raise ValueError(f"monitor '{self.monitor}' unknown; choose one of {MONITORS}")
        if self.false_lesion_weight < 0:
            raise ValueError("false_lesion_weight must be >= 0")
        if self.encoder_weights != "none":
            problem = weights_problem(self.encoder_weights)
            if problem:
                raise ValueError(f"encoder_weights {problem}")
            if self.arch.encoder is None:
                pretrainable = sorted(k for k, a in ARCHITECTURES.items() if a.encoder)
                raise ValueError(
                    f"encoder_weights '{self.encoder_weights}' needs an architecture with a "
                    f"pretrainable encoder ({', '.join(pretrainable)}); the "
                    f"{self.architecture} U-Net has none: set encoder_weights: none"
                )

    @property
    def arch(self) -> UnetArch:
        return ARCHITECTURES[self.architecture]


def build_unet(
    image_size: int,
    arch: UnetArch,
    bn_momentum: float = 0.9,
    input_norm: str = "none",
    encoder_weights: str = "none",
):
    """A U-Net: image [S,S,1] in, lesion probability [S,S,1] out.

    ``input_norm="image"`` standardises each image over its pixels (LayerNormalization over
    height, width and channel, without learned scale or offset: a built-in layer, so saved
    models load without custom objects). A blank image becomes all zeros. An architecture
    with an ``encoder`` takes that keras.applications network, with ``encoder_weights``, as
    its encoder (``encoder_unet``)."""
    import keras
    from keras import layers

    def block(x, filters: int, dropout: float = 0.0):
        shortcut = x
        for i in range(2):
            x = layers.Conv2D(
                filters,
                3,
                padding="same",
                use_bias=not arch.batchnorm,
                kernel_initializer="he_normal",
            )(x)
            if arch.batchnorm:
                x = layers.BatchNormalization(momentum=bn_momentum)(x)
            if arch.residual and i == 1:
                shortcut = layers.Conv2D(filters, 1, padding="same", use_bias=False)(shortcut)
                x = layers.Add()([x, shortcut])
            x = layers.Activation("relu")(x)
        if dropout:
            x = layers.Dropout(dropout)(x)
        return x

    inputs = keras.Input((image_size, image_size, 1), name="image")
    x, skips = inputs, []
    if input_norm == "image":
        x = layers.LayerNormalization(
            axis=(1, 2, 3), center=False, scale=False, epsilon=1e-4, name="image_norm"
        )(x)
    elif input_norm != "none":
        raise ValueError(f"input_norm '{input_norm}' unknown; choose one of {INPUT_NORMS}")
    if arch.encoder:
        outputs = encoder_unet(x, image_size, arch, block, bn_momentum, encoder_weights, input_norm)
        return keras.Model(inputs, outputs, name="unet")
    for level in range(arch.depth):
        deep = level >= arch.depth - 1
        x = block(x, arch.base_filters * 2**level, arch.dropout if deep else 0.0)
        skips.append(x)
        x = layers.MaxPooling2D()(x)
    x = block(x, arch.base_filters * 2**arch.depth, arch.dropout)
    for level in reversed(range(arch.depth)):
        x = layers.Conv2DTranspose(arch.base_filters * 2**level, 2, strides=2, padding="same")(x)
        x = layers.Concatenate()([x, skips[level]])
        x = block(x, arch.base_filters * 2**level)
    outputs = layers.Conv2D(1, 1, activation="sigmoid", name="mask")(x)
    return keras.Model(inputs, outputs, name="unet")


def encoder_unet(x, image_size: int, arch: UnetArch, block, bn_momentum, weights, input_norm):
    """The lesion probability of a U-Net whose encoder is ``arch.encoder`` (ENCODERS) on the
    image ``x`` (grey levels in [0, 1], or standardised): the grey channel repeated as RGB of
    0-255 and preprocessed as the network was on ImageNet; the decoder goes up from the
    bottleneck (1/32) through the network's skips (1/16 ... 1/2) to the image's side, where
    the image itself is the last skip."""
    import keras
    from keras import layers

    from busi.model.imagenet import build_network, imagenet_preprocess, set_batchnorm_momentum

    spec = ENCODERS[arch.encoder]
    grey = x * 0.25 + 0.5 if input_norm == "image" else x  # standardised: mean 0.5, std 0.25
    rgb = layers.Concatenate(name="grey_to_rgb")([grey, grey, grey]) * 255.0
    rgb = imagenet_preprocess(rgb, arch.encoder)
    network = build_network(arch.encoder, weights, image_size, "train_unet.encoder_weights")
    set_batchnorm_momentum(network, bn_momentum)
    taps = [network.get_layer(name).output for name in (*spec.skips, spec.bottom)]
    encoder = keras.Model(network.input, taps, name=f"{arch.encoder}_encoder")
    *skips, y = encoder(rgb)
    if arch.dropout:
        y = layers.Dropout(arch.dropout)(y)
    for level, skip in reversed(list(enumerate([x, *skips]))):
        filters = arch.base_filters * 2**level
        y = layers.Conv2DTranspose(filters, 2, strides=2, padding="same")(y)
        y = layers.Concatenate()([y, skip])
        y = block(y, filters)
    return layers.Conv2D(1, 1, activation="sigmoid", name="mask")(y)


def soft_dice_loss(y_true, y_pred, smooth: float = 1.0):
    """1 - soft Dice, per image, averaged over the batch."""
    from keras import ops

    axes = (1, 2, 3)
    intersection = ops.sum(y_true * y_pred, axis=axes)
    total = ops.sum(y_true, axis=axes) + ops.sum(y_pred, axis=axes)
    return 1.0 - ops.mean((2.0 * intersection + smooth) / (total + smooth))


def bce_dice_loss(y_true, y_pred):
    import keras
    from keras import ops

    bce = ops.mean(keras.losses.binary_crossentropy(y_true, y_pred))
    return bce + soft_dice_loss(y_true, y_pred)


def presence_pixels(min_area: float, image_size: int) -> int:
    """The k of ``presence_loss``: the fewest pixels the chain calls a lesion (its
    ``min_area`` share of an image_size x image_size image, as ``clean_mask`` rounds it)."""
    return max(1, math.ceil(min_area * image_size * image_size))


def presence_loss(y_true, y_pred, pixels: int):
    """Image-level: the binary cross-entropy, averaged over the batch, between "the true mask
    has a lesion" and the mean of each image's ``pixels`` highest predicted probabilities
    (a soft "at least ``pixels`` marked"). On a normal image it pushes the highest
    probabilities down; on a lesion image it pushes its k most likely pixels up."""
    import keras
    from keras import ops

    size = int(math.prod(y_pred.shape[1:]))
    flat_pred = ops.reshape(y_pred, (-1, size))
    flat_true = ops.reshape(ops.cast(y_true, y_pred.dtype), (-1, size))
    present = ops.cast(ops.max(flat_true, axis=-1, keepdims=True) > 0.5, y_pred.dtype)
    highest, _ = ops.top_k(flat_pred, min(pixels, size), sorted=False)
    score = ops.mean(highest, axis=-1, keepdims=True)
    return ops.mean(keras.losses.binary_crossentropy(present, score))


def segmentation_loss(presence_weight: float = 0.0, pixels: int = 1):
    """The U-Net's loss: ``bce_dice_loss``, plus ``presence_weight`` x ``presence_loss``
    when that is > 0 (with 0, ``bce_dice_loss`` itself: training is unchanged)."""
    if not presence_weight:
        return bce_dice_loss

    def bce_dice_presence_loss(y_true, y_pred):
        return bce_dice_loss(y_true, y_pred) + presence_weight * presence_loss(
            y_true, y_pred, pixels
        )

    return bce_dice_presence_loss


def lesion_dice_metric(threshold: float = 0.5):
    """A Keras metric: the lesion Dice of ``busi.model.metrics`` on the raw thresholded
    masks, accumulated over an epoch (each lesion image counts once, whatever its batch)."""
    import keras
    from keras import ops

    class LesionDice(keras.metrics.Metric):
        def __init__(self, name="lesion_dice_raw", **kwargs):
            super().__init__(name=name, **kwargs)
            self.total = self.add_variable(shape=(), initializer="zeros", name="total")
            self.count = self.add_variable(shape=(), initializer="zeros", name="count")

        def update_state(self, y_true, y_pred, sample_weight=None):
            truth = ops.cast(y_true > 0.5, "float32")
            pred = ops.cast(y_pred >= threshold, "float32")
            axes = (1, 2, 3)
            tp = ops.sum(truth * pred, axis=axes)
            size = ops.sum(truth, axis=axes) + ops.sum(pred, axis=axes)
            lesion = ops.cast(ops.sum(truth, axis=axes) > 0, "float32")
            per_image = 2.0 * tp / ops.maximum(size, 1e-9)
            self.total.assign(self.total + ops.sum(per_image * lesion))
            self.count.assign(self.count + ops.sum(lesion))

        def result(self):
            return ops.where(
                self.count > 0, self.total / ops.maximum(self.count, 1.0), float("nan")
            )

    return LesionDice()


def chain_scores(probs, true_masks, labels, roi, false_lesion_weight: float) -> dict:
    """The validation figures of one epoch, computed as evaluate_models computes them: each
    probability map cleaned by the chain (``roi``: threshold, min_area, keep), then
    ``segmentation_metrics``. ``labels`` are class names."""
    import math

    from busi.model.masks import clean_mask
    from busi.model.metrics import segmentation_metrics

    cleaned = [clean_mask(p, roi) for p in probs]
    seg = segmentation_metrics(list(true_masks), cleaned, list(labels), lesion_min_area=0.0)
    dice, rate = seg["dice_mean"], seg["normal_false_lesion_rate"]
    rate_or_0 = 0.0 if math.isnan(rate) else rate
    return {
        "val_lesion_dice": dice,
        "val_false_lesion_rate": rate,
        "val_score": dice - false_lesion_weight * rate_or_0,
    }


def val_probabilities(model, images, batch_size: int = 32, flip: bool = False):
    """The U-Net's lesion probabilities (N, H, W) for a batch of prepared images; with
    ``flip`` averaged with those of the horizontally flipped images, flipped back, as
    ``busi.model.chain.segment`` does with tta_flip."""
    probs = model.predict(images, batch_size=batch_size, verbose=0)[..., 0]
    if flip:
        flipped = model.predict(images[:, :, ::-1], batch_size=batch_size, verbose=0)[..., 0]
        probs = (probs + flipped[:, :, ::-1]) / 2.0
    return probs


def chain_validation(
    val_arrays, roi, false_lesion_weight: float, batch_size: int = 32, flip: bool = False
):
    """A Keras callback that adds ``chain_scores`` of the validation split (the maps of
    ``val_probabilities``, flip-averaged with ``flip``) to each epoch's logs; listed before
    EarlyStopping and the loggers, which then see them."""
    import keras

    images, masks, labels = val_arrays

    class ChainValidation(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            probs = val_probabilities(self.model, images, batch_size, flip)
            if logs is not None:
                logs.update(chain_scores(probs, masks, labels, roi, false_lesion_weight))

    return ChainValidation()


def compile_unet(model, learning_rate: float, presence_weight: float = 0.0, pixels: int = 1):
    """Adam and ``segmentation_loss(presence_weight, pixels)``."""
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=segmentation_loss(presence_weight, pixels),
        metrics=[lesion_dice_metric()],
    )
    return model


def split_arrays(ds):
    """(images [N,S,S,1], masks [N,S,S], class names) of an unbatched (image, mask, label)
    dataset."""
    import numpy as np

    from busi.data.preprocess import CLASSES

    images, masks, labels = [], [], []
    for image, mask, label in ds.as_numpy_iterator():
        images.append(image)
        masks.append(mask[..., 0] > 0.5)
        labels.append(CLASSES[int(label)])
    return np.stack(images), masks, labels


def flat_images(count: int, image_size: int, seed: int):
    """``count`` uniform images [count,S,S,1] in [0, 1], their grey levels evenly spread over
    [0, 1] in a seeded random order, and their empty masks."""
    import numpy as np

    levels = np.random.default_rng(seed).permutation(np.linspace(0.0, 1.0, num=count))
    images = np.broadcast_to(
        levels[:, None, None, None], (count, image_size, image_size, 1)
    ).astype(np.float32)
    return images, np.zeros_like(images)


def segmentation_dataset(path: Path, image_size: int, cfg: UnetConfig, training: bool):
    """(image, mask) batches streamed from a TFRecord file; the train set is cached and
    reshuffled every epoch, with an extra random horizontal flip online, and
    ``cfg.flat_negatives`` of its size in flat images with empty masks added."""
    import tensorflow as tf

    from busi.data.tfrecords import read_tfrecord

    ds = read_tfrecord(path, image_size).map(lambda image, mask, label: (image, mask))
    ds = ds.cache()
    if training and cfg.flat_negatives > 0:
        count = round(cfg.flat_negatives * sum(1 for _ in ds))
        if count:
            flats = tf.data.Dataset.from_tensor_slices(flat_images(count, image_size, cfg.seed))
            ds = ds.concatenate(flats)
    if training:
        ds = ds.shuffle(cfg.shuffle_buffer, seed=cfg.seed, reshuffle_each_iteration=True)

        def flip(pair, seed):
            image, mask = pair
            do = tf.random.stateless_uniform((), seed=seed) < 0.5
            return (
                tf.where(do, tf.reverse(image, [1]), image),
                tf.where(do, tf.reverse(mask, [1]), mask),
            )

        # Stateless random ops with one seed per element: the same flips whatever the
        # thread schedule, so training is deterministic.
        seeds = tf.data.Dataset.random(seed=cfg.seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip((ds, seeds)).map(flip, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(cfg.batch_size).prefetch(tf.data.AUTOTUNE)


def _claim_backup(backup_dir: Path, fingerprint: str) -> bool:
    """Whether there is a backup of this same training to resume. A backup left by a
    training with other params or data is discarded (it cannot be resumed), and the
    folder is marked with this training's fingerprint."""
    marker = backup_dir / "busi_fingerprint.txt"
    if backup_dir.exists() and any(p != marker for p in backup_dir.iterdir()):
        if marker.is_file() and marker.read_text() == fingerprint:
            return True
        logger.warning("discarding %s: it was left by a training with other settings", backup_dir)
        shutil.rmtree(backup_dir)
    backup_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(fingerprint)
    return False


# What early stopping keeps in the backup folder (beside Keras' BackupAndRestore files): its
# best value, best epoch, epochs waited and the best epoch's weights, in one file written whole.
EARLY_STOPPING_STATE = "busi_early_stopping.npz"


def early_stopping(cfg: UnetConfig, state_dir: Path | None = None):
    """Stops when ``cfg.monitor`` has not risen for ``patience`` epochs and keeps the best
    epoch's weights, watching from epoch ``min_epochs`` (0-based) on.

    With ``state_dir`` (the backup folder) its state is saved after every epoch and the one of
    the epoch a resumed training starts at is loaded (``busi.model.resumable``: also when the
    training was killed between this save and Keras' backup), so a killed training that
    resumes keeps the best epoch it had found and the epochs it had waited. Keras'
    EarlyStopping starts afresh at every ``fit``: a resumed run chose its best epoch among
    the epochs after the resume only, and returned a worse model than the one it had found
    (a smoke U-Net killed after epoch 1, its best: val_score 0.796 kept before, 0.740
    after)."""
    import keras

    from busi.model.resumable import ResumableState

    class ResumableEarlyStopping(ResumableState, keras.callbacks.EarlyStopping):
        def restore_state(self, state, weights):
            self.best, self.best_epoch = state["best"], state["best_epoch"]
            self.wait = state["wait"]
            self.best_weights = weights or None

        def on_epoch_end(self, epoch, logs=None):
            super().on_epoch_end(epoch, logs)
            best = None if self.best is None else float(self.best)
            state = {"best": best, "best_epoch": int(self.best_epoch), "wait": int(self.wait)}
            self.save_state(epoch, state, list(self.best_weights or []))

    callback = ResumableEarlyStopping(
        monitor=cfg.monitor,
        mode="max",
        patience=cfg.patience,
        restore_best_weights=True,
        start_from_epoch=cfg.min_epochs,
    )
    callback.state_dir, callback.state_name = state_dir, EARLY_STOPPING_STATE
    return callback


def backup_and_restore(backup_dir: Path):
    """Keras' BackupAndRestore (model, optimizer and epoch after every epoch; a rerun resumes
    from the last completed epoch) with each file written whole or not at all. Keras writes
    ``latest.weights.h5`` in place: a training killed while writing it left a truncated file
    that the rerun could not read (h5py: "addr overflow"), so it crashed instead of resuming.
    Here the weights and the epoch go to partial files first, then replace the backup's."""
    import os

    import keras

    class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
        def _save_model(self):
            Path(self.backup_dir).mkdir(parents=True, exist_ok=True)
            partial = Path(self.backup_dir) / "partial.weights.h5"
            self.model.save_weights(filepath=str(partial), overwrite=True)
            metadata = Path(f"{self._training_metadata_path}.partial")
            metadata.write_text(
                json.dumps({"epoch": self._current_epoch, "batch": self._last_batch_seen})
            )
            os.replace(partial, self._weights_path)
            os.replace(metadata, self._training_metadata_path)

    return AtomicBackupAndRestore(str(backup_dir), save_freq="epoch")


def fit_unet(
    train_ds,
    val_ds,
    image_size: int,
    cfg: UnetConfig,
    backup_dir: Path,
    history_csv: Path,
    val_arrays,
    roi,
    extra_callbacks=(),
    fingerprint: str = "",
):
    """Train (or resume) a U-Net. ``val_arrays`` (``split_arrays`` of the validation split)
    are scored each epoch with the chain settings ``roi``. Returns the model with the
    weights of the best epoch by ``cfg.monitor``."""
    import keras
    import tensorflow as tf

    from busi.model.weight_average import weight_average_callback

    keras.utils.set_random_seed(cfg.seed)
    # Same data, params and code give the same model (on the same machine), which makes a
    # past run reproducible and a model comparison fair.
    tf.config.experimental.enable_op_determinism()
    model = compile_unet(
        build_unet(
            image_size, cfg.arch, cfg.batchnorm_momentum, cfg.input_norm, cfg.encoder_weights
        ),
        cfg.learning_rate,
        cfg.presence_weight,
        presence_pixels(roi.min_area, image_size),
    )
    resuming = _claim_backup(Path(backup_dir), fingerprint)
    callbacks = [
        chain_validation(
            val_arrays, roi, cfg.false_lesion_weight, cfg.batch_size, cfg.monitor_flip
        ),
        early_stopping(cfg, Path(backup_dir)),
        keras.callbacks.CSVLogger(str(history_csv), append=resuming),
        *extra_callbacks,
    ]
    if cfg.weight_average:
        # After everything that scores or keeps the epoch's model (they see the average);
        # it puts the raw weights back, and saves the average, before the backup.
        callbacks.append(weight_average_callback(cfg.weight_average, Path(backup_dir)))
    # Saves model, optimizer and epoch after every epoch; on a rerun, training resumes from
    # the last completed epoch. Deleted once training ends normally. Last, so an epoch is
    # marked done only once early stopping (and the average) have saved what they made of it.
    callbacks.append(backup_and_restore(Path(backup_dir)))
    if cfg.lr_schedule != "constant":
        # Set at each epoch's start from the epoch number alone, so a resumed run gets the
        # same rates as an uninterrupted one.
        callbacks.insert(
            0, keras.callbacks.LearningRateScheduler(lambda e: epoch_learning_rate(e, cfg))
        )
    model.fit(train_ds, validation_data=val_ds, epochs=cfg.epochs, callbacks=callbacks, verbose=2)
    shutil.rmtree(backup_dir, ignore_errors=True)  # finished: nothing left to resume
    return model


# The chain settings (params.yaml: crop_rois) that decide what a predicted lesion is.
CHAIN_KEYS = ("threshold", "min_area", "keep")


def chain_config(params_path: Path):
    """The crop_rois settings that turn a probability map into a lesion, as the chain and
    evaluate_models apply them (dvc.yaml lists these keys as train_unet params)."""
    import yaml

    from busi.model.masks import LesionRule

    section = (yaml.safe_load(Path(params_path).read_text()) or {}).get("crop_rois") or {}
    return LesionRule(**{k: section[k] for k in CHAIN_KEYS if k in section})


def encoder_weights_record(cfg: UnetConfig) -> dict:
    """What a run logs of ``cfg.encoder_weights`` beside the setting, for its lineage: a
    weights file's SHA-256 (``encoder_weights_sha256``), which also makes a backup trained
    from other weights unresumable; nothing for none or imagenet."""
    return {f"encoder_{k}": v for k, v in weights_digest(cfg.encoder_weights).items()}


def training_fingerprint(params: dict, train_records: Path) -> str:
    """What a resumable backup must match: the training params and the training data."""
    digest = hashlib.md5(train_records.read_bytes()).hexdigest()
    return json.dumps({"params": params, "train_md5": digest}, sort_keys=True)
