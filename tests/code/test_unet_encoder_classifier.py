"""train_classifier.unet_encoder: the classifier starts from the trained U-Net's encoder."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from busi.errors import BusiError
from busi.model.lite_runtime import compile_checked
from busi.model.unet import average_unets, load_unet, unet_bottleneck
from busi.model.unet_training import ARCHITECTURES, build_unet
from components.train_classifier import ClassifierConfig, build_classifier, unet_encoder

ARCH = ARCHITECTURES["compact"]


def _trained_looking_unet(size: int = 32, input_norm: str = "none", seed: int = 1):
    """A compact U-Net with weights no fresh build has (a stand-in for a trained one)."""
    keras.utils.set_random_seed(seed)
    unet = build_unet(size, ARCH, input_norm=input_norm)
    rng = np.random.default_rng(seed)
    unet.set_weights([w + rng.normal(0, 0.05, w.shape).astype(w.dtype) for w in unet.get_weights()])
    return unet


def _first_conv(model):
    """The first plain convolution of ``model``'s own layers (the encoder's are not nested)."""
    return next(
        layer
        for layer in model.layers
        if isinstance(layer, keras.layers.Conv2D)
        and not isinstance(layer, keras.layers.Conv2DTranspose)
    )


def test_the_encoder_is_the_unets_layers_to_its_bottleneck_with_their_weights():
    unet = _trained_looking_unet(input_norm="image")
    encoder = unet_encoder(unet)
    # compact: 4 levels of 16..128 filters, a 256-filter bottleneck at 1/16 of the side
    assert encoder.input_shape == (None, 32, 32, 1)
    assert encoder.output_shape == (None, 2, 2, 256)
    x = np.random.default_rng(0).uniform(0, 1, (3, 32, 32, 1)).astype(np.float32)
    bottleneck = unet_bottleneck(unet)
    np.testing.assert_allclose(
        encoder.predict(x, verbose=0), bottleneck.predict(x, verbose=0), atol=1e-5
    )
    # the U-Net's own normalisation comes with it
    assert encoder.layers[1].name == "image_norm"
    # a copy: changing it leaves the U-Net as it was
    before = [w.copy() for w in unet.get_weights()]
    _first_conv(encoder).kernel.assign(np.zeros(_first_conv(encoder).kernel.shape, np.float32))
    for old, now in zip(before, unet.get_weights(), strict=True):
        np.testing.assert_array_equal(old, now)


def test_an_average_of_unets_gives_its_first_members_encoder_and_a_non_unet_none():
    members = [_trained_looking_unet(seed=1), _trained_looking_unet(seed=2)]
    average = average_unets(members)
    x = np.random.default_rng(0).uniform(0, 1, (2, 32, 32, 1)).astype(np.float32)
    np.testing.assert_allclose(
        unet_bottleneck(average).predict(x, verbose=0),
        unet_bottleneck(members[0]).predict(x, verbose=0),
        atol=1e-5,
    )
    inputs = keras.Input((32, 32, 1))
    plain = keras.Model(inputs, keras.layers.Conv2D(1, 1)(inputs))
    assert unet_bottleneck(plain) is None
    with pytest.raises(BusiError, match="no up-convolution"):
        unet_encoder(plain)


@pytest.mark.parametrize("channels", [2, 4])
def test_the_classifier_starts_from_the_unet_encoder_beside_the_small_cnn(tmp_path, channels):
    unet = _trained_looking_unet()
    cfg = ClassifierConfig(base_filters=4, unet_encoder=True)
    model = build_classifier(cfg, 32, channels, unet)
    plain = build_classifier(ClassifierConfig(base_filters=4), 32, channels)
    encoder = model.get_layer("unet_encoder")
    # the encoder's weights are the U-Net's, shared by crop and whole image
    for mine, theirs in zip(
        encoder.get_weights(), unet_bottleneck(unet).get_weights(), strict=True
    ):
        np.testing.assert_array_equal(mine, theirs)
    pools = [layer.name for layer in model.layers if layer.name.endswith("_unet_pool")]
    assert pools == ["crop_unet_pool", "context_unet_pool"][: channels // 2]
    # the stacks as before, the encoder's weights once, 256 more features per grey channel
    n_encoder = encoder.count_params()
    assert model.count_params() == plain.count_params() + n_encoder + 256 * (channels // 2) * 3

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (2, 32, 32, channels)).astype(np.float32)
    other = x.copy()
    other[..., 0] = rng.uniform(0, 1, (2, 32, 32))  # another crop
    assert not np.allclose(model.predict(x, verbose=0), model.predict(other, verbose=0))
    model.save(tmp_path / "classifier.keras")
    again = keras.models.load_model(tmp_path / "classifier.keras")
    np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    compile_checked(again)  # serving's LiteRT copy agrees (it raises otherwise)


def test_crops_of_another_side_are_resized_to_the_unets():
    unet = _trained_looking_unet(32)
    model = build_classifier(ClassifierConfig(base_filters=4, unet_encoder=True), 48, 2, unet)
    assert model.input_shape == (None, 48, 48, 2)
    assert "crop_to_unet_side" in {layer.name for layer in model.layers}
    x = np.random.default_rng(0).uniform(0, 1, (1, 48, 48, 2)).astype(np.float32)
    assert model.predict(x, verbose=0).shape == (1, 3)


def test_unet_encoder_needs_the_small_cnn_a_boolean_and_a_unet():
    with pytest.raises(ValueError, match="small_cnn"):
        ClassifierConfig(backbone="resnet50", unet_encoder=True)
    with pytest.raises(ValueError, match="true or false"):
        ClassifierConfig(unet_encoder="yes")
    with pytest.raises(BusiError, match="--unet"):
        build_classifier(ClassifierConfig(base_filters=4, unet_encoder=True), 32)


def _rois(folder, size: int = 32):
    rng = np.random.default_rng(0)
    folder.mkdir()
    for split, n in (("train", 12), ("val", 6)):
        np.savez(
            folder / f"{split}.npz",
            crops=rng.integers(0, 256, (n, size, size), dtype=np.uint8),
            channel=rng.uniform(0, 1, (n, size, size)).astype(np.float32),
            labels=np.arange(n) % 3,
        )


def test_train_classifier_reads_the_unet_only_when_asked_and_says_when_it_is_missing(
    tmp_path, monkeypatch
):
    from components.train_classifier import main

    monkeypatch.setenv("BUSI_TRACKING", "off")
    _rois(tmp_path / "rois")
    unet = _trained_looking_unet()
    unet.save(tmp_path / "unet.keras")
    params = tmp_path / "params.yaml"
    out = tmp_path / "out"

    def train(setting: str, unet_path):
        params.write_text(
            f"train_classifier:\n  base_filters: 4\n  epochs: 1\n  batch_size: 6\n{setting}"
        )
        return main(
            [
                "--rois",
                str(tmp_path / "rois"),
                "--unet",
                str(unet_path),
                "--params",
                str(params),
                "--model",
                str(out / "classifier.keras"),
                "--history",
                str(out / "history.csv"),
                "--metrics",
                str(out / "metrics.json"),
            ]
        )

    # off: no U-Net is read (a missing file is no matter)
    assert train("", tmp_path / "absent.keras") == 0
    assert "unet_encoder" not in {
        layer.name for layer in keras.models.load_model(out / "classifier.keras").layers
    }
    with pytest.raises(BusiError, match=r"absent\.keras not found"):
        train("  unet_encoder: true\n", tmp_path / "absent.keras")
    assert train("  unet_encoder: true\n", tmp_path / "unet.keras") == 0
    model = keras.models.load_model(out / "classifier.keras")
    assert "unet_encoder" in {layer.name for layer in model.layers}
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["params"] == model.count_params()
    # the saved U-Net, reloaded as the steps load it, gives the same encoder
    reloaded = load_unet(tmp_path / "unet.keras")
    assert unet_bottleneck(reloaded).count_params() == unet_bottleneck(unet).count_params()
    for again, first in zip(
        unet_bottleneck(reloaded).get_weights(), unet_bottleneck(unet).get_weights(), strict=True
    ):
        np.testing.assert_array_equal(again, first)
