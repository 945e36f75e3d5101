"""The two-stage model ``busi-pipeline`` as an MLflow pyfunc: image in; lesion mask, ROI box,
class and class probabilities out. It wraps the trained U-Net and classifier with the crop
settings the classifier was trained with, and runs ``chain.predict_chain``: the same code
path as ``evaluate_models``, so serving and evaluation cannot drift apart.

Input: a pandas DataFrame with a column ``image`` holding PNG or JPEG bytes (or the same
bytes base64-encoded as text, which is what JSON clients send). Output: one row per image
with ``class``, ``prob_benign``, ``prob_malignant``, ``prob_normal``, ``lesion_found``,
``lesion_area`` (share of the image), ``box`` ([top, left, bottom, right], bottom/right
exclusive, in the image's pixels), ``mask_png`` (the lesion mask as a base64 PNG at the
image's size), ``height`` and ``width``.

A file it cannot use (empty, truncated, not PNG/JPEG, too many pixels, unsupported mode)
raises ``InvalidImageError`` naming the row and the reason.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import asdict
from pathlib import Path

import mlflow.pyfunc
import numpy as np

from busi.data.preprocess import CLASSES

# The layout of the logged pyfunc; part of register_model's fingerprint.
# 2: the LiteRT copies of both models (artifacts unet_lite, classifier_lite).
PACKAGE_FORMAT = "2"
# Uploads larger than this many pixels are refused before decoding (decompression bombs).
MAX_PIXELS = 25_000_000
OUTPUT_COLUMNS = (
    "class",
    *(f"prob_{c}" for c in CLASSES),
    "lesion_found",
    "lesion_area",
    "box",
    "mask_png",
    "height",
    "width",
)


class InvalidImageError(ValueError):
    """An input the model cannot use; the message says which and why."""


def image_bytes(value) -> bytes:
    """Raw bytes from an ``image`` cell: bytes as they are, text as base64."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidImageError("a text image must be the file's bytes base64-encoded") from exc
    raise InvalidImageError(
        f"an image must be PNG/JPEG bytes or base64 text, not {type(value).__name__}"
    )


def decode_upload(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Grayscale uint8 pixels of a PNG/JPEG upload (type from the content, not the name).
    Images below validate-data's default ``min_side`` are refused by its ``too_small`` rule:
    no such image was ever trained on."""
    from busi.data.imaging import MIN_SIDE, ImageDecodeError, decode_image, too_small

    try:
        pixels = decode_image(data, max_pixels=max_pixels).pixels
    except ImageDecodeError as exc:
        raise InvalidImageError(f"{exc.reason}: {exc.detail}") from exc
    if why := too_small(pixels.shape[1], pixels.shape[0], MIN_SIDE):
        raise InvalidImageError(f"too_small: {why}; send the full-size scan")
    return pixels


def mask_to_png(mask: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    # Level 1: measured on a 683x916 mask, 2.5 ms instead of 4.9 ms at the default level, for
    # 5 KB instead of 2.5 KB.
    Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255).save(
        buf, format="PNG", compress_level=1
    )
    return base64.b64encode(buf.getvalue()).decode("ascii")


def rows_from_chain(images: list[np.ndarray], chain) -> list[dict]:
    """The output rows for images and their ``ChainResult``."""
    rows = []
    for image, mask, box, proba in zip(images, chain.masks, chain.boxes, chain.proba, strict=True):
        rows.append(
            {
                "class": CLASSES[int(np.argmax(proba))],
                **{f"prob_{c}": float(p) for c, p in zip(CLASSES, proba, strict=True)},
                "lesion_found": bool(mask.any()),
                "lesion_area": float(mask.mean()),
                "box": [int(v) for v in box],
                "mask_png": mask_to_png(mask),
                "height": int(image.shape[0]),
                "width": int(image.shape[1]),
            }
        )
    return rows


class DirectPredict:
    """A Keras model whose ``predict`` runs ``predict_on_batch`` on chunks of the input: the
    same computation without Keras' per-call set-up of ``predict`` (about 100 ms a call on
    2 CPU cores, three calls an image), which dominates single-image serving."""

    def __init__(self, model, batch_size: int = 32):
        self.model = model
        self.batch_size = batch_size

    @property
    def input_shape(self):
        return self.model.input_shape

    def predict(self, x, batch_size: int | None = None, verbose: int = 0):
        size = batch_size or self.batch_size
        # Chunks of at most ``size`` through predict_on_batch: Keras' predict would retrace
        # its function for each new batch shape, several times slower for a 40-image call.
        chunks = [x[i : i + size] for i in range(0, len(x), size)] or [x]
        return np.concatenate([np.asarray(self.model.predict_on_batch(c)) for c in chunks])


class BusiPipeline(mlflow.pyfunc.PythonModel):
    """The pyfunc: loads the models and the crop settings from its artifacts.

    Runtime: the LiteRT copies of the models (``busi/model/lite_runtime.py``, checked against
    the Keras models when the pyfunc was logged) unless the model config or the environment
    says ``runtime: keras`` (``mlflow.pyfunc.load_model(uri, model_config={"runtime":
    "keras"})`` or ``BUSI_SERVING_RUNTIME=keras``). Versions logged before the LiteRT copies
    existed run on Keras."""

    def load_context(self, context):
        from busi.model.chain import CropConfig

        runtime = serving_runtime(context.model_config, context.artifacts)
        if runtime == "lite":
            from busi.model.lite_runtime import LiteModel

            self.unet = LiteModel(Path(context.artifacts["unet_lite"]).read_bytes())
            self.classifier = LiteModel(Path(context.artifacts["classifier_lite"]).read_bytes())
        else:
            import keras

            from busi.model.unet import load_unet

            self.unet = DirectPredict(load_unet(context.artifacts["unet"]))
            self.classifier = DirectPredict(
                keras.models.load_model(context.artifacts["classifier"])
            )
        self.runtime = runtime
        self.crop = CropConfig(**json.loads(Path(context.artifacts["chain"]).read_text()))

    def predict(self, context, model_input, params=None):
        return predict_frame(self.unet, self.classifier, self.crop, model_input)


RUNTIMES = ("lite", "keras")


def serving_runtime(model_config: dict | None, artifacts: dict) -> str:
    """Which runtime a loaded pyfunc uses: the model config's ``runtime`` (logged as
    ``auto``), else ``BUSI_SERVING_RUNTIME``, else LiteRT when the version has the compiled
    models."""
    import os

    has_lite = "unet_lite" in artifacts and "classifier_lite" in artifacts
    wanted = (model_config or {}).get("runtime")
    if wanted in (None, "auto"):
        wanted = os.environ.get("BUSI_SERVING_RUNTIME") or None
    if wanted is None:
        return "lite" if has_lite else "keras"
    if wanted not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {wanted!r}")
    if wanted == "lite" and not has_lite:
        raise ValueError(
            "this model version has no LiteRT copies (logged before they existed); "
            "use runtime 'keras' or register the models again"
        )
    return wanted


def predict_frame(unet, classifier, crop, model_input):
    """The pyfunc's predict: a DataFrame (or list/dict) of images in, a DataFrame out."""
    import pandas as pd

    from busi.model.chain import predict_chain

    if isinstance(model_input, pd.DataFrame):
        if "image" not in model_input.columns:
            raise InvalidImageError(
                f"the input needs a column 'image'; it has {list(model_input.columns)}"
            )
        cells = list(model_input["image"])
    elif isinstance(model_input, dict) and "image" in model_input:
        cells = list(np.atleast_1d(model_input["image"]))
    elif isinstance(model_input, list | tuple):
        cells = list(model_input)
    else:
        raise InvalidImageError(
            "the input must be a DataFrame with a column 'image' (PNG/JPEG bytes or base64)"
        )
    if not cells:
        return pd.DataFrame(columns=list(OUTPUT_COLUMNS))
    images = []
    for row, cell in enumerate(cells):
        try:
            images.append(decode_upload(image_bytes(cell)))
        except InvalidImageError as exc:
            raise InvalidImageError(f"image {row}: {exc}") from exc
    chain = predict_chain(images, unet, classifier, crop.roi, crop.tta_flip)
    return pd.DataFrame(rows_from_chain(images, chain), columns=list(OUTPUT_COLUMNS))


def signature():
    """Input: a column ``image`` of bytes (base64 text in JSON requests)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec("binary", "image")]))


def _version(distribution: str) -> str:
    from importlib.metadata import version

    return version(distribution)


def log_pipeline_model(
    unet_path: Path,
    classifier_path: Path,
    crop_config,
    keras_models: tuple,
    name: str = "busi-pipeline",
    registered_model_name: str | None = None,
):
    """Log (and optionally register) the pyfunc on the active run; returns ModelInfo.
    ``keras_models`` are the U-Net and classifier already loaded from the two paths: their
    LiteRT copies are compiled and checked from them."""
    import tempfile

    import keras
    import tensorflow as tf

    from busi.model.lite_runtime import compile_checked
    from busi.tracking import PROJECT_ROOT

    with tempfile.TemporaryDirectory() as tmp:
        chain = Path(tmp) / "chain.json"
        chain.write_text(json.dumps(asdict(crop_config), indent=2))
        artifacts = {
            "unet": str(unet_path),
            "classifier": str(classifier_path),
            "chain": str(chain),
        }
        # The serving copies, each checked against its Keras model before anything is logged.
        for key, model in zip(("unet", "classifier"), keras_models, strict=True):
            content, _gap = compile_checked(model)
            lite = Path(tmp) / f"{key}.tflite"
            lite.write_bytes(content)
            artifacts[f"{key}_lite"] = str(lite)
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=BusiPipeline(),
            artifacts=artifacts,
            # Logged so that load_model(..., model_config={"runtime": "keras"}) may override it.
            model_config={"runtime": "auto"},
            code_paths=[str(PROJECT_ROOT / "busi")],
            signature=signature(),
            pip_requirements=[
                f"keras=={keras.__version__}",
                f"tensorflow-cpu=={tf.__version__}",
                f"mlflow=={mlflow.__version__}",
                "pandas",
                "pillow",
                "scipy",
                f"ai-edge-litert=={_version('ai-edge-litert')}",
            ],
            registered_model_name=registered_model_name,
        )
