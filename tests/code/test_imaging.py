"""Decoding guards, grayscale conversion, mask reading and perceptual hashing."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from busi.data.imaging import (
    ImageDecodeError,
    decode_image,
    decode_mask,
    hamming_matrix,
    perceptual_hash,
)
from busi.data.synthetic import synth_pair

LIMIT = 10_000_000


def _encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture
def gray() -> np.ndarray:
    img, _ = synth_pair(np.random.default_rng(0), "benign", 80, 96)
    return img


def test_rgb_and_gray_decode_to_the_same_pixels(gray):
    from_l = decode_image(_encode(Image.fromarray(gray)), max_pixels=LIMIT)
    from_rgb = decode_image(_encode(Image.fromarray(np.dstack([gray] * 3))), max_pixels=LIMIT)
    assert from_l.conversion is None
    assert from_rgb.conversion.startswith("RGB")
    np.testing.assert_array_equal(from_l.pixels, from_rgb.pixels)
    np.testing.assert_array_equal(from_l.pixels, gray)


@pytest.mark.parametrize(
    ("make", "mode"),
    [
        (lambda g: Image.fromarray(g.astype(np.uint16) * 257), "I;16"),
        (lambda g: Image.fromarray(g).convert("P"), "P"),
        (lambda g: Image.fromarray(np.dstack([g, g, g, np.full_like(g, 255)])), "RGBA"),
        (lambda g: Image.fromarray(np.dstack([g, np.full_like(g, 255)]), mode="LA"), "LA"),
    ],
)
def test_other_modes_are_converted_and_say_so(gray, make, mode):
    decoded = decode_image(_encode(make(gray)), max_pixels=LIMIT)
    assert decoded.mode == mode
    assert decoded.conversion
    assert decoded.pixels.dtype == np.uint8
    assert decoded.pixels.shape == gray.shape
    assert np.abs(decoded.pixels.astype(int) - gray).max() <= 2  # palette quantises a little


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty_file"),
        (b"<html><body>404</body></html>", "not_an_image"),
        (b"just some text", "unsupported_format"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "decode_error"),
    ],
)
def test_unusable_bytes_are_rejected_with_a_reason(data, reason):
    with pytest.raises(ImageDecodeError) as err:
        decode_image(data, max_pixels=LIMIT)
    assert err.value.reason == reason


def test_truncated_png_is_rejected(gray):
    data = _encode(Image.fromarray(gray))
    with pytest.raises(ImageDecodeError) as err:
        decode_image(data[: len(data) // 2], max_pixels=LIMIT)
    assert err.value.reason == "decode_error"


def test_jpeg_is_rejected_where_only_png_is_allowed(gray):
    data = _encode(Image.fromarray(gray), "JPEG")
    assert decode_image(data, max_pixels=LIMIT).fmt == "JPEG"
    with pytest.raises(ImageDecodeError, match="content is JPEG"):
        decode_image(data, max_pixels=LIMIT, allowed_formats=("PNG",))


def test_decompression_bomb_is_refused_from_the_header():
    bomb = _encode(Image.new("L", (4000, 3000)))  # 12 M pixels, a few KB compressed
    assert len(bomb) < 100_000
    with pytest.raises(ImageDecodeError) as err:
        decode_image(bomb, max_pixels=LIMIT)
    assert err.value.reason == "too_large"
    assert "12000000" in err.value.detail


def test_masks_any_nonzero_is_lesion_and_binary_is_checked():
    m = np.zeros((20, 30), dtype=np.uint8)
    m[5:10, 5:15] = 255
    mask, binary, mode = decode_mask(_encode(Image.fromarray(m).convert("1")), max_pixels=LIMIT)
    assert binary
    assert mode == "1"
    assert mask.sum() == 50
    rgba = np.dstack([m, m, m, np.full_like(m, 255)])
    mask, binary, mode = decode_mask(_encode(Image.fromarray(rgba)), max_pixels=LIMIT)
    assert binary
    assert mode == "RGBA"
    assert mask.sum() == 50
    soft = m.copy()
    soft[5, 5] = 128
    _, binary, _ = decode_mask(_encode(Image.fromarray(soft)), max_pixels=LIMIT)
    assert not binary


def test_phash_is_close_for_near_copies_and_far_for_other_images():
    rng = np.random.default_rng(1)
    a, _ = synth_pair(rng, "benign", 100, 120)
    b, _ = synth_pair(rng, "malignant", 100, 120)
    noisy = np.clip(a.astype(int) + rng.integers(-4, 5, a.shape), 0, 255).astype(np.uint8)
    resized = np.asarray(Image.fromarray(a).resize((150, 125)))
    hashes = [perceptual_hash(x) for x in (a, noisy, resized, b)]
    dist = hamming_matrix(hashes)
    assert dist[0, 0] == 0
    assert (dist == dist.T).all()
    assert dist[0, 1] <= 6
    assert dist[0, 2] <= 6
    assert dist[0, 3] > 12
