"""train_classifier: classify the regions of interest as benign, malignant or normal.

Backbones: ``small_cnn`` (default, trains in minutes on 2 CPU cores), and ``resnet50``,
``resnet101`` (the original work's choice) and ``densenet121`` from keras.applications,
with ``weights: none | imagenet | <a weights file>``. ImageNet weights are downloaded
by Keras on first use, which needs internet access; the default (``none``) works offline;
a file copied from a machine with internet works offline too (``busi.model.imagenet``).
The run records which weights were used (a file by its SHA-256). The input is the crop
plus a second channel, the predicted mask or the U-Net's probability over the crop
(``crop_rois.mask_channel``; for the ImageNet backbones: crop, crop, channel as RGB);
with ``crop_rois.context: image`` the whole image and its probability map follow
(small_cnn only). No image is dropped for class imbalance: ``class_weight: balanced``
weighs each class as much as the others, ``none`` (the project's default since
chain_seeds_val_cwnone.md) weighs each crop 1.

With ``unet_encoder: true`` the trained U-Net's encoder (``--unet``), weights and all, reads
the crop (and the whole image) beside the small CNN: the classifier starts from what the
U-Net learnt of lesions rather than from random weights alone.

With ``members`` > 1 it trains a small ensemble: that many classifiers from different seeds,
saved as one model that averages their class probabilities.

Core: ``build_classifier``, ``unet_encoder``, ``class_weights``, ``weight_average_callback``,
``ensemble_classifier`` and ``fit_classifier``. Shell: ``main``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from busi.config import load_section
from busi.data.preprocess import CLASSES
from busi.errors import BusiError
from busi.model.imagenet import (
    build_network,
    imagenet_preprocess,
    set_batchnorm_momentum,
    weights_digest,
    weights_problem,
)
from busi.model.weight_average import weight_average_callback

logger = logging.getLogger(__name__)

BACKBONES = ("small_cnn", "resnet50", "resnet101", "densenet121")
# Member k of an ensemble trains from train_classifier.seed + MEMBER_SEED_STEP * k (the step
# bench_chain_seeds' --seed-offset train_classifier=100 used for a reseed).
MEMBER_SEED_STEP = 100
INPUT_NORMS = ("none", "image")
# The windows of context_crop: stress_test_models' crop (40-70 % of the image) and portrait
# crop (height/width 1.2-1.6) lie inside them, as in augment_data's crop for the U-Net.
CONTEXT_CROP_AREA = (0.4, 1.0)
CONTEXT_CROP_ASPECT = (0.75, 1.6)


# ClassifierConfig's settings that are a number from 0 (off): (name, upper bound, whether the
# bound itself is allowed, what the number means), for the message that refuses a bad value.
_RANGES = (
    (
        "label_smoothing",
        1.0,
        False,
        "the share of each target spread over the classes (0 = off, e.g. 0.1)",
    ),
    (
        "zoom",
        1.0,
        False,
        "the most of a training input's side a random zoom may cut away (0 = off, e.g. 0.25)",
    ),
    (
        "gamma",
        2.0,
        True,
        "the largest log of the random gamma exponent (0 = off, e.g. 0.5 for exponents 0.61-1.65)",
    ),
    (
        "contrast",
        1.0,
        False,
        "the largest change of a training input's contrast around its mean "
        "(0 = off, e.g. 0.4 for factors 0.6-1.4)",
    ),
    (
        "context_crop",
        1.0,
        True,
        "the share of training inputs whose context shows a tighter field of view "
        "(0 = off, e.g. 0.5)",
    ),
    (
        "weight_average",
        1.0,
        False,
        "the momentum of the moving average of the weights (0 = off, e.g. 0.98)",
    ),
)


@dataclass(frozen=True)
class ClassifierConfig:
    backbone: str = "small_cnn"
    weights: str = "none"  # none | imagenet (needs internet on first use) | a weights file
    base_filters: int = 32  # small_cnn only
    dropout: float = 0.3
    epochs: int = 60
    batch_size: int = 32
    learning_rate: float = 1e-3
    patience: int = 12
    batchnorm_momentum: float = 0.9
    class_weight: str = "balanced"  # balanced | none
    seed: int = 0
    # The crop channel as the classifier sees it: none (grey levels / 255) | image (each crop
    # standardised to mean 0 and std 1 by a parameter-free layer inside the model; the
    # U-Net's probability channel is left as it is), so a site's gain and contrast change
    # nothing the classifier sees of the crop.
    input_norm: str = "none"
    # The momentum of an exponential moving average of the weights (all of them, batch-norm
    # statistics included), updated after every training batch; 0 turns it off. With it on,
    # validation, early stopping and the saved model see the averaged weights, while training
    # goes on from the raw ones: the epoch chosen on a noisy val figure is then a smoothed
    # model rather than one batch's luck. 0.98 averages over about 50 batches (3 epochs of
    # BUSI's train crops at batch 32). On val it lost to the plain weights and stays off: the
    # averaged classifier called every val image normal for its first 1-5 epochs (an average
    # of weights that move fast is not a model between them; chain_seeds_val_wavg.md,
    # chain_seeds_val_wavgbc.md).
    weight_average: float = 0.0
    # Random zoom of the training inputs: each is cut to a square of a random share in
    # [1 - zoom, 1] of its side, at a random place, and resized back (crop, context image and
    # probability channels alike), so the classifier sees tighter fields of view and lesions
    # off the crop's centre, as other sites' images bring them. 0 turns it off; 0.25 lost on
    # val in every seed (bench/results/chain_seeds_val_clszoom.md).
    zoom: float = 0.0
    # Other sites' grey levels: each training input's grey channels (the crop; the whole
    # image with context) get, alike, a contrast change around each channel's mean by a
    # factor drawn from [1 - contrast, 1 + contrast], then a gamma, x ** e with log e drawn
    # from [-gamma, gamma] (augment_data's gamma for the U-Net). The probability channels
    # stay as they are. 0 turns each off. The gain and shift every training input gets
    # (0.85-1.15, +-0.08) are linear; these are what stress_test_models' contrast_0.6,
    # gamma_0.6 and gamma_1.6 bring.
    gamma: float = 0.0
    contrast: float = 0.0
    # With crop_rois' context: the share of training inputs whose context channels (the
    # whole image and its probability map) show a tighter field of view, as another site's
    # image brings it: a window of CONTEXT_CROP_AREA of the image, height/width in
    # CONTEXT_CROP_ASPECT (portrait ones too), at a random place, resized back. The crop
    # channels stay as they are (a tighter view of the same image holds the same lesion).
    # 0 turns it off.
    context_crop: float = 0.0
    # Label smoothing: each target moves this share of its weight evenly onto the three
    # classes (1 -> 1 - s + s/3, 0 -> s/3), so the loss stops pushing a training crop's
    # probability to 1 once it is called right. 0 turns it off; 0.1 lost on val
    # (bench/results/chain_seeds_val_clsls.md).
    label_smoothing: float = 0.0
    # A small ensemble: this many classifiers, member k trained like the single one from seed
    # + 100 k (member 0 is the single classifier), saved as one model that averages their
    # class probabilities. 1 = the single classifier. On the same crops a reseed of the
    # single classifier moved val's macro-F1 by 0.034 and "lesion called normal" by 6.8
    # points in the 3-seed mean (bench/results/chain_seeds_val_cwnone_cseed100.md): the
    # average of several draws ships less of one draw's luck. Each member costs one more
    # classifier training (5.5-11.5 min on the slow machine type, measured in
    # bench/results/classifier_ensemble_pool6.md, where 3 members did not beat one on val).
    members: int = 1
    # Start from what the U-Net has learnt: the trained U-Net's encoder (its layers from the
    # image to the bottleneck, with their weights, fine-tuned here) reads the crop's grey
    # channel, and with crop_rois' context the whole image (one encoder, shared), beside the
    # small CNN's stacks; its pooled features join theirs before the last layer. The U-Net
    # was trained on every train image's lesion outline, the classifier sees ~550 crops:
    # its encoder starts from features of lesion and tissue rather than from random weights.
    # small_cnn only; train-classifier then reads the U-Net (--unet). false: off.
    unet_encoder: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.members, bool) or not isinstance(self.members, int) or self.members < 1:
            raise ValueError(
                f"members {self.members!r} must be a whole number >= 1: how many classifiers "
                "the ensemble averages (1 = a single classifier, e.g. 3)"
            )
        for name, high, closed, meaning in _RANGES:
            value = getattr(self, name)
            if not (0.0 <= value <= high if closed else 0.0 <= value < high):
                bounds = f"[0, {high:g}]" if closed else f"[0, {high:g})"
                raise ValueError(f"{name} {value} must be in {bounds}: {meaning}")
        if self.input_norm not in INPUT_NORMS:
            raise ValueError(f"input_norm '{self.input_norm}' unknown; choose one of {INPUT_NORMS}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone '{self.backbone}' unknown; choose one of {BACKBONES}")
        problem = weights_problem(self.weights)
        if problem:
            raise ValueError(f"weights {problem}")
        if self.weights != "none" and self.backbone == "small_cnn":
            raise ValueError("small_cnn has no ImageNet weights; use weights: none")
        if self.class_weight not in ("balanced", "none"):
            raise ValueError("class_weight must be 'balanced' or 'none'")
        if not isinstance(self.unet_encoder, bool):
            raise ValueError(
                f"unet_encoder {self.unet_encoder!r} must be true or false: whether the trained "
                "U-Net's encoder reads the crop beside the small CNN"
            )
        if self.unet_encoder and self.backbone != "small_cnn":
            raise ValueError(
                f"unet_encoder: true adds the U-Net's encoder to the small_cnn backbone, not "
                f"to {self.backbone}: set backbone: small_cnn or unet_encoder: false"
            )


def class_weights(labels: np.ndarray, n_classes: int = len(CLASSES)) -> dict[int, float]:
    """Balanced weights n / (k * n_c): each class contributes equally to the loss."""
    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=n_classes)
    if (counts == 0).any():
        missing = [CLASSES[i] for i in np.flatnonzero(counts == 0)]
        raise BusiError(f"no training example of class {missing}: cannot weight classes")
    return {i: float(len(labels) / (n_classes * c)) for i, c in enumerate(counts)}


def unet_encoder(unet):
    """A copy of ``unet``'s encoder, its weights included (``busi.model.unet.unet_bottleneck``),
    [S,S,1] -> [s,s,F]. The copy's layers are new ones: fine-tuning it leaves ``unet`` as it
    was."""
    import keras

    from busi.model.unet import unet_bottleneck

    encoder = unet_bottleneck(unet)
    if encoder is None:
        raise BusiError(
            f"the model '{unet.name}' has no up-convolution, so no U-Net encoder to start the "
            "classifier from: pass the U-Net that train-unet saved (--unet) or set "
            "train_classifier.unet_encoder: false"
        )
    copy = keras.models.clone_model(encoder)
    copy.set_weights(encoder.get_weights())
    return keras.Model(copy.input, copy.output, name="unet_encoder")


def build_classifier(cfg: ClassifierConfig, input_size: int, channels: int = 2, unet=None):
    """Crop + mask [S,S,2] in, class probabilities [3] out. With ``channels=4`` (crop_rois'
    ``context: image``) the whole image and its probability map follow as channels 3 and 4;
    the small CNN then reads the crop and the context with two convolution stacks of their
    own and classifies from both. With ``cfg.unet_encoder`` the encoder of ``unet`` (the
    trained U-Net) reads the crop's grey channel (and the whole image's), as the U-Net reads
    an image, and its pooled features join the stacks'."""
    import keras
    from keras import layers

    if cfg.unet_encoder and unet is None:
        raise BusiError(
            "train_classifier.unet_encoder: true starts the classifier from the trained U-Net's "
            "encoder, but no U-Net was given: pass --unet models/unet.keras (train-unet's model)"
        )

    if channels not in (2, 4):
        raise ValueError(f"the classifier takes 2 or 4 input channels, not {channels}")
    if channels == 4 and cfg.backbone != "small_cnn":
        raise BusiError(
            f"crop_rois.context: image gives the classifier 4 channels, which only the "
            f"small_cnn backbone reads; {cfg.backbone} takes the crop alone: set "
            "train_classifier.backbone: small_cnn or crop_rois.context: none"
        )
    inputs = keras.Input((input_size, input_size, channels), name="roi")
    roi = inputs
    if cfg.input_norm == "image":
        # Each grey channel (the crop; the whole image) standardised on its own.
        planes = []
        for index in range(channels):
            plane = inputs[..., index : index + 1]
            if index % 2 == 0:
                name = "crop_norm" if index == 0 else "context_norm"
                plane = layers.LayerNormalization(
                    axis=(1, 2, 3), center=False, scale=False, epsilon=1e-4, name=name
                )(plane)
                if cfg.backbone != "small_cnn":
                    # The ImageNet backbones' preprocessing expects grey levels: mean 0.5,
                    # std 0.25.
                    plane = plane * 0.25 + 0.5
            planes.append(plane)
        roi = layers.Concatenate(name="roi_norm")(planes)
    if cfg.backbone == "small_cnn":

        def stack(x, prefix: str = ""):
            for level in range(4):
                for _ in range(2):
                    x = layers.Conv2D(
                        cfg.base_filters * 2**level, 3, padding="same", use_bias=False
                    )(x)
                    x = layers.BatchNormalization(momentum=cfg.batchnorm_momentum)(x)
                    x = layers.Activation("relu")(x)
                x = layers.MaxPooling2D()(x)
            return layers.GlobalAveragePooling2D(name=f"{prefix}pool" if prefix else None)(x)

        if channels == 2:
            x = stack(roi)
        else:
            x = layers.Concatenate(name="crop_and_context")(
                [stack(roi[..., :2]), stack(roi[..., 2:], "context_")]
            )
        if cfg.unet_encoder:
            encoder = unet_encoder(unet)
            side = int(encoder.input_shape[1])
            features = [x]
            # The grey channels as the U-Net reads an image (in [0, 1]; its own normalisation,
            # if any, is inside the encoder), at the U-Net's side.
            for index, name in ((0, "crop"), (2, "context"))[: channels // 2]:
                grey = inputs[..., index : index + 1]
                if side != input_size:
                    grey = layers.Resizing(side, side, name=f"{name}_to_unet_side")(grey)
                features.append(
                    layers.GlobalAveragePooling2D(name=f"{name}_unet_pool")(encoder(grey))
                )
            x = layers.Concatenate(name="with_unet_encoder")(features)
    else:
        crop, mask = roi[..., :1], roi[..., 1:]
        rgb = layers.Concatenate()([crop, crop, mask]) * 255.0
        rgb = imagenet_preprocess(rgb, cfg.backbone)
        backbone = build_network(
            cfg.backbone, cfg.weights, input_size, "train_classifier.weights", pooling="avg"
        )
        set_batchnorm_momentum(backbone, cfg.batchnorm_momentum)
        x = backbone(rgb)
    x = layers.Dropout(cfg.dropout)(x)
    outputs = layers.Dense(len(CLASSES), activation="softmax", name="class")(x)
    return keras.Model(inputs, outputs, name=f"classifier_{cfg.backbone}")


def classification_dataset(x: np.ndarray, y: np.ndarray, cfg: ClassifierConfig, training: bool):
    import tensorflow as tf

    if training and cfg.context_crop and x.shape[-1] != 4:
        raise BusiError(
            f"train_classifier.context_crop {cfg.context_crop} changes the context channels, "
            f"and these inputs have {x.shape[-1]} channels, no context: set crop_rois.context: "
            "image or train_classifier.context_crop: 0"
        )
    ds = tf.data.Dataset.from_tensor_slices((x.astype(np.float32), np.eye(len(CLASSES))[y]))
    if training:
        ds = ds.shuffle(len(x), seed=cfg.seed, reshuffle_each_iteration=True)

        def augment(pair, seed):
            roi, label = pair
            # Stateless ops with a per-element seed keep training deterministic.
            roi = tf.image.stateless_random_flip_left_right(roi, seed)
            gain = tf.random.stateless_uniform((), seed + 1, 0.85, 1.15)
            shift = tf.random.stateless_uniform((), seed + 2, -0.08, 0.08)
            # The grey channels (the crop; the whole image with context) get the same gain
            # and shift; the probability channels stay as they are.
            grey = tf.clip_by_value(roi[..., 0::2] * gain + shift, 0.0, 1.0)
            if cfg.contrast:
                factor = tf.random.stateless_uniform(
                    (), seed + 5, 1.0 - cfg.contrast, 1.0 + cfg.contrast
                )
                mean = tf.reduce_mean(grey, axis=(0, 1), keepdims=True)
                grey = tf.clip_by_value((grey - mean) * factor + mean, 0.0, 1.0)
            if cfg.gamma:
                exponent = tf.exp(tf.random.stateless_uniform((), seed + 6, -cfg.gamma, cfg.gamma))
                grey = tf.pow(grey, exponent)
            planes = tf.stack([grey, roi[..., 1::2]], axis=-1)  # [S, S, k, 2]
            roi = tf.reshape(planes, tf.shape(roi))
            if cfg.zoom:
                size = tf.shape(roi)[0]
                share = tf.random.stateless_uniform((), seed + 3, 1.0 - cfg.zoom, 1.0)
                side = tf.cast(tf.round(share * tf.cast(size, tf.float32)), tf.int32)
                cut = tf.image.stateless_random_crop(
                    roi, tf.stack([side, side, tf.shape(roi)[-1]]), seed + 4
                )
                roi = tf.ensure_shape(tf.image.resize(cut, [size, size]), roi.shape)
            if cfg.context_crop:
                roi = tf.ensure_shape(tighter_context(roi, seed), roi.shape)
            return roi, label

        def tighter_context(roi, seed):
            size = tf.shape(roi)[0]
            side = tf.cast(size, tf.float32)
            area = tf.random.stateless_uniform((), seed + 7, *CONTEXT_CROP_AREA)
            aspect = tf.exp(tf.random.stateless_uniform((), seed + 8, *np.log(CONTEXT_CROP_ASPECT)))
            height = tf.clip_by_value(tf.round(tf.sqrt(area * aspect) * side), 1.0, side)
            width = tf.clip_by_value(tf.round(tf.sqrt(area / aspect) * side), 1.0, side)
            window = tf.stack([tf.cast(height, tf.int32), tf.cast(width, tf.int32), 2])
            cut = tf.image.stateless_random_crop(roi[..., 2:], window, seed + 9)
            tighter = tf.image.resize(cut, [size, size])
            chosen = tf.random.stateless_uniform((), seed + 10) < cfg.context_crop
            context = tf.where(chosen, tighter, roi[..., 2:])
            return tf.concat([roi[..., :2], context], axis=-1)

        seeds = tf.data.Dataset.random(seed=cfg.seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip((ds, seeds)).map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(cfg.batch_size).prefetch(tf.data.AUTOTUNE)


def member_configs(cfg: ClassifierConfig) -> list[ClassifierConfig]:
    """The settings of each member of the ensemble: the same but for the seed, seed + 100 k;
    member 0 is the single classifier that ``members: 1`` trains."""
    return [
        replace(cfg, seed=cfg.seed + MEMBER_SEED_STEP * k, members=1) for k in range(cfg.members)
    ]


def ensemble_classifier(members: list):
    """One model whose class probabilities are the mean of the members' (a single member is
    returned as it is). The members become its layers ``member_0``, ``member_1``, ...; it is
    saved, loaded and served as any classifier."""
    from busi.model.chain import average_models

    return average_models(members, "classifier_ensemble", "roi", "class", "member")


def merge_histories(paths: list[Path], out: Path) -> None:
    """The members' per-epoch CSV histories as one CSV, a ``member`` column first."""
    import pandas as pd

    frames = [pd.read_csv(path).assign(member=k) for k, path in enumerate(paths)]
    merged = pd.concat(frames, ignore_index=True)
    merged = merged[["member", *[c for c in merged.columns if c != "member"]]]
    merged.to_csv(out, index=False)


def fit_classifier(
    x_train,
    y_train,
    x_val,
    y_val,
    cfg: ClassifierConfig,
    history_csv: Path,
    extra_callbacks=(),
    member_callbacks=None,
    unet=None,
):
    """The trained classifier: one model, or with ``members`` > 1 the ensemble of that many
    (``ensemble_classifier``), each member trained on its own with early stopping on val.
    ``extra_callbacks`` go to every member's ``fit``; ``member_callbacks(k)``, if given,
    returns more for member k alone. The history CSV holds every member's epochs (with a
    ``member`` column when there are several). ``unet``: the trained U-Net, whose encoder
    each member starts from with ``cfg.unet_encoder``."""
    if cfg.members == 1:
        more = list(member_callbacks(0)) if member_callbacks else []
        return _fit_member(
            x_train, y_train, x_val, y_val, cfg, history_csv, [*extra_callbacks, *more], unet
        )
    import tempfile

    models, histories = [], []
    with tempfile.TemporaryDirectory(prefix="busi-members-") as tmp:
        for k, member in enumerate(member_configs(cfg)):
            logger.info("training member %d of %d (seed %d)", k + 1, cfg.members, member.seed)
            histories.append(Path(tmp) / f"member_{k}.csv")
            more = list(member_callbacks(k)) if member_callbacks else []
            callbacks = [*extra_callbacks, *more]
            models.append(
                _fit_member(x_train, y_train, x_val, y_val, member, histories[-1], callbacks, unet)
            )
        merge_histories(histories, history_csv)
    return ensemble_classifier(models)


def _fit_member(
    x_train,
    y_train,
    x_val,
    y_val,
    cfg: ClassifierConfig,
    history_csv: Path,
    extra_callbacks=(),
    unet=None,
):
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(cfg.seed)
    # Same data, params and code give the same model (on the same machine), which makes a
    # past run reproducible and a model comparison fair.
    tf.config.experimental.enable_op_determinism()
    model = build_classifier(cfg, int(x_train.shape[1]), int(x_train.shape[-1]), unet)
    model.compile(
        optimizer=keras.optimizers.Adam(cfg.learning_rate),
        # at label_smoothing 0 this trains the same weights as the plain
        # "categorical_crossentropy" of the code before the option (checked to the bit)
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
        metrics=["accuracy", keras.metrics.F1Score(average="macro", name="macro_f1")],
    )
    weights = class_weights(y_train) if cfg.class_weight == "balanced" else None
    callbacks = [
        keras.callbacks.EarlyStopping(
            monitor="val_macro_f1", mode="max", patience=cfg.patience, restore_best_weights=True
        ),
        keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=0.5, patience=max(2, cfg.patience // 3)
        ),
        keras.callbacks.CSVLogger(str(history_csv)),
        *extra_callbacks,
    ]
    if cfg.weight_average:
        # last, so that EarlyStopping's on_epoch_end still sees the averaged weights
        callbacks.append(weight_average_callback(cfg.weight_average))
    model.fit(
        classification_dataset(x_train, y_train, cfg, training=True),
        validation_data=classification_dataset(x_val, y_val, cfg, training=False),
        epochs=cfg.epochs,
        class_weight=weights,
        callbacks=callbacks,
        verbose=2,
    )
    return model


def load_rois(path: Path):
    from busi.model.chain import classifier_input

    if not path.is_file():
        raise BusiError(f"{path} not found: run `busi crop-rois` first")
    data = np.load(path)
    if "channel" not in data:
        raise BusiError(f"{path} was written by an older crop-rois: run `busi crop-rois` again")
    context = (data["context_image"], data["context_prob"]) if "context_image" in data else None
    return classifier_input(data["crops"], data["channel"], context), data["labels"]


def main(argv: list[str] | None = None) -> int:
    from busi.cli import parser_for

    parser = parser_for("train-classifier", "--rois", "--unet", "--params")
    parser.add_argument(
        "--model",
        type=Path,
        default=Path("models/classifier.keras"),
        help="where to save the trained classifier (default: %(default)s)",
    )
    parser.add_argument(
        "--history",
        type=Path,
        default=Path("plots/train_classifier.csv"),
        help="where to write the per-epoch history (CSV) (default: %(default)s)",
    )
    parser.add_argument(
        "--metrics",
        type=Path,
        default=Path("metrics/train_classifier.json"),
        help="where to write the step's figures (JSON) (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    cfg = load_section(args.params, "train_classifier", ClassifierConfig)
    x_train, y_train = load_rois(args.rois / "train.npz")
    x_val, y_val = load_rois(args.rois / "val.npz")
    unet = None
    if cfg.unet_encoder:
        from busi.model.unet import load_unet

        if not args.unet.is_file():
            raise BusiError(
                f"{args.unet} not found: train_classifier.unet_encoder: true starts from the "
                "trained U-Net's encoder; run `busi train-unet` first or pass --unet"
            )
        unet = load_unet(args.unet)
    from busi import tracking

    for path in (args.model, args.history, args.metrics):
        path.parent.mkdir(parents=True, exist_ok=True)
    params = asdict(cfg) | weights_digest(cfg.weights)
    with tracking.step_run("train_classifier", params) as run:
        model = fit_classifier(
            x_train,
            y_train,
            x_val,
            y_val,
            cfg,
            args.history,
            member_callbacks=(
                (lambda k: [tracking.epoch_logger(f"member_{k}/" if cfg.members > 1 else "")])
                if run
                else None
            ),
            unet=unet,
        )
        model.save(args.model)
        from busi.model.chain import predict_proba
        from busi.model.metrics import classification_metrics

        proba = predict_proba(model, x_val)

        val = classification_metrics(y_val, proba, list(CLASSES))
        summary = {
            "val_accuracy": float(val["accuracy"]),
            "val_macro_f1": float(val["macro_f1"]),
            "weights": cfg.weights,
            "params": int(model.count_params()),
            "members": cfg.members,
            "class_weights": class_weights(y_train) if cfg.class_weight == "balanced" else None,
        }
        args.metrics.write_text(json.dumps(summary, indent=2) + "\n")
        tracking.log_step_outputs(
            {k: v for k, v in summary.items() if k not in ("class_weights", "members")},
            artifacts=[args.history],
            model=model,
            model_name="classifier",
            example=x_val[:1],
        )
    print(
        f"classifier {cfg.backbone} (weights {cfg.weights}): val accuracy "
        f"{summary['val_accuracy']:.3f}, macro-F1 {summary['val_macro_f1']:.3f}"
    )
    return 0
