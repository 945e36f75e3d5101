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


class Everywhere:
    """A stand-in U-Net that marks the same off-centre blob in every image (so a flip moves
    it): it fails every check."""

    def __init__(self, input_shape):
        self.input_shape = input_shape

    def predict(self, batch, batch_size=32, verbose=0):
        out = np.zeros(batch.shape, dtype=np.float32)
        out[:, 5:25, 5:20] = 1.0
        return out


class SaysNormal:
    """A stand-in classifier that gives every input the same probability of "normal"
    (CLASSES order: benign, malignant, normal)."""

    def __init__(self, p_normal: float):
        self.p_normal = p_normal

    def predict(self, x, verbose=0):
        rest = (1.0 - self.p_normal) / 2
        return np.tile([rest, rest, self.p_normal], (len(x), 1)).astype(np.float32)


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
    fake = Everywhere(unet.input_shape)
    assert not behaviour.check_blank(fake, RoiConfig(), False, CFG).passed
    assert not behaviour.check_tissue(fake, tissue, RoiConfig(), False, CFG).passed
    assert not behaviour.check_flip(fake, tissue[:3], RoiConfig(), CFG).passed
    assert not behaviour.check_drawn_lesion(fake, tissue[:3], RoiConfig(), False, CFG).passed


CHECKS = {"blank_image", "lesion_free_tissue", "flip_invariance", "drawn_lesion"}


def test_evaluate_models_records_every_check_and_which_failed(smoke_run):
    """evaluation.json's ``behaviour``, which register_model tags and promote_model gates on:
    the four checks, each with its figure against its threshold, and the failed ones named."""
    result = smoke_run["evaluation"]["behaviour"]
    assert set(result["checks"]) == CHECKS
    for name, check in result["checks"].items():
        assert check["name"] == name
        assert isinstance(check["passed"], bool)
        assert check["detail"]
    failed = sorted(name for name, check in result["checks"].items() if not check["passed"])
    assert sorted(result["failed"]) == failed
    assert result["passed"] is (not failed)


def test_run_checks_names_the_failures_and_registration_tags_them(unet, tissue):
    """A U-Net that marks a blob in every image fails all four; register_model's tag says
    which, and an evaluation from before the checks gets no tag."""
    from components.register_model import behaviour_tag

    result = behaviour.run_checks(
        Everywhere(unet.input_shape), None, tissue[:3], tissue[:3], RoiConfig(), False, CFG
    )
    assert result["passed"] is False
    assert set(result["failed"]) == CHECKS
    assert behaviour_tag({"behaviour": result}).startswith("failed: blank_image, ")
    good = behaviour.run_checks(unet, None, tissue[:3], tissue[:3], RoiConfig(), True, CFG)
    assert good["failed"] == [], good["checks"]
    assert behaviour_tag({"behaviour": good}) == "passed"
    assert behaviour_tag({}) == ""


def test_with_the_classifier_the_checks_judge_what_the_chain_shows(unet, tissue):
    """The blank, tissue and drawn-lesion checks see the masks the chain serves: a lesion the
    classifier vetoes (P(normal) >= normal_veto) is not shown, so a U-Net that marks a blob
    everywhere passes the blank and tissue checks behind a classifier that calls everything
    normal, and the smoke U-Net's drawn lesions, found without the veto, are not found."""
    fake = Everywhere((None, 64, 64, 1))
    veto = RoiConfig(normal_veto=0.5)
    normal = SaysNormal(0.9)
    assert behaviour.check_blank(fake, veto, False, CFG, normal).passed
    assert behaviour.check_tissue(fake, tissue[:3], veto, False, CFG, normal).passed
    drawn = behaviour.check_drawn_lesion(unet, tissue[:3], veto, True, CFG, normal)
    assert drawn.value == 0.0, drawn.detail
    # below the veto the chain shows the U-Net's masks, and the checks come out as without it
    unsure = SaysNormal(0.4)
    assert not behaviour.check_blank(fake, veto, False, CFG, unsure).passed
    assert not behaviour.check_tissue(fake, tissue[:3], veto, False, CFG, unsure).passed
    shown = behaviour.check_drawn_lesion(unet, tissue[:3], veto, True, CFG, unsure)
    assert shown.passed, shown.detail


def test_with_no_veto_the_chain_level_checks_equal_the_u_nets(unet, tissue):
    """At normal_veto 1.0 (no veto) the chain shows the U-Net's cleaned masks: each check
    gives the same figure and detail with the classifier as without it."""
    roi = RoiConfig()
    normal = SaysNormal(0.9)
    pairs = [
        (
            behaviour.check_blank(unet, roi, True, CFG),
            behaviour.check_blank(unet, roi, True, CFG, normal),
        ),
        (
            behaviour.check_tissue(unet, tissue, roi, True, CFG),
            behaviour.check_tissue(unet, tissue, roi, True, CFG, normal),
        ),
        (
            behaviour.check_drawn_lesion(unet, tissue[:3], roi, True, CFG),
            behaviour.check_drawn_lesion(unet, tissue[:3], roi, True, CFG, normal),
        ),
    ]
    for alone, chained in pairs:
        assert chained == alone
    everywhere = Everywhere(unet.input_shape)
    assert behaviour.check_blank(everywhere, roi, False, CFG, normal) == behaviour.check_blank(
        everywhere, roi, False, CFG
    )
