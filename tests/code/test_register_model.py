"""register_model and the busi-pipeline pyfunc on the smoke-trained models: three versions
with the challenger alias, no duplicate on a retry, nothing half-registered on a failure, and
a pyfunc that gives the evaluation's answer for the same image."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from busi import registry
from busi.model.pipeline_model import InvalidImageError, predict_frame
from components.register_model import register

pytestmark = pytest.mark.slow


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("BUSI_TRACKING", "on")
    return uri


def _register(ws, uri):
    return register(
        ws / "models/unet.keras",
        ws / "models/classifier.keras",
        ws / "data/rois/summary.json",
        ws / "metrics/evaluation.json",
        ws / "data/splits.csv",
        uri,
    )


def _client(uri):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_register_makes_three_linked_versions_and_a_retry_makes_none(smoke_run, store):
    ws = smoke_run["workspace"]
    first = _register(ws, store)
    assert not first.reused
    assert first.pipeline_version == 1
    c = _client(store)
    for name in (registry.UNET_MODEL, registry.CLASSIFIER_MODEL, registry.PIPELINE_MODEL):
        assert str(c.get_model_version_by_alias(name, "challenger").version) == "1"
    tags = c.get_model_version(registry.PIPELINE_MODEL, "1").tags
    evaluation = json.loads((ws / "metrics/evaluation.json").read_text())
    assert float(tags["metric.macro_f1"]) == pytest.approx(
        evaluation["headline"]["macro_f1"], abs=1e-9
    )
    assert "metric.malignant_recall" in tags
    assert tags["unet_version"] == "1"
    runs = c.search_runs([e.experiment_id for e in c.search_experiments()])

    again = _register(ws, store)
    assert again.reused
    assert again.pipeline_version == 1
    assert len(c.search_model_versions(f"name='{registry.PIPELINE_MODEL}'")) == 1
    assert len(c.search_runs([e.experiment_id for e in c.search_experiments()])) == len(runs)


def _assert_no_versions(c) -> None:
    for name in (registry.UNET_MODEL, registry.CLASSIFIER_MODEL, registry.PIPELINE_MODEL):
        assert c.search_model_versions(f"name='{name}'") == [], name


def test_a_failure_midway_leaves_no_half_registered_model(smoke_run, store, monkeypatch):
    import busi.model.pipeline_model as pm

    def broken(*args, **kwargs):
        raise RuntimeError("artifact store went away")

    monkeypatch.setattr(pm, "log_pipeline_model", broken)
    with pytest.raises(RuntimeError, match="went away"):
        _register(smoke_run["workspace"], store)
    c = _client(store)
    _assert_no_versions(c)


def test_a_failed_card_leaves_no_version_and_the_retry_has_its_card(smoke_run, store, monkeypatch):
    # The card is written after the versions exist (a backend that refuses the description,
    # say): the versions go, and the retry registers them whole, card included, instead of
    # finding a version without one.
    import busi.model.model_card as mc

    def refused(*args, **kwargs):
        raise RuntimeError("value too long for type character varying(5000)")

    with monkeypatch.context() as m:
        m.setattr(mc, "publish_card", refused)
        with pytest.raises(RuntimeError, match="character varying"):
            _register(smoke_run["workspace"], store)
    c = _client(store)
    _assert_no_versions(c)
    again = _register(smoke_run["workspace"], store)
    assert not again.reused
    mv = c.get_model_version(registry.PIPELINE_MODEL, str(again.pipeline_version))
    assert "## Known failure modes" in mv.description
    assert registry.alias_version(c, registry.PIPELINE_MODEL, registry.CHALLENGER) is not None


def png_bytes(pixels: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def test_registered_pyfunc_predicts_like_the_evaluation(smoke_run, store):
    import mlflow.pyfunc

    from busi.data.synthetic import synth_pair
    from busi.model.chain import predict_chain
    from busi.model.loading import chain_settings

    ws = smoke_run["workspace"]
    _register(ws, store)
    model = mlflow.pyfunc.load_model(f"models:/{registry.PIPELINE_MODEL}@challenger")
    rng = np.random.default_rng(3)
    images = [synth_pair(rng, cls, 90, 120)[0] for cls in ("benign", "malignant", "normal")]
    out = model.predict(pd.DataFrame({"image": [png_bytes(i) for i in images]}))
    assert list(out["class"])
    assert set(out["class"]) <= {"benign", "malignant", "normal"}
    probs_cols = ["prob_benign", "prob_malignant", "prob_normal"]
    probs = out[probs_cols].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert all(h == 90 and w == 120 for h, w in zip(out["height"], out["width"], strict=True))

    # The same images through the evaluation's code path give the same answer.
    import keras

    from busi.model.unet import load_unet

    unet = load_unet(ws / "models/unet.keras")
    classifier = keras.models.load_model(ws / "models/classifier.keras")
    crop = chain_settings(ws / "data/rois/summary.json")
    chain = predict_chain(images, unet, classifier, crop.roi, crop.tta_flip)
    np.testing.assert_allclose(probs, chain.proba, atol=1e-5)
    assert [list(b) for b in chain.boxes] == list(out["box"])

    # It ran the LiteRT copies; asking for the Keras runtime gives the same answer.
    assert model.unwrap_python_model().runtime == "lite"
    keras_model = mlflow.pyfunc.load_model(
        f"models:/{registry.PIPELINE_MODEL}@challenger", model_config={"runtime": "keras"}
    )
    assert keras_model.unwrap_python_model().runtime == "keras"
    again = keras_model.predict(pd.DataFrame({"image": [png_bytes(i) for i in images]}))
    np.testing.assert_allclose(again[probs_cols].to_numpy(), probs, atol=1e-5)
    assert list(again["mask_png"]) == list(out["mask_png"])


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "empty_file"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "decode_error"),
        (b"hello, I am a text file", "unsupported_format"),
        ("not base64 !!", "base64"),
        (12, "not int"),
    ],
)
def test_bad_inputs_get_the_documented_error(payload, reason):
    with pytest.raises(InvalidImageError, match=reason):
        predict_frame(None, None, None, pd.DataFrame({"image": [payload]}))


def test_a_huge_image_is_refused_before_decoding(monkeypatch):
    import busi.model.pipeline_model as pm

    monkeypatch.setattr(pm, "MAX_PIXELS", 100)
    with pytest.raises(InvalidImageError, match="too_large"):
        pm.decode_upload(png_bytes(np.zeros((20, 20), np.uint8)), max_pixels=pm.MAX_PIXELS)


def test_sixteen_bit_and_rgba_are_converted():
    import busi.model.pipeline_model as pm

    sixteen = png_bytes((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16))
    rgba = png_bytes(np.full((64, 64, 4), 200, np.uint8), mode="RGBA")
    assert pm.decode_upload(sixteen).dtype == np.uint8
    assert pm.decode_upload(rgba).shape == (64, 64)


def test_missing_image_column_is_explained():
    with pytest.raises(InvalidImageError, match="column 'image'"):
        predict_frame(None, None, None, pd.DataFrame({"picture": [b"x"]}))
