"""Model building blocks: U-Net shapes, losses and metrics, augmentation, class weights."""

from __future__ import annotations

import numpy as np
import pytest

from busi.model.unet_training import ARCHITECTURES, UnetConfig, bce_dice_loss, build_unet
from components.augment_data import AugmentConfig, augment_pair, prepare_split
from components.train_classifier import ClassifierConfig, build_classifier, class_weights

keras = pytest.importorskip("keras")


def test_unet_shapes_and_the_original_size():
    model = build_unet(32, ARCHITECTURES["compact"])
    out = model.predict(np.zeros((2, 32, 32, 1), np.float32), verbose=0)
    assert out.shape == (2, 32, 32, 1)
    assert (out >= 0).all()
    assert (out <= 1).all()
    original = build_unet(128, ARCHITECTURES["original"])
    assert 30_000_000 < original.count_params() < 32_000_000  # the notebook's 31 M


def test_residual_unet_adds_a_shortcut_to_each_block():
    plain = build_unet(32, ARCHITECTURES["compact"])
    residual = build_unet(32, ARCHITECTURES["residual"])
    adds = [layer for layer in residual.layers if isinstance(layer, keras.layers.Add)]
    assert len(adds) == 9  # 4 down, the bottleneck, 4 up
    assert not any(isinstance(layer, keras.layers.Add) for layer in plain.layers)
    # Only the 1x1 shortcut convolutions (no bias) are extra: input channels x filters.
    down = [(1, 16), (16, 32), (32, 64), (64, 128), (128, 256)]
    up = [(256, 128), (128, 64), (64, 32), (32, 16)]  # the input is skip + upsampled
    extra = sum(c_in * c_out for c_in, c_out in down + up)
    assert residual.count_params() - plain.count_params() == extra
    out = residual.predict(np.zeros((1, 32, 32, 1), np.float32), verbose=0)
    assert out.shape == (1, 32, 32, 1)


def test_image_norm_makes_the_unet_blind_to_gain_and_contrast_and_saves_plainly(tmp_path):
    from busi.model.unet import load_unet

    model = build_unet(32, ARCHITECTURES["compact"], input_norm="image")
    plain = build_unet(32, ARCHITECTURES["compact"])
    assert model.count_params() == plain.count_params()  # the layer learns nothing
    rng = np.random.default_rng(0)
    images = rng.uniform(0.2, 0.8, (2, 32, 32, 1)).astype(np.float32)
    base = model.predict(images, verbose=0)
    darker = model.predict(images * 0.7, verbose=0)
    mean = images.mean(axis=(1, 2, 3), keepdims=True)
    flatter = model.predict((images - mean) * 0.6 + mean, verbose=0)
    # Only the layer's epsilon (1e-4 against a variance of ~0.02) separates them.
    assert np.abs(darker - base).max() < 5e-3
    assert np.abs(flatter - base).max() < 5e-3
    # Without it a gain changes the answer, so the check above can fail.
    assert (
        np.abs(plain.predict(images * 0.7, verbose=0) - plain.predict(images, verbose=0)).max()
        > 5e-3
    )
    model.save(tmp_path / "unet.keras")
    loaded = load_unet(tmp_path / "unet.keras")  # no custom objects needed
    np.testing.assert_allclose(loaded.predict(images, verbose=0), base, atol=1e-6)


def test_unknown_input_norm_is_refused():
    with pytest.raises(ValueError, match="input_norm"):
        UnetConfig(input_norm="zscore")
    with pytest.raises(ValueError, match="input_norm"):
        build_unet(32, ARCHITECTURES["compact"], input_norm="zscore")


def test_losses_and_the_lesion_dice_on_hand_made_masks():
    from busi.model.unet_training import lesion_dice_metric, soft_dice_loss

    truth = np.zeros((3, 4, 4, 1), np.float32)
    truth[0, :2, :2] = 1  # 4 pixels
    truth[2, 2:, 2:] = 1
    pred = np.zeros_like(truth)
    pred[0, :2, :1] = 0.9  # 2 of them found
    pred[0, 3, 3] = 0.8  # 1 false positive
    pred[1, 0, 0] = 0.7  # a false lesion on an image without one
    pred[2] = truth[2]
    # image 0: TP 2, FP 1, FN 2 -> Dice 4/7; image 1 has no lesion, so no Dice (not 0, not 1);
    # image 2: perfect -> 1
    metric = lesion_dice_metric()
    metric.update_state(truth[:2], pred[:2])  # two batches: each lesion image counts once
    metric.update_state(truth[2:], pred[2:])
    assert float(metric.result()) == pytest.approx((4 / 7 + 1) / 2, abs=1e-6)
    assert float(soft_dice_loss(truth, truth)) == pytest.approx(0.0, abs=1e-6)
    perfect = float(bce_dice_loss(truth, np.clip(truth, 1e-4, 1 - 1e-4)))
    assert perfect < 0.01 < float(bce_dice_loss(truth, pred))


def test_the_training_lesion_dice_is_the_evaluation_one():
    from busi.model.metrics import segmentation_metrics
    from busi.model.unet_training import lesion_dice_metric

    rng = np.random.default_rng(0)
    truth = np.zeros((6, 16, 16, 1), np.float32)
    for i in range(4):  # four lesion images, two without a lesion
        top, left = rng.integers(0, 10, 2)
        truth[i, top : top + 5, left : left + 6] = 1
    pred = rng.random(truth.shape).astype(np.float32) * 0.6 + truth * 0.3
    metric = lesion_dice_metric()
    metric.update_state(truth, pred)
    labels = ["benign"] * 4 + ["normal"] * 2
    seg = segmentation_metrics(list(truth[..., 0] > 0), list(pred[..., 0] >= 0.5), labels)
    assert float(metric.result()) == pytest.approx(seg["dice_mean"], abs=1e-6)


def test_the_epoch_scores_are_evaluation_figures_of_the_cleaned_masks():
    from busi.model.chain import RoiConfig
    from busi.model.unet_training import chain_scores

    truth = [np.zeros((20, 20), bool) for _ in range(3)]
    truth[0][5:15, 5:15] = True
    probs = [np.zeros((20, 20), np.float32) for _ in range(3)]
    probs[0][5:15, 5:10] = 0.9  # half the lesion: Dice 2*50/(100+50) = 2/3
    probs[0][0, 0] = 0.9  # a speck, dropped by the chain's clean-up
    probs[1][2:8, 2:8] = 0.8  # a false lesion on the first normal image
    probs[2][19, 19] = 0.9  # a speck below min_area: no lesion
    roi = RoiConfig(threshold=0.5, min_area=0.01, keep="largest")
    scores = chain_scores(probs, truth, ["benign", "normal", "normal"], roi, 0.5)
    assert scores["val_lesion_dice"] == pytest.approx(2 / 3)
    assert scores["val_false_lesion_rate"] == pytest.approx(0.5)
    assert scores["val_score"] == pytest.approx(2 / 3 - 0.25)


def test_an_unknown_monitor_is_refused():
    with pytest.raises(ValueError, match="monitor 'val_dice' unknown"):
        UnetConfig(monitor="val_dice")


def test_augmentation_keeps_image_and_mask_aligned():
    rng = np.random.default_rng(0)
    image = np.zeros((32, 32), np.uint8)
    image[4:12, 20:28] = 255
    mask = image > 0
    flip_only = AugmentConfig(
        image_size=32, hflip=1.0, rotate_degrees=0, scale=0, brightness=0, contrast=0, speckle=0
    )
    aug_image, aug_mask = augment_pair(image, mask, rng, flip_only)
    np.testing.assert_array_equal(aug_image, image[:, ::-1])
    np.testing.assert_array_equal(aug_mask, mask[:, ::-1])
    full = AugmentConfig(image_size=32, rotate_degrees=10, scale=0.1, speckle=0.1)
    for _ in range(5):
        aug_image, aug_mask = augment_pair(image, mask, rng, full)
        assert aug_image.dtype == np.uint8
        assert aug_mask.dtype == bool
        assert aug_image[aug_mask].mean() > 150 > aug_image[~aug_mask].mean()


def test_a_tighter_field_of_view_keeps_the_whole_lesion():
    from components.augment_data import field_of_view

    rng = np.random.default_rng(0)
    mask = np.zeros((100, 120), bool)
    mask[60:75, 90:110] = True
    for _ in range(50):
        top, left, bottom, right = field_of_view(mask, rng, (0.4, 0.7), (0.75, 1.6))
        share = (bottom - top) * (right - left) / mask.size
        assert 0.38 <= share <= 0.72
        assert 0.7 <= (bottom - top) / (right - left) <= 1.7
        assert mask[top:bottom, left:right].sum() == mask.sum()
    empty = np.zeros((100, 120), bool)
    top, left, bottom, right = field_of_view(empty, rng, (0.5, 0.5), (1.0, 1.0))
    assert 0 <= top < bottom <= 100
    assert 0 <= left < right <= 120


def test_the_shift_augmentations_keep_image_and_mask_aligned():
    rng = np.random.default_rng(1)
    image = np.full((64, 64), 200, np.uint8)
    image[40:52, 8:24] = 30  # a dark lesion
    mask = image < 100
    shifts = AugmentConfig(
        image_size=64,
        hflip=0,
        rotate_degrees=0,
        scale=0,
        brightness=0,
        contrast=0,
        speckle=0,
        crop=1.0,
        crop_area=(0.4, 0.7),
        gamma=0.5,
        blur_sigma=1.0,
    )
    zoomed = 0
    for _ in range(10):
        aug_image, aug_mask = augment_pair(image, mask, rng, shifts)
        assert aug_image.shape == image.shape
        assert aug_mask.any()
        assert aug_image[aug_mask].mean() < 100 < aug_image[~aug_mask].mean()
        zoomed += aug_mask.sum() > mask.sum() * 1.2
    assert zoomed >= 8  # a tighter view makes the lesion larger in the frame


def test_shifts_off_draw_nothing_more():
    off = AugmentConfig(image_size=32)
    image = np.random.default_rng(0).integers(0, 255, (32, 32)).astype(np.uint8)
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    augment_pair(image, image > 128, a, off)
    # The draws of flips, rotation, zoom, contrast, brightness and speckle, nothing else:
    # turning the shifts off leaves the committed augmentation as it was.
    b.random(), b.random(), b.uniform(), b.uniform(), b.uniform(), b.uniform()
    b.normal(1.0, off.speckle, (32, 32))
    assert a.random() == b.random()


def test_only_the_train_split_is_augmented():
    rng = np.random.default_rng(0)
    images = [np.full((50, 70), i * 40, np.uint8) for i in range(3)]
    masks = [np.zeros((50, 70), bool)] * 3
    cfg = AugmentConfig(image_size=32, copies=2)
    x, y, source = prepare_split(images, masks, True, cfg, rng)
    assert x.shape == (9, 32, 32)
    assert y.shape == (9, 32, 32)
    assert source.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    x, _, source = prepare_split(images, masks, False, cfg, rng)
    assert x.shape == (3, 32, 32)
    assert source.tolist() == [0, 1, 2]


def test_tfrecords_round_trip(tmp_path):
    from busi.data.tfrecords import read_tfrecord, write_tfrecord

    images = np.random.default_rng(0).integers(0, 255, (3, 16, 16), dtype=np.uint8)
    masks = (images > 128).astype(np.uint8)
    write_tfrecord(tmp_path / "s.tfrecord", images, masks, [0, 1, 2], ["a", "b", "c"], [0, 1, 1])
    rows = list(read_tfrecord(tmp_path / "s.tfrecord", 16).as_numpy_iterator())
    assert len(rows) == 3
    np.testing.assert_allclose(rows[1][0][..., 0], images[1] / 255.0, atol=1e-6)
    np.testing.assert_array_equal(rows[2][1][..., 0], masks[2])
    assert [r[2] for r in rows] == [0, 1, 2]


def test_the_same_rows_give_the_same_tfrecord_bytes_in_every_process(tmp_path):
    # Protobuf serialises a map (an Example's features) in an order that changed from one
    # process to the next: DVC then saw a new data/prepared on every run of augment-data.
    import os
    import subprocess
    import sys

    script = (
        "import sys, numpy as np\n"
        "from busi.data.tfrecords import write_tfrecord\n"
        "images = np.arange(3 * 8 * 8, dtype=np.uint8).reshape(3, 8, 8)\n"
        "write_tfrecord(__import__('pathlib').Path(sys.argv[1]), images, images > 90,"
        " [0, 1, 2], ['a', 'b', 'c'], [0, 1, 1])\n"
    )
    written = []
    for hash_seed in ("1", "2", "3"):
        path = tmp_path / f"{hash_seed}.tfrecord"
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "CUDA_VISIBLE_DEVICES": ""}
        subprocess.run([sys.executable, "-c", script, str(path)], env=env, check=True)
        written.append(path.read_bytes())
    assert written[0] == written[1] == written[2]


def test_balanced_class_weights():
    labels = np.array([0] * 60 + [1] * 30 + [2] * 10)
    weights = class_weights(labels)
    assert weights == pytest.approx({0: 100 / 180, 1: 100 / 90, 2: 100 / 30})
    # every class then carries the same total weight
    totals = [weights[c] * (labels == c).sum() for c in range(3)]
    assert max(totals) == pytest.approx(min(totals))
    from busi.errors import BusiError

    with pytest.raises(BusiError, match="normal"):
        class_weights(np.array([0, 1, 1]))


@pytest.mark.parametrize("backbone", ["small_cnn", "resnet50"])
def test_classifiers_take_crop_and_mask(backbone):
    model = build_classifier(ClassifierConfig(backbone=backbone, base_filters=4), 64)
    out = model.predict(np.zeros((2, 64, 64, 2), np.float32), verbose=0)
    assert out.shape == (2, 3)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
    momenta = {
        layer.momentum
        for layer in model._flatten_layers()
        if isinstance(layer, keras.layers.BatchNormalization)
    }
    assert momenta == {0.9}  # not Keras' 0.99, unstable with few steps an epoch


def test_configs_refuse_unknown_choices():
    with pytest.raises(ValueError, match="architecture"):
        UnetConfig(architecture="huge")
    with pytest.raises(ValueError, match="backbone"):
        ClassifierConfig(backbone="vgg")
    with pytest.raises(ValueError, match="no ImageNet"):
        ClassifierConfig(backbone="small_cnn", weights="imagenet")


@pytest.mark.parametrize("backbone", ["small_cnn", "resnet50"])
def test_classifier_image_norm_ignores_the_crops_gain_but_not_the_probability(tmp_path, backbone):
    cfg = ClassifierConfig(backbone=backbone, base_filters=4, input_norm="image")
    model = build_classifier(cfg, 32)
    rng = np.random.default_rng(0)
    crop = rng.uniform(0.2, 0.8, (2, 32, 32, 1)).astype(np.float32)
    prob = rng.uniform(0, 1, (2, 32, 32, 1)).astype(np.float32)
    base = model.predict(np.concatenate([crop, prob], -1), verbose=0)
    darker = model.predict(np.concatenate([crop * 0.7, prob], -1), verbose=0)
    assert np.abs(darker - base).max() < 5e-3
    # What the backbone gets: the crop standardised, the probability channel as it came.
    seen = keras.Model(model.inputs, model.get_layer("roi_norm").output)
    roi = seen.predict(np.concatenate([crop, prob], -1), verbose=0)
    np.testing.assert_allclose(roi[..., 1:], prob, atol=1e-6)
    mean = crop.mean(axis=(1, 2, 3), keepdims=True)
    z = (crop - mean) / np.sqrt(crop.var(axis=(1, 2, 3), keepdims=True) + 1e-4)  # the epsilon
    expected = z if backbone == "small_cnn" else z * 0.25 + 0.5
    np.testing.assert_allclose(roi[..., :1], expected, atol=2e-3)
    model.save(tmp_path / "classifier.keras")
    loaded = keras.models.load_model(tmp_path / "classifier.keras")  # no custom objects
    np.testing.assert_allclose(
        loaded.predict(np.concatenate([crop, prob], -1), verbose=0), base, atol=1e-6
    )
    with pytest.raises(ValueError, match="input_norm"):
        ClassifierConfig(input_norm="zscore")


def tiny_segmentation_data():
    """Four 16x16 images (two with a square lesion, two normal) as a batched train/val
    dataset and as ``split_arrays`` gives the val split: (images, masks, class names)."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (4, 16, 16, 1)).astype(np.float32)
    masks = np.zeros((4, 16, 16, 1), np.float32)
    masks[:2, 4:10, 4:10] = 1.0
    labels = np.array(["benign", "malignant", "normal", "normal"])
    ds = tf.data.Dataset.from_tensor_slices((images, masks)).batch(2)
    return ds, (images, masks[..., 0], labels)


def fit_tiny_unet(cfg: UnetConfig, out, rule=None, **kwargs):
    """``fit_unet`` on ``tiny_segmentation_data`` (the same images for train and val, 16 px),
    its backup (``out/backup``) and log (``out/history.csv``) under ``out``, with the lesion
    rule ``rule`` (default ``LesionRule()``): (model, the log's path, the val arrays)."""
    from busi.model.masks import LesionRule
    from busi.model.unet_training import fit_unet

    ds, val_arrays = tiny_segmentation_data()
    out.mkdir(parents=True, exist_ok=True)
    history = out / "history.csv"
    rule = LesionRule() if rule is None else rule
    model = fit_unet(ds, ds, 16, cfg, out / "backup", history, val_arrays, rule, **kwargs)
    return model, history, val_arrays


def test_cosine_schedule_anneals_the_unet_learning_rate_per_epoch(tmp_path):
    import csv

    from busi.model.unet_training import epoch_learning_rate

    cfg = UnetConfig(epochs=3, batch_size=2, learning_rate=0.01, lr_schedule="cosine", patience=5)
    rates = [epoch_learning_rate(e, cfg) for e in range(3)]
    assert rates[0] == pytest.approx(0.01)
    assert rates[1] == pytest.approx(0.0075)  # 0.01 x (1 + cos(pi/3)) / 2
    assert rates[2] == pytest.approx(0.0025)
    assert epoch_learning_rate(2, UnetConfig(epochs=3, learning_rate=0.01)) == 0.01
    with pytest.raises(ValueError, match="lr_schedule"):
        UnetConfig(lr_schedule="step")

    _, history, _ = fit_tiny_unet(cfg, tmp_path)
    logged = [float(row["learning_rate"]) for row in csv.DictReader(history.open())]
    assert logged == pytest.approx(rates, rel=1e-5)


def test_a_unet_trains_with_the_presence_term_and_loads_for_inference(tmp_path):
    """train_unet.presence_weight reaches the compiled loss through fit_unet, and the U-Net
    saved with that loss loads for inference (tests/code/test_presence_loss.py has the
    term itself)."""
    from busi.model.masks import LesionRule
    from busi.model.unet import load_unet

    cfg = UnetConfig(epochs=2, batch_size=2, learning_rate=0.01, patience=2, presence_weight=0.5)
    model, _, val_arrays = fit_tiny_unet(cfg, tmp_path, LesionRule(min_area=0.02))
    assert model.loss.__name__ == "bce_dice_presence_loss"
    model.save(tmp_path / "unet.keras")
    again = load_unet(tmp_path / "unet.keras")
    images = val_arrays[0]
    np.testing.assert_allclose(
        again.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6
    )


@pytest.mark.parametrize("backbone", ["resnet50", "densenet121"])
def test_imagenet_classifiers_load_plainly(tmp_path, backbone):
    """The notebook's backbones, their preprocessing in built-in layers
    (tests/code/test_encoder_unet.py checks it against keras.applications'): a saved
    classifier loads without this project's code."""
    classifier = build_classifier(ClassifierConfig(backbone=backbone), 32)
    x = np.random.default_rng(1).uniform(0, 1, (1, 32, 32, 2)).astype(np.float32)
    classifier.save(tmp_path / "classifier.keras")
    loaded = keras.models.load_model(tmp_path / "classifier.keras")
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), classifier.predict(x, verbose=0), atol=1e-5
    )


def test_flat_negatives_add_uniform_images_with_empty_masks_to_the_train_split_only(tmp_path):
    from busi.data.tfrecords import write_tfrecord
    from busi.model.unet_training import flat_images, segmentation_dataset

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 16, 16), dtype=np.uint8)
    masks = np.zeros((8, 16, 16), np.uint8)
    masks[:, 4:10, 4:10] = 1
    path = tmp_path / "train.tfrecord"
    write_tfrecord(path, images, masks, [0] * 8, [f"b{i}" for i in range(8)], [False] * 8)

    def pairs(cfg, training):
        batches = segmentation_dataset(path, 16, cfg, training).as_numpy_iterator()
        x, y = zip(*batches, strict=True)
        return np.concatenate(x), np.concatenate(y)

    x, y = pairs(UnetConfig(batch_size=4, flat_negatives=0.5), training=True)
    assert len(x) == 12  # 8 images + half as many flat ones
    flat = x.reshape(len(x), -1).std(axis=1) == 0
    assert flat.sum() == 4
    assert not y[flat].any()  # their masks are empty
    assert y[~flat].reshape(8, -1).any(axis=1).all()  # the real ones keep theirs
    levels = sorted(x[flat][:, 0, 0, 0])
    np.testing.assert_allclose(levels, [0, 1 / 3, 2 / 3, 1], atol=1e-6)

    assert len(pairs(UnetConfig(batch_size=4, flat_negatives=0.5), training=False)[0]) == 8
    assert len(pairs(UnetConfig(batch_size=4), training=True)[0]) == 8
    same, _ = flat_images(4, 16, seed=0)
    again, _ = flat_images(4, 16, seed=0)
    np.testing.assert_array_equal(same, again)
    with pytest.raises(ValueError, match="flat_negatives"):
        UnetConfig(flat_negatives=1.5)


def test_a_context_classifier_reads_crop_and_context_with_stacks_of_their_own(tmp_path):
    from busi.errors import BusiError
    from components.train_classifier import classification_dataset

    model = build_classifier(ClassifierConfig(base_filters=4, input_norm="image"), 32, channels=4)
    assert model.input_shape == (None, 32, 32, 4)
    names = {layer.name for layer in model.layers}
    assert {"crop_and_context", "context_pool", "crop_norm", "context_norm"} <= names
    plain = build_classifier(ClassifierConfig(base_filters=4), 32)
    # Two stacks as big as the plain one's, and a Dense layer reading both (2 x 32 features).
    stack = plain.count_params() - (32 * 3 + 3)
    assert model.count_params() == 2 * stack + (2 * 32 * 3 + 3)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (2, 32, 32, 4)).astype(np.float32)
    other = x.copy()
    other[..., 3] = rng.uniform(0, 1, (2, 32, 32))  # another probability map
    assert not np.allclose(model.predict(x, verbose=0), model.predict(other, verbose=0))
    model.save(tmp_path / "classifier.keras")
    again = keras.models.load_model(tmp_path / "classifier.keras")
    np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)

    with pytest.raises(BusiError, match="small_cnn"):
        build_classifier(ClassifierConfig(backbone="resnet50"), 32, channels=4)
    with pytest.raises(ValueError, match="channels"):
        build_classifier(ClassifierConfig(), 32, channels=3)

    # Training augmentation: both grey channels get one gain and shift, the probability
    # channels none.
    flat = np.empty((1, 8, 8, 4), np.float32)
    flat[..., 0], flat[..., 1], flat[..., 2], flat[..., 3] = 0.5, 0.3, 0.5, 0.7
    cfg = ClassifierConfig(seed=3)
    seen = next(classification_dataset(flat, np.array([1]), cfg, training=True).as_numpy_iterator())
    out = seen[0][0]
    np.testing.assert_allclose(out[..., 1], 0.3, atol=1e-6)
    np.testing.assert_allclose(out[..., 3], 0.7, atol=1e-6)
    np.testing.assert_allclose(out[..., 0], out[..., 2])
    assert not np.allclose(out[..., 0], 0.5)  # the gain and shift were applied


def test_label_smoothing_trains_on_targets_spread_over_the_classes(tmp_path):
    from components.train_classifier import fit_classifier

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (12, 16, 16, 2)).astype(np.float32)
    y = np.arange(12) % 3
    losses = {}
    for smoothing in (0.0, 0.3):
        cfg = ClassifierConfig(base_filters=4, epochs=1, batch_size=12, label_smoothing=smoothing)
        model = fit_classifier(x, y, x, y, cfg, tmp_path / f"{smoothing}.csv")
        probs = model.predict(x, verbose=0)
        targets = np.eye(3)[y] * (1 - smoothing) + smoothing / 3
        by_hand = float(np.mean(-np.sum(targets * np.log(probs), axis=1)))
        history = np.genfromtxt(tmp_path / f"{smoothing}.csv", delimiter=",", names=True)
        np.testing.assert_allclose(float(history["val_loss"]), by_hand, rtol=1e-4)
        losses[smoothing] = by_hand
    assert losses[0.0] != pytest.approx(losses[0.3])
    with pytest.raises(ValueError, match="label_smoothing"):
        ClassifierConfig(label_smoothing=1.0)


def test_the_classifier_zoom_cuts_one_square_of_every_channel_and_resizes_it_back():
    from components.train_classifier import classification_dataset

    # Probability channels 1 and 3 hold ramps along x and y (the gain leaves them alone):
    # a zoomed input shows a narrower stretch of both, the same square in each channel.
    size = 32
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    x = np.empty((16, size, size, 4), np.float32)
    x[..., 0], x[..., 2] = 0.5, 0.5
    x[..., 1] = ramp[None, None, :]
    x[..., 3] = ramp[None, :, None]
    labels = np.arange(16) % 3
    ranges = []
    for zoom in (0.0, 0.5):
        cfg = ClassifierConfig(seed=1, zoom=zoom, batch_size=16)
        seen, _ = next(classification_dataset(x, labels, cfg, training=True).as_numpy_iterator())
        assert seen.shape == x.shape
        width = seen[:, 0, :, 1].max(axis=1) - seen[:, 0, :, 1].min(axis=1)
        height = seen[:, :, 0, 3].max(axis=1) - seen[:, :, 0, 3].min(axis=1)
        np.testing.assert_allclose(width, height, atol=0.05)  # a square, in both channels
        ranges.append(width)
    np.testing.assert_allclose(ranges[0], 1.0, atol=1e-6)  # no zoom: the whole input
    # cut to 50-100 % of the side: the ramps span about that much, and not all the same
    assert (ranges[1] > 0.45).all()
    assert (ranges[1] < 1.0).all()
    assert ranges[1].std() > 0.05
    # the val split is never zoomed
    val, _ = next(classification_dataset(x, labels, cfg, training=False).as_numpy_iterator())
    np.testing.assert_array_equal(val, x)
    with pytest.raises(ValueError, match="zoom"):
        ClassifierConfig(zoom=1.0)


def test_the_classifier_gamma_and_contrast_change_the_grey_channels_alike_and_nothing_else():
    from components.train_classifier import classification_dataset

    # Grey channels 0 and 2 hold the same ramp; probability channels 1 and 3 a constant. A
    # monotone grey-level change keeps the ramp's order, moves both grey channels alike and
    # leaves the probabilities as they are.
    size = 16
    # 0.25-0.65: the gain and shift every input gets never clip it
    ramp = np.linspace(0.25, 0.65, size * size, dtype=np.float32).reshape(size, size)
    x = np.empty((32, size, size, 4), np.float32)
    x[..., 0], x[..., 2] = ramp, ramp
    x[..., 1], x[..., 3] = 0.25, 0.75
    labels = np.arange(32) % 3

    def seen(**options):
        cfg = ClassifierConfig(seed=3, batch_size=32, **options)
        batch, _ = next(classification_dataset(x, labels, cfg, training=True).as_numpy_iterator())
        return batch

    plain = seen()
    for options in ({"gamma": 0.5}, {"contrast": 0.4}):
        batch = seen(**options)
        np.testing.assert_array_equal(batch[..., 1::2], plain[..., 1::2])
        np.testing.assert_allclose(batch[..., 0], batch[..., 2], atol=1e-6)
        assert not np.allclose(batch[..., 0], plain[..., 0], atol=1e-3)
        flat = batch[..., 0].reshape(len(x), -1)
        # a monotone change: taken in the order of the plain input's grey levels (the same
        # flip, gain and shift), every input still rises, and stays in [0, 1]
        order = np.argsort(plain[..., 0].reshape(len(x), -1), axis=1, kind="stable")
        assert (np.diff(np.take_along_axis(flat, order, axis=1), axis=1) >= -1e-6).all()
        assert flat.min() >= 0.0
        assert flat.max() <= 1.0
    # gamma bends the ramp: the middle grey level moves off the line between the ends
    middles = []
    for options in ({}, {"gamma": 0.5}):
        rows = np.sort(seen(**options)[..., 0].reshape(len(x), -1), axis=1)
        line = (rows[:, 0] + rows[:, -1]) / 2
        middles.append(np.abs(rows[:, rows.shape[1] // 2] - line))
    # gain and shift are linear: off only by half a grey step (the middle of 256 levels)
    assert middles[0].max() < 0.002
    # an exponent of 0.61-1.65 bends a 0.25-0.65 ramp's middle by up to about 0.02
    assert middles[1].max() > 0.01
    assert middles[1].mean() > 0.003
    # contrast changes the spread around the mean, by up to 40 %, not all inputs alike
    spread = seen(contrast=0.4)[..., 0].std(axis=(1, 2)) / plain[..., 0].std(axis=(1, 2))
    assert spread.min() >= 0.6 - 1e-3
    assert spread.max() <= 1.4 + 1e-3
    assert spread.std() > 0.05
    # the val split is never changed
    cfg = ClassifierConfig(gamma=0.5, contrast=0.4)
    val, _ = next(classification_dataset(x, labels, cfg, training=False).as_numpy_iterator())
    np.testing.assert_array_equal(val, x)
    with pytest.raises(ValueError, match="gamma"):
        ClassifierConfig(gamma=-0.1)
    with pytest.raises(ValueError, match="contrast"):
        ClassifierConfig(contrast=1.0)


@pytest.mark.parametrize(
    ("name", "high", "closed"),
    [
        ("label_smoothing", 1.0, False),
        ("zoom", 1.0, False),
        ("gamma", 2.0, True),
        ("contrast", 1.0, False),
        ("context_crop", 1.0, True),
        ("weight_average", 1.0, False),
    ],
)
def test_the_classifier_refuses_each_number_out_of_its_range_and_says_which(name, high, closed):
    # 0 (off) and values inside are taken; below 0 or past the bound the message names the
    # setting, its value and the range, so the user knows which line of params.yaml to mend
    for good in (0.0, high / 2) + ((high,) if closed else ()):
        assert getattr(ClassifierConfig(**{name: good}), name) == good
    bounds = f"[0, {high:g}]" if closed else f"[0, {high:g})"
    for bad in (-0.01, high + 0.01) + (() if closed else (high,)):
        with pytest.raises(
            ValueError, match=rf"^{name} {bad} must be in \{bounds[0]}0, {high:g}\{bounds[-1]}: "
        ):
            ClassifierConfig(**{name: bad})


def test_the_classifier_context_crop_shows_a_tighter_view_of_the_context_alone():
    from busi.errors import BusiError
    from components.train_classifier import classification_dataset

    # The context's probability channel (3, which the gain leaves alone) holds the sum of a
    # ramp along x and one along y: a row spans the view's width, a column its height. A
    # tighter view spans less of each, by different shares when its aspect changes; the crop
    # channels stay as they are.
    size = 32
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    x = np.empty((64, size, size, 4), np.float32)
    x[..., 0], x[..., 1], x[..., 2] = 0.5, 0.25, 0.5
    x[..., 3] = ramp[None, None, :] + ramp[None, :, None]
    labels = np.arange(64) % 3

    def spans(share):
        cfg = ClassifierConfig(seed=2, context_crop=share, batch_size=64)
        seen, _ = next(classification_dataset(x, labels, cfg, training=True).as_numpy_iterator())
        assert seen.shape == x.shape
        np.testing.assert_array_equal(seen[..., 1], x[..., 1])
        # the crop's grey level: one value per input (its gain and shift), never resampled
        assert np.ptp(seen[..., 0], axis=(1, 2)).max() < 1e-6
        width = np.ptp(seen[:, 0, :, 3], axis=1)
        height = np.ptp(seen[:, :, 0, 3], axis=1)
        return width, height

    width, height = spans(0.0)
    np.testing.assert_allclose(width, 1.0, atol=1e-6)
    np.testing.assert_allclose(height, 1.0, atol=1e-6)
    width, height = spans(1.0)
    # 40-100 % of the area: each side spans at least about 0.4 / 1.6 of the whole ...
    assert width.min() > 0.4
    assert height.min() > 0.4
    assert (width * height).min() > 0.35
    # ... every input is tighter than the whole, and the aspect changes, portrait ones too
    assert (width * height).max() < 1.0
    assert (height > width + 0.05).sum() >= 5
    assert (width > height + 0.05).sum() >= 5
    # half the inputs keep their whole context
    width, height = spans(0.5)
    whole = np.isclose(width * height, 1.0, atol=1e-6)
    assert 16 <= whole.sum() <= 48
    # the val split is never changed, and a classifier without context channels refuses it
    cfg = ClassifierConfig(context_crop=1.0, batch_size=64)
    val, _ = next(classification_dataset(x, labels, cfg, training=False).as_numpy_iterator())
    np.testing.assert_array_equal(val, x)
    with pytest.raises(BusiError, match="context_crop"):
        classification_dataset(x[..., :2], labels, cfg, training=True)
    with pytest.raises(ValueError, match="context_crop"):
        ClassifierConfig(context_crop=1.5)


@pytest.mark.parametrize(("min_epochs", "stops"), [(0, True), (2, False)])
def test_min_epochs_keeps_early_epochs_from_stopping_training_or_being_kept(min_epochs, stops):
    from busi.model.unet_training import early_stopping

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    callback = early_stopping(UnetConfig(patience=1, min_epochs=min_epochs))
    model.stop_training = False  # what fit sets before the first epoch
    callback.set_model(model)
    callback.on_train_begin()
    # The first epoch scores best (it marks nothing, say); the later ones rise again.
    for epoch, score in enumerate([0.9, 0.1, 0.2, 0.3]):
        callback.on_epoch_end(epoch, {"val_score": score})
        if model.stop_training:
            break
    assert bool(model.stop_training) is stops
    assert callback.best == (0.9 if stops else 0.3)
    with pytest.raises(ValueError, match="min_epochs"):
        UnetConfig(epochs=5, min_epochs=5)


@pytest.mark.parametrize("saved", [True, False])
def test_a_resumed_training_keeps_the_best_epoch_found_before_it_was_killed(tmp_path, saved):
    from busi.model.unet_training import early_stopping

    def epochs(callback, model, scores):
        model.stop_training = False  # what fit sets before the first epoch
        callback.set_model(model)
        callback.on_train_begin()
        for epoch, score in scores:
            callback.on_epoch_begin(epoch)
            model.set_weights([np.full((1, 1), float(epoch)), np.zeros(1)])  # "trained"
            callback.on_epoch_end(epoch, {"val_score": score})

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    cfg = UnetConfig(patience=3)
    state = tmp_path / "backup" if saved else None
    # Epochs 0 and 1, epoch 1 the best; then the process is killed.
    epochs(early_stopping(cfg, state), model, [(0, 0.5), (1, 0.8)])
    # The rerun: a new callback (a new process) goes on from epoch 2, which scores lower.
    again = early_stopping(cfg, state)
    epochs(again, model, [(2, 0.6), (3, 0.7)])
    again.on_train_end()
    kept = float(model.get_weights()[0][0, 0])
    if saved:
        # the best of all four epochs, and the epochs waited since it
        assert (again.best, again.best_epoch, again.wait, kept) == (0.8, 1, 2, 1.0)
    else:
        # Keras' EarlyStopping alone forgets epochs 0-1 and keeps a worse epoch
        assert (again.best, kept) == (0.7, 3.0)


def test_a_training_killed_between_its_state_and_keras_backup_resumes_from_the_backup(tmp_path):
    """Early stopping saves its state at an epoch's end before Keras' backup is written: a
    kill between the two resumes at the epoch before the one the state already holds. The
    state of that epoch is taken, not the later one (whose wait would count the rerun epoch
    twice); a state that matches no epoch of the backup is refused."""
    from busi.model.unet_training import early_stopping

    def epochs(callback, model, scores):
        model.stop_training = False
        callback.set_model(model)
        callback.on_train_begin()
        for epoch, score in scores:
            callback.on_epoch_begin(epoch)
            model.set_weights([np.full((1, 1), float(epoch)), np.zeros(1)])
            callback.on_epoch_end(epoch, {"val_score": score})
        return callback

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    cfg = UnetConfig(patience=3)
    state = tmp_path / "backup"
    # epochs 0-2 ran (the best epoch 0), then the kill came before the backup of epoch 2
    epochs(early_stopping(cfg, state), model, [(0, 0.9), (1, 0.5), (2, 0.6)])
    again = epochs(early_stopping(cfg, state), model, [(2, 0.6)])  # Keras resumes at epoch 2
    # as uninterrupted: best epoch 0, two epochs waited (1 and 2), not three
    assert (again.best, again.best_epoch, again.wait) == (0.9, 0, 2)
    # a state from epochs the backup never had (here: it says epoch 1 is next)
    with pytest.raises(ValueError, match=r"after epoch\(s\) \[3, 3\], not after 1"):
        epochs(early_stopping(cfg, state), model, [(1, 0.5)])


def test_the_weight_average_is_what_validation_sees_and_training_goes_on_from_the_raw_weights():
    from busi.model.weight_average import weight_average_callback

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="categorical_crossentropy")
    momentum = 0.5
    seen = {"batches": [], "validated": [], "after_epoch": []}

    class Watch(keras.callbacks.Callback):
        # listed after the average: the raw weights after each batch, what the average put
        # in place at validation, and the weights once it has swapped the raw ones back
        def on_train_batch_end(self, batch, logs=None):
            seen["batches"].append(self.model.get_weights())

        def on_test_begin(self, logs=None):
            seen["validated"].append(self.model.get_weights())

        def on_epoch_end(self, epoch, logs=None):
            seen["after_epoch"].append(self.model.get_weights())

    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3)).astype(np.float32)
    y = keras.utils.to_categorical(rng.integers(0, 2, 8), 2)
    model.fit(
        x,
        y,
        batch_size=4,
        epochs=2,
        validation_data=(x, y),
        verbose=0,
        shuffle=False,
        callbacks=[weight_average_callback(momentum), Watch()],
    )
    # By hand: the weights after batches 1..t weighed m ** (t - k), normalised (2 batches
    # an epoch); the initial weights count for nothing.
    expected = []
    for t in (2, 4):
        factors = [momentum ** (t - k) for k in range(1, t + 1)]
        expected.append(
            [
                sum(f * seen["batches"][k][i] for k, f in enumerate(factors)) / sum(factors)
                for i in range(len(model.weights))
            ]
        )
    assert len(seen["validated"]) == 2
    for got, want, raw in zip(seen["validated"], expected, seen["batches"][1::2], strict=True):
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
        # the average is not the raw weights (else the test could not fail)
        assert max(np.abs(g - r).max() for g, r in zip(got, raw, strict=True)) > 1e-4
    # The raw weights are back once the epoch ends: the next epoch trains from them.
    for after, raw in zip(seen["after_epoch"], seen["batches"][1::2], strict=True):
        for a, r in zip(after, raw, strict=True):
            np.testing.assert_array_equal(a, r)


def _watch_before_the_average(raw: list, scored: list):
    """A callback listed before the weight average: at on_test_begin it sees the raw
    weights (into ``raw``), at on_epoch_end those validated and scored (the average, not yet
    swapped back; into ``scored``)."""

    class Watch(keras.callbacks.Callback):
        def on_test_begin(self, logs=None):
            raw.append(self.model.get_weights())

        def on_epoch_end(self, epoch, logs=None):
            scored.append(self.model.get_weights())

    return Watch


def test_early_stopping_keeps_the_averaged_weights_of_the_best_epoch(tmp_path):
    from components.train_classifier import fit_classifier

    seen = {"raw": [], "validated": []}
    Watch = _watch_before_the_average(seen["raw"], seen["validated"])

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (24, 16, 16, 2)).astype(np.float32)
    y = np.arange(24) % 3
    cfg = ClassifierConfig(base_filters=4, epochs=4, batch_size=8, patience=4, weight_average=0.9)
    model = fit_classifier(x, y, x, y, cfg, tmp_path / "history.csv", extra_callbacks=[Watch()])
    history = np.genfromtxt(tmp_path / "history.csv", delimiter=",", names=True)
    best = int(np.argmax(history["val_macro_f1"]))
    kept = model.get_weights()
    for k, v in zip(kept, seen["validated"][best], strict=True):
        np.testing.assert_array_equal(k, v)
    assert max(np.abs(k - r).max() for k, r in zip(kept, seen["raw"][best], strict=True)) > 1e-4
    with pytest.raises(ValueError, match="weight_average"):
        ClassifierConfig(weight_average=1.0)


def test_a_resumed_weight_average_goes_on_as_an_uninterrupted_one(tmp_path):
    """A training killed after epoch 1 and resumed in a new process: with the backup folder
    the average after epoch 2 is the uninterrupted one; without it, the average restarts."""
    from busi.model.weight_average import WEIGHT_AVERAGE_STATE, weight_average_callback

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    momentum = 0.5
    # the raw weights after each of 4 batches, 2 an epoch
    raw = [[np.full((1, 1), float(b)), np.full(1, -float(b))] for b in (1.0, 3.0, 2.0, 5.0)]

    def train(callback, batches, epochs_ending):
        callback.set_model(model)
        callback.on_train_begin()
        for b in batches:
            if b % 2 == 0:
                callback.on_epoch_begin(b // 2)
            model.set_weights(raw[b])
            callback.on_train_batch_end(b)
            if b in epochs_ending:
                callback.on_test_begin()
                validated = model.get_weights()
                callback.on_epoch_end(b // 2)
        return validated

    whole = train(weight_average_callback(momentum), range(4), (1, 3))
    factors = [momentum ** (4 - k) for k in range(1, 5)]
    by_hand = sum(f * r[0] for f, r in zip(factors, raw, strict=True)) / sum(factors)
    np.testing.assert_allclose(whole[0], by_hand, rtol=1e-6)

    state = tmp_path / "backup"
    train(weight_average_callback(momentum, state), range(2), (1,))
    assert (state / WEIGHT_AVERAGE_STATE).is_file()
    resumed = train(weight_average_callback(momentum, state), range(2, 4), (3,))
    for got, want in zip(resumed, whole, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    # without the saved average the rerun averages batches 3-4 only: another model
    fresh = train(weight_average_callback(momentum), range(2, 4), (3,))
    assert abs(float(fresh[0][0, 0]) - float(whole[0][0, 0])) > 0.1
    # a backup of another average is not silently mixed in
    with pytest.raises(ValueError, match="another training"):
        train(weight_average_callback(0.9, state), range(2, 4), (3,))

    # killed after the average of epoch 1 was saved, before Keras' backup of it: Keras
    # resumes at epoch 1 again, and the average of epoch 0 is taken, so batches 2-3 are
    # averaged once, as in the uninterrupted training
    assert (state / WEIGHT_AVERAGE_STATE).is_file()  # holds epochs 0-1 now
    again = train(weight_average_callback(momentum, state), range(2, 4), (3,))
    for got, want in zip(again, whole, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_a_unet_with_a_weight_average_keeps_and_scores_the_averaged_weights(tmp_path):
    import csv

    from busi.model.masks import LesionRule
    from busi.model.unet_training import chain_scores

    seen = {"raw": [], "scored": []}
    Watch = _watch_before_the_average(seen["raw"], seen["scored"])

    cfg = UnetConfig(epochs=4, batch_size=2, learning_rate=0.01, patience=4, weight_average=0.8)
    model, history, val_arrays = fit_tiny_unet(cfg, tmp_path, extra_callbacks=[Watch()])
    rows = list(csv.DictReader(history.open()))
    best = int(np.argmax([float(row["val_score"]) for row in rows]))
    kept = model.get_weights()
    for k, v in zip(kept, seen["scored"][best], strict=True):
        np.testing.assert_array_equal(k, v)
    # the average is not the raw weights (else the test could not fail)
    assert max(np.abs(k - r).max() for k, r in zip(kept, seen["raw"][best], strict=True)) > 1e-4
    # the logged figures are those of the averaged U-Net
    images, masks, labels = val_arrays
    probs = model.predict(images, verbose=0)[..., 0]
    scores = chain_scores(probs, masks, labels, LesionRule(), cfg.false_lesion_weight)
    assert float(rows[best]["val_score"]) == pytest.approx(scores["val_score"], abs=1e-6)
    assert not (tmp_path / "backup").exists()  # finished: the backup (and average) are gone
    with pytest.raises(ValueError, match="weight_average"):
        UnetConfig(weight_average=1.0)


def test_an_ensemble_averages_its_members_probabilities_and_saves_as_one_model(tmp_path):
    from components.train_classifier import ensemble_classifier

    members = [build_classifier(ClassifierConfig(base_filters=4), 16) for _ in range(3)]
    x = np.random.default_rng(0).uniform(0, 1, (6, 16, 16, 2)).astype(np.float32)
    each = np.stack([m.predict(x, verbose=0) for m in members])
    # the members differ (else an average could not be told from one of them)
    assert np.abs(each[0] - each[1]).max() > 1e-3
    ensemble = ensemble_classifier(members)
    np.testing.assert_allclose(ensemble.predict(x, verbose=0), each.mean(axis=0), atol=1e-6)
    assert [layer.name for layer in ensemble.layers[1:4]] == ["member_0", "member_1", "member_2"]
    ensemble.save(tmp_path / "ensemble.keras")
    loaded = keras.models.load_model(tmp_path / "ensemble.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), each.mean(axis=0), atol=1e-6)
    # serving's LiteRT copy of it agrees with Keras (compile_checked raises otherwise)
    from busi.model.lite_runtime import compile_checked

    _, gap = compile_checked(loaded)
    assert gap <= 1e-4
    assert ensemble_classifier(members[:1]) is members[0]
    other = build_classifier(ClassifierConfig(base_filters=4), 16, channels=4)
    with pytest.raises(ValueError, match="different inputs"):
        ensemble_classifier([members[0], other])


def test_an_average_of_u_nets_is_one_segmenter_that_saves_loads_and_compiles(tmp_path):
    from busi.model.lite_runtime import compile_checked
    from busi.model.unet import average_unets, load_unet

    arch = ARCHITECTURES["compact"]
    # one member standardises its input inside it: each keeps its own normalisation
    members = [build_unet(32, arch), build_unet(32, arch), build_unet(32, arch, input_norm="image")]
    x = np.random.default_rng(1).uniform(0, 1, (3, 32, 32, 1)).astype(np.float32)
    each = np.stack([m.predict(x, verbose=0) for m in members])
    assert np.abs(each[0] - each[1]).max() > 1e-3
    segmenter = average_unets(members)
    assert segmenter.input_shape == members[0].input_shape
    assert segmenter.output_shape == members[0].output_shape
    np.testing.assert_allclose(segmenter.predict(x, verbose=0), each.mean(axis=0), atol=1e-6)
    assert [layer.name for layer in segmenter.layers[1:4]] == ["unet_0", "unet_1", "unet_2"]
    segmenter.save(tmp_path / "segmenter.keras")
    loaded = load_unet(tmp_path / "segmenter.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), each.mean(axis=0), atol=1e-6)
    compile_checked(loaded)  # serving's LiteRT copy agrees (it raises otherwise)
    assert average_unets(members[:1]) is members[0]
    with pytest.raises(ValueError, match="different inputs"):
        average_unets([members[0], build_unet(64, arch)])
    with pytest.raises(ValueError, match="at least one"):
        average_unets([])


def _fixed_unet(size: int, scale: float, bias: float, name: str):
    """A stand-in U-Net whose lesion probability is ``scale * pixel + bias`` (known maps)."""
    import keras

    inputs = keras.Input((size, size, 1))
    conv = keras.layers.Conv2D(1, 1, name="p")
    outputs = conv(inputs)
    conv.set_weights([np.full((1, 1, 1, 1), scale, np.float32), np.array([bias], np.float32)])
    return keras.Model(inputs, outputs, name=name)


def test_a_gated_average_keeps_the_mean_only_where_the_first_u_net_finds_a_lesion(tmp_path):
    from busi.model.lite_runtime import compile_checked
    from busi.model.masks import LesionRule
    from busi.model.unet import average_unets, load_unet

    size, rule = 32, LesionRule(threshold=0.5, min_area=0.01)  # 0.01 of 32 x 32: 10.24 px
    # first: the image itself; second: 0.9 everywhere (marks flat grey, as the fold U-Nets did)
    first, second = _fixed_unet(size, 1.0, 0.0, "a"), _fixed_unet(size, 0.0, 0.9, "b")
    x = np.zeros((4, size, size, 1), np.float32)  # 0: blank, nothing reaches 0.5 in `first`
    x[1, :4, :4] = 1.0  # 16 px (1.6 %): a lesion for `first`
    x[2, :3, :3] = 1.0  # 9 px (0.9 %): below min_area, no lesion
    x[3, :4, :4] = 0.5  # exactly the threshold counts
    mean = (x + 0.9) / 2.0
    plain = average_unets([first, second])
    np.testing.assert_allclose(plain.predict(x, verbose=0), mean, atol=1e-6)
    gated = average_unets([first, second], gate=rule)
    expected = mean * np.array([0, 1, 0, 1], np.float32)[:, None, None, None]
    np.testing.assert_allclose(gated.predict(x, verbose=0), expected, atol=1e-6)
    assert gated.output_shape == first.output_shape
    gated.save(tmp_path / "gated.keras")
    loaded = load_unet(tmp_path / "gated.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, atol=1e-6)
    compile_checked(loaded)  # serving's LiteRT copy agrees (it raises otherwise)
    # with fallback, where `first` finds a lesion and the mean none, `first`'s map is kept
    weak = _fixed_unet(size, 0.0, 0.0, "c")  # marks nothing: the mean of it and `first` is x / 2
    fallback = average_unets([first, weak], gate=rule, fallback=True)
    x[3, :4, :4] = 1.0  # the mean (0.5) still reaches the threshold here: the mean is kept
    x[1, :4, :4] = 0.8  # the mean (0.4) does not: `first`'s map (0.8) is kept
    expected = np.stack([x[0] * 0, x[1], x[2] * 0, x[3] / 2])
    np.testing.assert_allclose(fallback.predict(x, verbose=0), expected, atol=1e-6)
    fallback.save(tmp_path / "fallback.keras")
    loaded = load_unet(tmp_path / "fallback.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, atol=1e-6)
    compile_checked(loaded)
    # a single member is returned as it is, gate or not
    assert average_unets([first], gate=rule) is first


def test_ensemble_members_train_from_seeds_100_apart_and_member_0_is_the_single_classifier(
    tmp_path,
):
    from components.train_classifier import fit_classifier, member_configs

    cfg = ClassifierConfig(base_filters=4, epochs=2, batch_size=8, patience=2, seed=7, members=2)
    assert [m.seed for m in member_configs(cfg)] == [7, 107]
    assert {m.members for m in member_configs(cfg)} == {1}
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (24, 16, 16, 2)).astype(np.float32)
    y = np.arange(24) % 3
    ensemble = fit_classifier(x, y, x, y, cfg, tmp_path / "history.csv")
    single = fit_classifier(x, y, x, y, member_configs(cfg)[0], tmp_path / "single.csv")
    member_0 = ensemble.get_layer("member_0")
    for a, b in zip(member_0.get_weights(), single.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    member_1 = ensemble.get_layer("member_1")
    assert (
        max(
            np.abs(a - b).max()
            for a, b in zip(member_1.get_weights(), single.get_weights(), strict=True)
        )
        > 1e-4
    )
    import pandas as pd

    history = pd.read_csv(tmp_path / "history.csv")
    assert list(history.columns[:2]) == ["member", "epoch"]
    assert history["member"].tolist() == [0, 0, 1, 1]
    assert "member" not in pd.read_csv(tmp_path / "single.csv").columns
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.csv", "single.csv"]


@pytest.mark.parametrize("members", [0, -1, 1.5, True])
def test_members_must_be_a_whole_number_of_at_least_one(members):
    with pytest.raises(ValueError, match="members"):
        ClassifierConfig(members=members)


def test_train_classifier_saves_an_ensemble_and_logs_each_members_epochs(tmp_path, monkeypatch):
    """The step's shell with ``members: 2``: one saved model of two members, the members in
    the metrics file, each member's epochs in MLflow under a prefix of its own."""
    import json

    import mlflow

    from busi import tracking
    from components.train_classifier import main

    rng = np.random.default_rng(0)
    rois = tmp_path / "rois"
    rois.mkdir()
    for split, n in (("train", 18), ("val", 9)):
        np.savez(
            rois / f"{split}.npz",
            crops=rng.integers(0, 256, (n, 16, 16), dtype=np.uint8),
            channel=rng.uniform(0, 1, (n, 16, 16)).astype(np.float32),
            labels=np.arange(n) % 3,
        )
    params = tmp_path / "params.yaml"
    params.write_text(
        "train_classifier:\n  base_filters: 4\n  epochs: 2\n  batch_size: 8\n  members: 2\n"
    )
    monkeypatch.setenv("BUSI_TRACKING", "on")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    with tracking.pipeline_run("ensemble-test"):
        code = main(
            [
                "--rois",
                str(rois),
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
    assert code == 0
    model = keras.models.load_model(out / "classifier.keras")
    assert [layer.name for layer in model.layers[1:3]] == ["member_0", "member_1"]
    assert json.loads((out / "metrics.json").read_text())["members"] == 2
    run = mlflow.search_runs(filter_string="tags.step = 'train_classifier'", output_format="list")
    history = mlflow.MlflowClient().get_metric_history(run[0].info.run_id, "member_1/val_loss")
    assert [m.step for m in history] == [0, 1]
    assert "member_0/val_loss" in run[0].data.metrics
    assert "val_loss" not in run[0].data.metrics


class _LeftSidedUnet:
    """A stand-in U-Net that is not flip-equivariant: its lesion probability is the image on
    the left half and 0 on the right, so a bright blob on the left is a lesion in one pass
    and half as bright once averaged with the flipped pass."""

    def predict(self, images, batch_size=32, verbose=0):
        images = np.asarray(images, np.float32)
        left = np.arange(images.shape[2]) < images.shape[2] // 2
        return images * left[None, None, :, None]


def test_the_monitor_scores_the_flip_averaged_map_as_the_chain_does():
    from busi.model.chain import segment
    from busi.model.masks import LesionRule
    from busi.model.unet_training import chain_scores, chain_validation, val_probabilities

    images = np.zeros((2, 16, 16, 1), np.float32)
    images[0, 4:10, 1:6] = 0.9  # a lesion image, its lesion left of the centre
    images[1, 2:8, 0:5] = 0.9  # a normal image with a one-sided blob
    masks = np.zeros((2, 16, 16), np.float32)
    masks[0, 4:10, 1:6] = 1.0
    labels = np.array(["benign", "normal"])
    model = _LeftSidedUnet()

    single = val_probabilities(model, images)
    averaged = val_probabilities(model, images, flip=True)
    np.testing.assert_allclose(single, images[..., 0])  # both blobs lie in the left half
    np.testing.assert_allclose(averaged, images[..., 0] / 2)  # left + flipped right, halved
    # the chain's own flip average (segment, from 8-bit images at the U-Net's size)
    raw = [np.round(img[..., 0] * 255).astype(np.uint8) for img in images]
    chain = segment(model, raw, 16, tta_flip=True)
    np.testing.assert_allclose(np.stack(chain), averaged, atol=1 / 255)

    rule = LesionRule(threshold=0.5)
    logged = {}
    for flip, name in ((False, "single"), (True, "averaged")):
        logs = logged.setdefault(name, {})
        callback = chain_validation((images, masks, labels), rule, 0.2, flip=flip)
        callback.set_model(model)
        callback.on_epoch_end(0, logs)
    assert logged["single"]["val_false_lesion_rate"] == 1.0  # the blob is a lesion in one pass
    assert logged["averaged"]["val_false_lesion_rate"] == 0.0  # and under 0.5 once averaged
    assert logged["averaged"] == chain_scores(averaged, masks, labels, rule, 0.2)


def test_fit_unet_hands_monitor_flip_to_the_monitor(tmp_path, monkeypatch):
    from busi.model import unet_training

    seen = []
    real = unet_training.chain_validation

    def spy(*args, **kwargs):
        seen.append(args[4] if len(args) > 4 else kwargs.get("flip"))
        return real(*args, **kwargs)

    monkeypatch.setattr(unet_training, "chain_validation", spy)
    for flip in (True, False):
        cfg = UnetConfig(epochs=1, batch_size=2, patience=1, monitor_flip=flip)
        fit_tiny_unet(cfg, tmp_path / str(flip))
    assert seen == [True, False]
    with pytest.raises(ValueError, match="monitor_flip 'yes' must be true or false"):
        UnetConfig(monitor_flip="yes")
