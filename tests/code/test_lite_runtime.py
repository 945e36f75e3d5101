"""The LiteRT serving copies: same outputs as the Keras models, a refused compile when they
differ, and the choice of runtime when a pyfunc loads."""

from __future__ import annotations

import numpy as np
import pytest

from busi.model import lite_runtime
from busi.model.lite_runtime import CompileError, LiteModel, compile_checked, probe_inputs
from busi.model.pipeline_model import serving_runtime


def _tiny_model(seed: int = 0, channels: int = 1):
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((16, 16, channels))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Conv2D(1, 1, activation="sigmoid")(x)
    return keras.Model(inputs, x, name=f"tiny{seed}")


def test_the_compiled_copy_predicts_like_keras_one_image_or_many():
    model = _tiny_model()
    content, gap = compile_checked(model)
    assert gap < 1e-5
    lite = LiteModel(content, num_threads=1)
    assert lite.input_shape == (None, 16, 16, 1)
    x = np.random.default_rng(1).random((5, 16, 16, 1), dtype=np.float32)
    expected = np.asarray(model.predict_on_batch(x))
    np.testing.assert_allclose(lite.predict(x), expected, atol=1e-5)
    # A non-contiguous view (the chain's flipped batch) and a single image work too.
    flipped = x[:, :, ::-1]
    np.testing.assert_allclose(
        lite.predict(flipped), np.asarray(model.predict_on_batch(flipped)), atol=1e-5
    )
    assert lite.predict(x[:1]).shape == (1, 16, 16, 1)
    assert lite.predict(x[:0]).shape == (0, 16, 16, 1)


def test_a_wrong_input_shape_is_explained():
    lite = LiteModel(lite_runtime.compile_model(_tiny_model()))
    with pytest.raises(ValueError, match=r"expected inputs of shape \(N, \(16, 16, 1\)\)"):
        lite.predict(np.zeros((1, 8, 8, 1), dtype=np.float32))


def test_a_copy_that_drifts_from_keras_is_refused(monkeypatch):
    other = lite_runtime.compile_model(_tiny_model(seed=1))  # different weights
    monkeypatch.setattr(lite_runtime, "compile_model", lambda _model: other)
    with pytest.raises(CompileError, match=r"differs from the Keras model by .*BUSI_SERVING"):
        compile_checked(_tiny_model(seed=0))


def test_probe_inputs_cover_noise_blank_and_a_bright_disc():
    probe = probe_inputs((12, 10, 2), n=4)
    assert probe.shape == (4, 12, 10, 2)
    assert probe.dtype == np.float32
    assert probe.min() >= 0
    assert probe.max() <= 1
    assert not probe[2].any()  # blank
    assert probe[3, 6, 5, 0] == pytest.approx(0.9)
    assert probe[3, 0, 0, 0] == pytest.approx(0.1)


def test_the_runtime_follows_config_then_environment_then_the_artifacts(monkeypatch):
    both = {"unet_lite": "a", "classifier_lite": "b", "unet": "c"}
    old = {"unet": "c", "classifier": "d"}
    monkeypatch.delenv("BUSI_SERVING_RUNTIME", raising=False)
    assert serving_runtime(None, both) == "lite"
    assert serving_runtime({"runtime": "auto"}, both) == "lite"
    assert serving_runtime(None, old) == "keras"  # a version logged before the copies
    assert serving_runtime({"runtime": "keras"}, both) == "keras"
    monkeypatch.setenv("BUSI_SERVING_RUNTIME", "keras")
    assert serving_runtime(None, both) == "keras"
    assert serving_runtime({"runtime": "auto"}, both) == "keras"
    assert serving_runtime({"runtime": "lite"}, both) == "lite"  # config wins
    with pytest.raises(ValueError, match="no LiteRT copies"):
        serving_runtime({"runtime": "lite"}, old)
    with pytest.raises(ValueError, match="runtime must be one of"):
        serving_runtime({"runtime": "onnx"}, both)


def test_the_keras_runtime_predicts_in_chunks_like_one_call():
    from busi.model.pipeline_model import DirectPredict

    model = _tiny_model()
    x = np.random.default_rng(2).random((5, 16, 16, 1), dtype=np.float32)
    direct = DirectPredict(model, batch_size=2)  # chunks of 2, 2 and 1
    np.testing.assert_allclose(direct.predict(x), model.predict_on_batch(x), atol=1e-6)
    assert direct.predict(x[:0]).shape[0] == 0
