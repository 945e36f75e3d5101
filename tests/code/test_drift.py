"""The drift check: the MMD permutation test and the feature report on made-up samples,
then ingest-batch with drift=warn (merged, reported) and drift=block (held in the landing
zone with a report, merged once a person adds _ACCEPT_DRIFT)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from busi.data.synthetic import synth_pair
from busi.model.drift import ACCEPT_MARKER, FEATURES, DriftConfig, compare, image_features, mmd_test
from components.ingest_batch import IngestBatchConfig, ingest_batches, summarize
from tests.code.test_ingest_batch import _png, put, put_image, ready, template, ws  # noqa: F401

CFG = DriftConfig(permutations=499)


def test_mmd_tells_a_shift_from_the_same_distribution():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3))
    same = mmd_test(x, rng.normal(size=(30, 3)), 499)
    shifted = mmd_test(x, rng.normal(loc=1.0, size=(30, 3)), 499)
    assert same["p_value"] > 0.05
    assert shifted["p_value"] < 0.01
    assert shifted["mmd2"] > same["mmd2"]
    with pytest.raises(ValueError, match=">= 2 each"):
        mmd_test(x, x[:1], 99)


def _images(rng, n, gain=1.0, size=(72, 112)):
    rows = []
    for i in range(n):
        label = ("benign", "malignant", "normal")[i % 3]
        h, w = (int(rng.integers(*size)) for _ in range(2))
        img, masks = synth_pair(rng, label, h, w)
        img = np.clip(img.astype(float) * gain, 0, 255).astype(np.uint8)
        rows.append(image_features(img, masks[0] if masks else np.zeros((h, w), bool)))
    return np.stack(rows)


def test_report_says_what_drifted_and_by_how_much():
    rng = np.random.default_rng(1)
    reference = _images(rng, 45)
    assert not compare(reference, _images(rng, 15), CFG)["drifted"]
    brighter = compare(reference, _images(rng, 15, gain=1.8), CFG)
    assert brighter["drifted"]
    assert brighter["tests"]["features"]["p_value"] < 0.01
    moved = {name for name, e in brighter["features"].items() if e["drifted"]}
    assert "intensity_mean" in moved
    assert not moved & {"height", "width", "aspect"}
    assert brighter["features"]["intensity_mean"]["shift_sd"] > 1
    assert "intensity_mean" in brighter["summary"]
    assert brighter["summary"].startswith("DRIFT")
    assert brighter["tests"]["embedding"]["skipped"]
    # An embedding, when given, is tested too.
    emb = compare(
        reference, _images(rng, 15), CFG, rng.normal(size=(45, 4)), rng.normal(size=(15, 4)) + 2
    )
    assert emb["tests"]["embedding"]["drifted"]
    assert emb["drifted"]
    assert len(brighter["features"]) == len(FEATURES)


def test_drift_settings_are_checked():
    with pytest.raises(ValueError, match="drift must be one of"):
        IngestBatchConfig(drift="stop")
    with pytest.raises(ValueError, match="drift_alpha"):
        IngestBatchConfig(drift_alpha=0.7)


def _drift_params(repo, mode: str) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["ingest_batch"] |= {"drift": mode, "drift_permutations": 499}
    (repo / "params.yaml").write_text(yaml.safe_dump(params))


def _bright_batch(batch, n=6):
    """Bigger and brighter scans than the dataset's: another scanner, another gain."""
    rng = np.random.default_rng(9)
    for i in range(n):
        label = ("benign", "malignant", "normal")[i % 3]
        img, masks = synth_pair(rng, label, 260, 380)
        img = np.clip(img.astype(float) * 1.9 + 40, 0, 255).astype(np.uint8)
        mask = masks[0] if label != "normal" else np.zeros(img.shape, bool)
        put(batch, f"{label}/scan{i}_mask.png", _png(mask.astype(np.uint8) * 255))
        put(batch, f"{label}/scan{i}.png", _png(img))
    return ready(batch)


@pytest.mark.slow
def test_block_holds_a_drifted_batch_until_a_person_accepts_it(ws):  # noqa: F811
    landing = ws.parent / "landing"
    _drift_params(ws, "block")
    batch = _bright_batch(landing / "b1")
    before = sorted(p.relative_to(batch).as_posix() for p in batch.rglob("*"))
    result = ingest_batches(landing, ws, settle_seconds=0)
    assert not result.changed
    assert not result.batches
    (held,) = result.held
    assert held["batch"] == "b1"
    assert "DRIFT" in held["why"]
    assert ACCEPT_MARKER in held["why"]
    assert "held (drift)" in result.message
    assert "HELD" in summarize(result)
    # Nothing lost, nothing moved: the batch waits where it was, the report says why.
    assert sorted(p.relative_to(batch).as_posix() for p in batch.rglob("*")) == before
    report = json.loads((landing / "_held" / "b1" / "report.json").read_text())
    assert report["drift"]["drifted"]
    assert report["would_accept"] == 6
    assert report["drift"]["features"]["intensity_mean"]["drifted"]
    assert report["drift"]["features"]["width"]["shift_sd"] > 2

    put(batch, ACCEPT_MARKER, b"")
    again = ingest_batches(landing, ws, settle_seconds=0)
    assert again.changed
    assert again.accepted == 6
    assert not again.held
    (outcome,) = again.batches
    assert outcome.drift["drifted"]
    assert not outcome.drift["hold"]


@pytest.mark.slow
def test_warn_merges_and_reports_and_similar_data_does_not_drift(ws):  # noqa: F811
    landing = ws.parent / "landing"
    _drift_params(ws, "warn")
    _bright_batch(landing / "b1")
    rng = np.random.default_rng(4)
    similar = landing / "b2"
    for i in range(6):
        label = ("benign", "malignant", "normal")[i % 3]
        size = (int(rng.integers(72, 112)), int(rng.integers(72, 112)))
        put_image(similar, f"{label}/new{i}.png", seed=100 + i, size=size)
    ready(similar)
    result = ingest_batches(landing, ws, settle_seconds=0)
    assert result.changed
    assert result.accepted == 12
    assert not result.held
    drifted = {o.name: o.drift["drifted"] for o in result.batches}
    assert drifted == {"b1": True, "b2": False}
    done = json.loads((landing / "_done" / "b1" / "report.json").read_text())
    assert done["drift"]["summary"].startswith("DRIFT")
    assert "drift: DRIFT" in summarize(result)


@pytest.mark.slow
def test_the_unet_encoder_embedding_joins_the_test(smoke_run, tmp_path):
    import pandas as pd
    from PIL import Image

    from busi.model.drift import check_batch

    smoke = smoke_run["workspace"]
    splits = pd.read_csv(smoke / "data/splits.csv")
    test = [smoke / "data/busi" / p for p in splits.loc[splits["split"] == "test", "path"]]
    files = [(p, sorted(p.parent.glob(f"{p.stem}_mask*.png"))) for p in test]
    same = check_batch(smoke, files, CFG)
    assert same["checked"]
    assert same["reference"] == "the train split of data/splits.csv"
    assert same["tests"]["embedding"]["p_value"] > 0.01
    assert not same["drifted"]
    # The same scans through another gain: the encoder sees it as well as the intensities.
    bright = []
    for path, masks in files:
        pixels = np.asarray(Image.open(path).convert("L"), dtype=float)
        out = tmp_path / path.name
        Image.fromarray(np.clip(pixels * 2.2 + 60, 0, 255).astype(np.uint8)).save(out)
        bright.append((out, masks))
    shifted = check_batch(smoke, bright, CFG)
    assert shifted["drifted"]
    assert shifted["tests"]["embedding"]["p_value"] < 0.01
