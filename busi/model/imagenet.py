"""ImageNet networks from keras.applications, as the classifier's backbone and the U-Net's
encoder share them: their input preprocessing, and their construction with the weights
asked for.

The preprocessing is built from built-in layers (what ``preprocess_input`` does to RGB grey
levels of 0-255): a Lambda around that function would not load without the module that
defined it.

Weights: ``none`` (random initialisation, the offline default), ``imagenet`` (downloaded by
Keras on first use into ``~/.keras/models``: needs internet once) or the path of a weights
file (Keras' downloaded ``.h5`` copied from a machine that has internet, or a
``.weights.h5`` saved by ``Model.save_weights``), so a machine without internet can use them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from busi.errors import BusiError

IMAGENET_MEAN_BGR = (103.939, 116.779, 123.68)  # "caffe" mode (resnet): BGR, mean removed
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)  # "torch" mode (densenet): 0-1, standardised
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)

# Each network's keras.applications constructor and its preprocess_input mode.
NETWORKS = {
    "resnet50": ("ResNet50", "caffe"),
    "resnet101": ("ResNet101", "caffe"),
    "densenet121": ("DenseNet121", "torch"),
    "mobilenet_v2": ("MobileNetV2", "tf"),
}

WEIGHT_CHOICES = ("none", "imagenet")


def imagenet_preprocess(rgb, network: str):
    """The ImageNet preprocessing of ``network`` on a symbolic RGB tensor of 0-255."""
    from keras import layers

    mode = NETWORKS[network][1]
    if mode == "caffe":
        offset = [-m for m in IMAGENET_MEAN_BGR]
        return layers.Rescaling(1.0, offset=offset, name="imagenet_preprocess")(rgb[..., ::-1])
    if mode == "torch":
        scale = [1.0 / (255.0 * s) for s in IMAGENET_STD_RGB]
        offset = [-m / s for m, s in zip(IMAGENET_MEAN_RGB, IMAGENET_STD_RGB, strict=True)]
        return layers.Rescaling(scale, offset=offset, name="imagenet_preprocess")(rgb)
    return layers.Rescaling(1.0 / 127.5, offset=-1.0, name="imagenet_preprocess")(rgb)


def weights_problem(weights: str) -> str | None:
    """Why ``weights`` is not a usable setting (None when it is): none, imagenet, or the path
    of an existing weights file."""
    if weights in WEIGHT_CHOICES:
        return None
    path = Path(weights)
    if not path.is_file():
        return (
            f"'{weights}' is neither none, imagenet nor an existing weights file: give none "
            "(offline), imagenet (downloaded once) or the path of the network's weights file"
        )
    if not path.name.endswith(".h5"):
        return f"'{weights}' is not a Keras weights file (.h5 or .weights.h5)"
    return None


def weights_digest(weights: str) -> dict:
    """What a run records of a weights file, for its lineage (DVC does not track a file
    outside the project): its SHA-256; nothing for none or imagenet."""
    if weights in WEIGHT_CHOICES:
        return {}
    return {"weights_sha256": hashlib.sha256(Path(weights).read_bytes()).hexdigest()}


def build_network(network: str, weights: str, input_size: int, setting: str, **kwargs):
    """``network`` from keras.applications without its top, on RGB inputs of
    ``input_size``, with ``weights`` (none, imagenet or a file); a clear error, naming the
    params.yaml ``setting`` that chose them, when the weights cannot be had."""
    import keras

    constructor = getattr(keras.applications, NETWORKS[network][0])
    try:
        return constructor(
            include_top=False,
            weights=None if weights == "none" else weights,
            input_shape=(input_size, input_size, 3),
            **kwargs,
        )
    except Exception as exc:
        if weights == "none":
            raise
        if weights == "imagenet":
            raise BusiError(
                f"the ImageNet weights of {network} could not be loaded ({exc}). Keras "
                "downloads them on first use into ~/.keras/models; without internet access "
                f"copy the file there by hand or give its path as {setting}, or set "
                f"{setting}: none"
            ) from exc
        raise BusiError(
            f"the weights file {weights} ({setting}) does not fit {network} without its "
            f"top ({exc}): give the no-top weights of that network"
        ) from exc


def set_batchnorm_momentum(model, momentum: float) -> None:
    """Set every batch-normalisation layer of ``model`` (a keras.applications network) to
    ``momentum``: Keras' default 0.99 is unstable with ~100 steps an epoch or fewer."""
    import keras

    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum
