"""The U-Net's image-level lesion-present term (train_unet.presence_weight)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from busi.model.masks import LesionRule, clean_mask
from busi.model.unet_training import (
    UnetConfig,
    bce_dice_loss,
    presence_loss,
    presence_pixels,
    segmentation_loss,
)

tf = pytest.importorskip("tensorflow")


def test_presence_pixels_is_the_smallest_lesion_the_chain_keeps():
    k = presence_pixels(0.002, 96)
    assert k == 19
    rule = LesionRule(threshold=0.5, min_area=0.002, keep="largest")
    prob = np.zeros((96, 96), np.float32)
    prob[10, 10 : 10 + k] = 1.0  # one row of k pixels: one component
    assert clean_mask(prob, rule).sum() == k
    prob[10, 10 + k - 1] = 0.0  # one pixel fewer: no lesion
    assert clean_mask(prob, rule).sum() == 0
    assert presence_pixels(0.0, 96) == 1


def test_presence_loss_by_hand():
    truth = np.zeros((2, 4, 4, 1), np.float32)
    truth[1, 1:3, 1:3] = 1.0  # image 1 has a lesion, image 0 none
    pred = np.full((2, 4, 4, 1), 0.05, np.float32)
    pred[0, 0, 0], pred[0, 3, 3] = 0.9, 0.7  # normal image: its two highest average 0.8
    pred[1, 1, 1], pred[1, 2, 2] = 0.6, 0.4  # lesion image: its two highest average 0.5
    want = (-math.log(1 - 0.8) - math.log(0.5)) / 2
    assert float(presence_loss(truth, pred, 2)) == pytest.approx(want, rel=1e-4)
    # k larger than the image: the mean of all its pixels
    everything = (-math.log(1 - pred[0].mean()) - math.log(pred[1].mean())) / 2
    assert float(presence_loss(truth, pred, 100)) == pytest.approx(everything, rel=1e-4)


def test_off_is_the_plain_loss_and_on_adds_the_weighted_term():
    assert segmentation_loss(0.0, 19) is bce_dice_loss  # weight 0: training unchanged
    rng = np.random.default_rng(0)
    truth = np.zeros((3, 8, 8, 1), np.float32)
    truth[0, 2:5, 2:5] = 1.0
    pred = rng.uniform(0.01, 0.99, truth.shape).astype(np.float32)
    combined = float(segmentation_loss(0.5, 3)(truth, pred))
    parts = float(bce_dice_loss(truth, pred)) + 0.5 * float(presence_loss(truth, pred, 3))
    assert combined == pytest.approx(parts, rel=1e-5)
    with pytest.raises(ValueError, match="presence_weight"):
        UnetConfig(presence_weight=-0.1)


def test_a_false_blob_on_a_normal_image_gets_a_real_gradient_only_with_the_term():
    """Why the term exists: on an empty true mask soft Dice is saturated, so the plain loss
    hardly pushes a confident false blob down."""
    truth = np.zeros((1, 16, 16, 1), np.float32)
    pred = np.full(truth.shape, 0.01, np.float32)
    pred[0, 4:7, 4:7] = 0.9  # a 9-pixel false lesion

    def blob_gradient(loss):
        p = tf.Variable(pred)
        with tf.GradientTape() as tape:
            value = loss(truth, p)
        return float(tf.reduce_sum(tape.gradient(value, p)[0, 4:7, 4:7, 0]))  # the blob's

    plain = blob_gradient(bce_dice_loss)
    with_term = blob_gradient(segmentation_loss(0.5, 4))
    assert 0 < plain < 0.5
    assert with_term > 10 * plain
