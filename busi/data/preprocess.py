"""The one preprocessing path shared by training, evaluation and serving: grayscale uint8 in,
model input out, plus loading an image and its combined mask from the dataset folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from busi.data.imaging import decode_image, decode_mask

# The labels, in the order of the classifier's outputs.
CLASSES = ("benign", "malignant", "normal")

# The guard used when reading dataset files that validate-data has already accepted.
MAX_PIXELS = 25_000_000


def resize_gray(pixels: np.ndarray, size: int) -> np.ndarray:
    """A uint8 grayscale image resized to size x size (bilinear, with antialiasing)."""
    img = Image.fromarray(np.asarray(pixels, dtype=np.uint8))
    return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """A boolean mask resized to size x size; a pixel is lesion if most of its area was."""
    img = Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255)
    return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR)) >= 128


def resize_prob(prob: np.ndarray, height: int, width: int) -> np.ndarray:
    """A float probability map resized to height x width (bilinear)."""
    img = Image.fromarray(np.asarray(prob, dtype=np.float32), mode="F")
    return np.asarray(img.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)


def to_model_input(resized: np.ndarray) -> np.ndarray:
    """uint8 [..., H, W] -> float32 [..., H, W, 1] in [0, 1]."""
    return (np.asarray(resized, dtype=np.float32) / 255.0)[..., None]


def prepare_image(pixels: np.ndarray, size: int) -> np.ndarray:
    """Grayscale uint8 of any size -> the segmenter's input, float32 [size, size, 1]."""
    return to_model_input(resize_gray(pixels, size))


def load_pair(
    data_dir: Path, path: str, mask_files: str | float | None
) -> tuple[np.ndarray, np.ndarray]:
    """An accepted image as uint8 grayscale and its masks combined with OR (empty if none)."""
    folder = Path(data_dir) / Path(path).parent
    pixels = decode_image((Path(data_dir) / path).read_bytes(), max_pixels=MAX_PIXELS).pixels
    combined = np.zeros(pixels.shape, dtype=bool)
    names = [m for m in mask_files.split(";") if m] if isinstance(mask_files, str) else []
    for name in names:
        mask, _binary, _mode = decode_mask((folder / name).read_bytes(), max_pixels=MAX_PIXELS)
        combined |= mask
    return pixels, combined
