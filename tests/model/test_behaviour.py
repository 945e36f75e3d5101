"""Behavioural checks of the U-Net trained in the smoke profile (synthetic data, where
lesions are dark, hypoechoic ellipses, as in real scans). The checks are the library's
(busi/model/behaviour.py), the same that evaluate_models runs on the real-data model."""

from __future__ import annotations

import numpy as np
import pytest

from busi.data.synthetic import synth_pair
from busi.model import behaviour
from busi.model.chain import RoiConfig

pytestmark = pytest.mark.slow

CFG = behaviour.BehaviourConfig()


@pytest.fixture(scope="module")
def unet(smoke_run):
    from busi.model.unet import load_unet

    return load_unet(smoke_run["workspace"] / "models" / "unet.keras")


@pytest.fixture(scope="module")
def tissue() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [synth_pair(rng, "normal", 96, 112)[0] for _ in range(10)]


def test_predictions_are_flip_invariant_within_tolerance(unet):
    rng = np.random.default_rng(7)
    images = [synth_pair(rng, label, 90, 120)[0] for label in ("benign", "malignant", "normal")]
    result = behaviour.check_flip(unet, images, RoiConfig(), CFG)
    assert result.passed, result.detail


def test_a_blank_image_gets_no_lesion(unet):
    result = behaviour.check_blank(unet, RoiConfig(), True, CFG)
    assert result.passed, result.detail


def test_tissue_without_a_lesion_gets_none(unet, tissue):
    result = behaviour.check_tissue(unet, tissue, RoiConfig(), True, CFG)
    assert result.passed, result.detail


def test_a_drawn_lesion_is_found(unet, tissue):
    result = behaviour.check_drawn_lesion(unet, tissue[:3], RoiConfig(), True, CFG)
    assert result.passed, result.detail


def test_a_model_that_sees_lesions_everywhere_fails_the_checks(unet, tissue):
    """The checks can fail: a stand-in U-Net that marks a blob in every image."""

    class Everywhere:
        input_shape = unet.input_shape

        def predict(self, batch, batch_size=32, verbose=0):
            out = np.zeros(batch.shape, dtype=np.float32)
            out[:, 5:25, 5:20] = 1.0  # off-centre, so a flip moves it
            return out

    fake = Everywhere()
    assert not behaviour.check_blank(fake, RoiConfig(), False, CFG).passed
    assert not behaviour.check_tissue(fake, tissue, RoiConfig(), False, CFG).passed
    assert not behaviour.check_flip(fake, tissue[:3], RoiConfig(), CFG).passed
    assert not behaviour.check_drawn_lesion(fake, tissue[:3], RoiConfig(), False, CFG).passed
