"""Safe decoding of BUSI images and masks, grayscale conversion, and perceptual hashing.

Every loader here reads the header first and refuses oversized images before any pixel is
decoded (decompression-bomb guard), and returns what it converted so callers can report it.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy.fft import dctn

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
# The shortest side an image needs to be used: validate-data's default ``min_side``, and the
# limit serving applies (the models learned nothing from thumbnails).
MIN_SIDE = 64

# Modes we can turn into 8-bit grayscale without guessing, and what the conversion does.
CONVERTIBLE_MODES = {
    "L": None,
    "RGB": "RGB->L (luma)",
    "RGBA": "RGBA->L (alpha dropped)",
    "LA": "LA->L (alpha dropped)",
    "P": "P->L (palette expanded)",
    "PA": "PA->L (palette expanded, alpha dropped)",
    "1": "1->L (bilevel)",
    "I;16": "I;16->L (16-bit scaled to 8-bit)",
    "I;16B": "I;16B->L (16-bit scaled to 8-bit)",
    "I": "I->L (16-bit scaled to 8-bit)",
}


# What PIL raises on bytes it cannot decode (truncated, corrupt, unsupported).
_PIL_DECODE_ERRORS = (
    UnidentifiedImageError,
    OSError,
    SyntaxError,
    ValueError,
    Image.DecompressionBombError,
)


class ImageDecodeError(ValueError):
    """The bytes are not an image we can use; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray  # 2-D uint8, grayscale
    mode: str  # the mode as stored in the file
    fmt: str  # the container format PIL detected (PNG, JPEG, ...)
    conversion: str | None  # what was done to reach 8-bit grayscale, None if nothing


def sniff_format(data: bytes) -> str:
    """The container format from the first bytes, not from the file name."""
    if data.startswith(PNG_SIGNATURE):
        return "PNG"
    if data.startswith(JPEG_SIGNATURE):
        return "JPEG"
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<svg")):
        return "HTML/XML"
    return "unknown"


def _to_gray(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.int64)
        # 16-bit data: keep the top byte, the usual 16->8 bit mapping.
        return np.clip(arr >> 8, 0, 255).astype(np.uint8)
    if mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGB" if mode != "LA" else "L")
    if img.mode != "L":
        img = img.convert("L")
    return np.asarray(img, dtype=np.uint8)


def decode_image(
    data: bytes,
    *,
    max_pixels: int,
    allowed_formats: tuple[str, ...] = ("PNG", "JPEG"),
) -> DecodedImage:
    """Decode image bytes to 8-bit grayscale, or raise ImageDecodeError saying why not."""
    if len(data) == 0:
        raise ImageDecodeError("empty_file", "the file has zero bytes")
    sniffed = sniff_format(data)
    if sniffed == "HTML/XML":
        raise ImageDecodeError("not_an_image", "the file holds HTML/XML text, not an image")
    if sniffed not in allowed_formats:
        raise ImageDecodeError(
            "unsupported_format",
            f"content is {sniffed}, expected one of {', '.join(allowed_formats)}",
        )
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise ImageDecodeError(
                    "too_large",
                    f"{width}x{height} = {width * height} pixels exceeds the limit of "
                    f"{max_pixels} (decompression-bomb guard)",
                )
            if img.mode not in CONVERTIBLE_MODES:
                raise ImageDecodeError("unsupported_mode", f"image mode {img.mode!r}")
            mode, fmt = img.mode, img.format or sniffed
            # Decoding below is bounded by the size check above, so PIL's own bomb limit
            # (which warns at a fixed size) is not the guard we rely on.
            img.load()
            pixels = _to_gray(img)
    except ImageDecodeError:
        raise
    except _PIL_DECODE_ERRORS as exc:
        raise ImageDecodeError("decode_error", f"{type(exc).__name__}: {exc}") from exc
    return DecodedImage(pixels=pixels, mode=mode, fmt=fmt, conversion=CONVERTIBLE_MODES[mode])


def too_small(width: int, height: int, min_side: int) -> str | None:
    """The ``too_small`` rule of validate-data and serving: why an image of this size is too
    small to use, or None when it is not."""
    if min(width, height) >= min_side:
        return None
    return f"{width}x{height} is below {min_side} px"


def mask_to_binary(pixels: np.ndarray) -> tuple[np.ndarray, bool]:
    """A boolean lesion mask (any non-zero pixel) and whether the mask was strictly two-valued."""
    values = np.unique(pixels)
    binary = len(values) <= 2 and (len(values) < 2 or values[0] == 0)
    return pixels > 0, bool(binary)


def decode_mask(data: bytes, *, max_pixels: int) -> tuple[np.ndarray, bool, str]:
    """A boolean mask, whether it was two-valued, and its stored mode.

    Colour masks are reduced with a max over channels (alpha ignored), so a red or white
    lesion on black counts as lesion, as the dataset README asks ("any non-zero pixel").
    """
    if len(data) == 0:
        raise ImageDecodeError("empty_file", "the mask file has zero bytes")
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise ImageDecodeError("too_large", f"mask {width}x{height} exceeds the limit")
            mode = img.mode
            img.load()
            if mode in ("RGBA", "LA", "PA", "P"):
                img = img.convert("RGB")
            arr = np.asarray(img)
    except ImageDecodeError:
        raise
    except _PIL_DECODE_ERRORS as exc:
        raise ImageDecodeError("decode_error", f"{type(exc).__name__}: {exc}") from exc
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    mask, binary = mask_to_binary(arr)
    return mask, binary, mode


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def perceptual_hash(pixels: np.ndarray, hash_size: int = 8, highfreq_factor: int = 4) -> int:
    """pHash: sign of the low-frequency DCT coefficients against their median, as a 64-bit int."""
    side = hash_size * highfreq_factor
    small = Image.fromarray(pixels).resize((side, side), Image.Resampling.LANCZOS)
    coeffs = dctn(np.asarray(small, dtype=np.float64), norm="ortho")[:hash_size, :hash_size]
    bits = (coeffs > np.median(coeffs)).flatten()
    return int(sum(1 << i for i, bit in enumerate(bits) if bit))


def hamming_matrix(hashes: list[int]) -> np.ndarray:
    """Pairwise Hamming distances between 64-bit hashes (n x n, uint8)."""
    arr = np.array(hashes, dtype=np.uint64)
    xor = arr[:, None] ^ arr[None, :]
    as_bytes = xor.view(np.uint8).reshape(len(hashes), len(hashes), 8)
    return np.unpackbits(as_bytes, axis=2).sum(axis=2).astype(np.uint8)


def read_bytes(path: Path) -> bytes:
    return Path(path).read_bytes()
