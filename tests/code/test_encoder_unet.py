"""U-Nets with a keras.applications encoder (train_unet.architecture: mobilenet_v2 |
resnet50) and the weights they start from: none offline, imagenet where Keras can download
them, or a weights file copied from a machine that could."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest

from busi.errors import BusiError
from busi.model.imagenet import NETWORKS, imagenet_preprocess
from busi.model.unet_training import (
    ARCHITECTURES,
    UnetConfig,
    build_unet,
    encoder_weights_record,
)
from components.train_classifier import ClassifierConfig, build_classifier

keras = pytest.importorskip("keras")


def _encoder(unet):
    return next(layer for layer in unet.layers if layer.name.endswith("_encoder"))


@pytest.mark.parametrize("architecture", ["mobilenet_v2", "resnet50"])
def test_an_encoder_unet_maps_an_image_to_a_probability_map_and_loads_plainly(
    tmp_path, architecture
):
    from busi.model.drift import encoder as drift_encoder
    from busi.model.lite_runtime import LiteModel, compile_model

    unet = build_unet(64, ARCHITECTURES[architecture], input_norm="image")
    assert unet.input_shape == (None, 64, 64, 1)
    assert unet.output_shape == (None, 64, 64, 1)
    x = np.random.default_rng(0).uniform(0, 1, (2, 64, 64, 1)).astype(np.float32)
    probs = unet.predict(x, verbose=0)
    assert probs.min() >= 0.0
    assert probs.max() <= 1.0
    unet.save(tmp_path / "unet.keras")
    loaded = keras.models.load_model(tmp_path / "unet.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), probs, atol=1e-6)

    # What serving and drift do with a U-Net work with this one too.
    lite = LiteModel(compile_model(loaded))
    np.testing.assert_allclose(lite.predict(x[:1]), probs[:1], atol=1e-4)
    embed = drift_encoder(tmp_path / "unet.keras")
    images = [np.random.default_rng(i).integers(0, 255, (50, 70), dtype=np.uint8) for i in (1, 2)]
    embeddings = embed(images)
    assert embeddings.shape[0] == 2
    assert embeddings.shape[1] == _encoder(unet).output[-1].shape[-1]  # the 1/32 tap


def test_the_encoder_starts_from_a_weights_file_and_the_run_records_its_digest(tmp_path):
    network = keras.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=(32, 32, 3)
    )
    path = tmp_path / "mobilenet_v2_no_top.weights.h5"
    network.save_weights(path)

    cfg = UnetConfig(architecture="mobilenet_v2", encoder_weights=str(path))
    unet = build_unet(32, cfg.arch, encoder_weights=cfg.encoder_weights)
    fresh = build_unet(32, cfg.arch)
    loaded = {w.path: w.numpy() for w in _encoder(unet).weights}
    saved = {w.path: w.numpy() for w in network.weights}
    kernel = next(p for p in saved if p.endswith("Conv1/kernel"))
    np.testing.assert_array_equal(loaded[kernel], saved[kernel])
    # The encoder is the network up to its 1/32 tap: every weight it has is the file's.
    assert len(loaded) > 0.9 * len(saved)
    for name, value in loaded.items():
        np.testing.assert_array_equal(value, saved[name])
    # Without the file the encoder is initialised afresh: the comparison can fail.
    assert not np.array_equal(
        {w.path: w.numpy() for w in _encoder(fresh).weights}[kernel], saved[kernel]
    )

    assert encoder_weights_record(cfg) == {
        "encoder_weights_sha256": hashlib.sha256(path.read_bytes()).hexdigest()
    }
    assert encoder_weights_record(UnetConfig(architecture="mobilenet_v2")) == {}


def test_a_weights_file_of_another_network_is_refused_with_what_to_give(tmp_path):
    other = keras.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=(32, 32, 3), alpha=0.35
    )
    path = tmp_path / "other.weights.h5"
    other.save_weights(path)
    with pytest.raises(
        BusiError, match=r"\(train_unet\.encoder_weights\) does not fit mobilenet_v2 without"
    ):
        build_unet(32, ARCHITECTURES["mobilenet_v2"], encoder_weights=str(path))


@pytest.mark.parametrize("step", ["train_unet", "train_classifier"])
def test_imagenet_weights_that_cannot_be_downloaded_say_what_to_do(monkeypatch, step):
    import keras.src.applications.mobilenet_v2 as mobilenet_v2
    import keras.src.applications.resnet as resnet

    def no_network(*args, **kwargs):
        raise Exception("URL fetch failure: host unreachable")

    for module in (keras.utils, mobilenet_v2.file_utils, resnet.file_utils):
        monkeypatch.setattr(module, "get_file", no_network)
    setting = {
        "train_unet": "train_unet.encoder_weights",
        "train_classifier": "train_classifier.weights",
    }[step]
    with pytest.raises(BusiError, match=rf"~/.keras/models.*{re.escape(setting)}: none") as err:
        if step == "train_unet":
            build_unet(32, ARCHITECTURES["mobilenet_v2"], encoder_weights="imagenet")
        else:
            build_classifier(ClassifierConfig(backbone="resnet50", weights="imagenet"), 64)
    assert "URL fetch failure" in str(err.value)


def test_encoder_weights_settings_are_checked_before_anything_trains(tmp_path):
    with pytest.raises(ValueError, match=r"pretrainable encoder.*mobilenet_v2, resnet50"):
        UnetConfig(architecture="compact", encoder_weights="imagenet")
    with pytest.raises(ValueError, match="neither none, imagenet nor an existing weights file"):
        UnetConfig(architecture="resnet50", encoder_weights=str(tmp_path / "missing.h5"))
    text = tmp_path / "weights.txt"
    text.write_text("not weights")
    with pytest.raises(ValueError, match="not a Keras weights file"):
        UnetConfig(architecture="resnet50", encoder_weights=str(text))
    # The classifier's backbones take the same three kinds of setting.
    with pytest.raises(ValueError, match="neither none, imagenet nor an existing weights file"):
        ClassifierConfig(backbone="resnet50", weights="imagenet_v2")
    assert UnetConfig(architecture="resnet50", encoder_weights="imagenet").arch.depth == 5


def test_an_encoder_unet_trains_through_fit_unet_with_the_chain_s_val_figures(tmp_path):
    import tensorflow as tf

    from busi.model.masks import LesionRule
    from busi.model.unet_training import fit_unet

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (4, 32, 32, 1)).astype(np.float32)
    masks = np.zeros((4, 32, 32, 1), np.float32)
    masks[:2, 8:20, 8:20] = 1.0
    images[:2, 8:20, 8:20] *= 0.2  # a dark lesion
    labels = np.array(["benign", "malignant", "normal", "normal"])
    ds = tf.data.Dataset.from_tensor_slices((images, masks)).batch(2)
    cfg = UnetConfig(architecture="mobilenet_v2", epochs=2, batch_size=2, patience=5)
    history = tmp_path / "history.csv"
    model = fit_unet(
        ds, ds, 32, cfg, tmp_path / "backup", history, (images, masks[..., 0], labels),
        LesionRule(),
    )  # fmt: skip
    rows = history.read_text().splitlines()
    assert len(rows) == 3  # header + 2 epochs
    assert "val_lesion_dice" in rows[0]
    assert model.output_shape == (None, 32, 32, 1)


@pytest.mark.parametrize("network", sorted(NETWORKS))
def test_imagenet_preprocessing_is_what_keras_applications_do(network):
    """The same preprocessing as keras.applications, in layers that load without this
    project's code (a Lambda around preprocess_input did not)."""
    modules = {
        "resnet50": keras.applications.resnet,
        "resnet101": keras.applications.resnet,
        "densenet121": keras.applications.densenet,
        "mobilenet_v2": keras.applications.mobilenet_v2,
    }
    rgb = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, imagenet_preprocess(inputs, network))
    expected = modules[network].preprocess_input(rgb.copy())
    np.testing.assert_allclose(model.predict(rgb, verbose=0), expected, rtol=1e-5, atol=1e-4)
