"""The Streamlit page: the pure parts (overlay, crop, formatting, upload checks) on small
arrays, then the page under streamlit.testing's AppTest with the smoke champion: the
instructions and the disclaimer, a prediction for an upload, an error for a corrupt file."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from busi.data.synthetic import synth_pair
from busi.model.pipeline_model import InvalidImageError, mask_to_png
from busi.serving import app
from tests.conftest import REPO_ROOT

PAGE = str(REPO_ROOT / "busi" / "serving" / "app.py")


def png(seed: int = 0, h: int = 96, w: int = 128) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(synth_pair(np.random.default_rng(seed), "benign", h, w)[0]).save(buf, "PNG")
    return buf.getvalue()


def square_mask(h=40, w=50, box=(10, 15, 30, 35)) -> np.ndarray:
    mask = np.zeros((h, w), bool)
    top, left, bottom, right = box
    mask[top:bottom, left:right] = True
    return mask


# --- pure parts ------------------------------------------------------------------------------


def test_overlay_outlines_the_lesion_and_draws_the_box():
    image = np.full((40, 50), 100, np.uint8)
    mask = square_mask()
    rgb = app.draw_overlay(image, mask, box=(5, 5, 35, 45), thickness=1)
    assert rgb.shape == (40, 50, 3)
    assert rgb.dtype == np.uint8
    assert tuple(rgb[10, 20]) == app.OUTLINE_RGB  # the lesion's top edge
    assert tuple(rgb[20, 25]) == (100, 100, 100)  # inside the lesion: untouched
    assert tuple(rgb[5, 20]) == app.BOX_RGB
    assert tuple(rgb[34, 44]) == app.BOX_RGB
    assert tuple(rgb[0, 0]) == (100, 100, 100)
    assert app.outline(mask).sum() == 2 * (20 + 20) - 4


def test_overlay_without_lesion_is_the_image_in_rgb():
    image = np.arange(20 * 30, dtype=np.uint8).reshape(20, 30)
    rgb = app.draw_overlay(image, np.zeros((20, 30), bool))
    np.testing.assert_array_equal(rgb[..., 0], image)
    with pytest.raises(ValueError, match="differ in size"):
        app.draw_overlay(image, np.zeros((5, 5), bool))


def test_crop_box_cuts_and_clips():
    image = np.arange(40 * 50, dtype=np.uint8).reshape(40, 50)
    np.testing.assert_array_equal(app.crop_box(image, (10, 15, 30, 35)), image[10:30, 15:35])
    assert app.crop_box(image, (-5, -5, 100, 100)).shape == (40, 50)
    with pytest.raises(ValueError, match="empty"):
        app.crop_box(image, (10, 10, 10, 20))


def _row(found=True, box=(10, 15, 30, 35)):
    return {
        "class": "malignant",
        "prob_benign": 0.2,
        "prob_malignant": 0.7,
        "prob_normal": 0.1,
        "lesion_found": found,
        "lesion_area": 0.2,
        "box": list(box),
        "mask_png": mask_to_png(square_mask()),
        "height": 40,
        "width": 50,
    }


def test_format_result():
    view = app.format_result(_row())
    assert view.label == "malignant"
    assert view.box == (10, 15, 30, 35)
    assert view.probabilities == [("benign", 0.2), ("malignant", 0.7), ("normal", 0.1)]
    assert "20.0% of the image" in view.lesion
    assert "No lesion" in app.format_result(_row(found=False)).lesion
    np.testing.assert_array_equal(app.decode_mask_png(_row()["mask_png"]), square_mask())


def test_upload_checks_size_content_and_pixels(monkeypatch):
    assert app.check_upload(png()).shape == (96, 128)
    with pytest.raises(InvalidImageError, match="too_large"):
        app.check_upload(png(), max_bytes=100)
    with pytest.raises(InvalidImageError, match="unsupported_format"):
        app.check_upload(b"GIF89a...")
    monkeypatch.setattr(app, "MAX_PIXELS", 1000)
    with pytest.raises(InvalidImageError, match="decompression-bomb"):
        app.check_upload(png())


# --- the page in AppTest -------------------------------------------------------------------


def _page(monkeypatch, tracking_uri: str):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    monkeypatch.delenv("BUSI_MODEL_URI", raising=False)
    return AppTest.from_file(PAGE, default_timeout=60)


def _texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


@pytest.mark.slow
def test_page_without_upload_shows_instructions_and_disclaimer(smoke_champion, monkeypatch):
    at = _page(monkeypatch, smoke_champion.tracking_uri).run()
    assert not at.exception
    assert "not a diagnostic device" in _texts(at.warning)
    assert "Upload a breast-ultrasound image" in _texts(at.info)
    assert "busi-pipeline v1 (champion)" in _texts(at.caption)
    assert not at.error
    assert not at.subheader
    # The served version's model card, folded under the caption.
    (card,) = at.expander
    assert card.label.startswith("Model card of busi-pipeline v1")
    assert "# busi-pipeline v1: model card" in _texts(card.markdown)
    assert "Known failure modes" in _texts(card.markdown)


@pytest.mark.slow
def test_page_shows_class_probabilities_and_images_for_an_upload(smoke_champion, monkeypatch):
    at = _page(monkeypatch, smoke_champion.tracking_uri).run()
    at.file_uploader(key="upload").set_value(("scan.png", png(seed=5), "image/png"))
    at.run(timeout=240)
    assert not at.exception, _texts(at.error)
    assert not at.error, _texts(at.error)
    (heading,) = at.subheader
    label = heading.value.removeprefix("Predicted class: ")
    assert label in ("benign", "malignant", "normal")
    bars = {b.text.split(":")[0]: b.value for b in at.progress}
    assert set(bars) == {"benign", "malignant", "normal"}
    assert 97 <= sum(bars.values()) <= 103
    captions = [c for img in at.image for c in img.captions]
    assert any("Lesion outlined" in c for c in captions)
    assert any("Region" in c for c in captions)
    assert "not a diagnostic device" in _texts(at.warning)


@pytest.mark.slow
def test_page_explains_a_corrupt_file(smoke_champion, monkeypatch):
    at = _page(monkeypatch, smoke_champion.tracking_uri).run()
    corrupt = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    at.file_uploader(key="upload").set_value(("scan.png", corrupt, "image/png"))
    at.run(timeout=240)
    assert not at.exception
    assert not at.subheader
    assert "scan.png** cannot be used: decode_error" in _texts(at.error)
    at.file_uploader(key="upload").set_value(("notes.png", b"just text", "image/png"))
    at.run(timeout=240)
    assert "unsupported_format" in _texts(at.error)


@pytest.mark.slow
def test_page_without_a_champion_says_what_to_do(tmp_path, monkeypatch):
    at = _page(monkeypatch, f"sqlite:///{tmp_path / 'empty.db'}").run(timeout=120)
    assert not at.exception
    assert "No model to run" in _texts(at.error)
    assert "promote" in _texts(at.error)
    assert "not a diagnostic device" in _texts(at.warning)
