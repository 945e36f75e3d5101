"""evaluate_external on sets the tests generate in both layouts (a manifest CSV and the
BUS-BRA folder): bad files are reported and skipped, the figures go on the model version
and into the promotion guard, and with no set configured the step says so and passes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from busi import registry
from busi.data.synthetic import synth_pair
from components import evaluate_external as ee


def _save(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def make_manifest_set(root: Path, seed: int = 0) -> Path:
    """Nine usable images (3 per class, two devices) and three bad rows: a missing file, a
    corrupt PNG and a mask of another size."""
    rng = np.random.default_rng(seed)
    rows = []
    for n, label in enumerate(("benign", "malignant", "normal") * 3):
        image, masks = synth_pair(rng, label, 80, 100)
        _save(root / "img" / f"{n}.png", image)
        mask = ""
        if masks:
            _save(root / "mask" / f"{n}.png", masks[0].astype(np.uint8) * 255)
            mask = f"mask/{n}.png"
        rows.append(f"img/{n}.png,{mask},{label},p{n // 2},{'A' if n % 2 else 'B'}")
    (root / "img" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    _save(root / "mask" / "small.png", np.zeros((10, 10), np.uint8))
    rows += [
        "img/missing.png,,benign,p9,A",
        "img/corrupt.png,,normal,p9,A",
        "img/0.png,mask/small.png,benign,p0,B",
    ]
    path = root / "manifest.csv"
    path.write_text("image,mask,label,patient,device\n" + "\n".join(rows) + "\n")
    return path


def make_bus_bra(root: Path, seed: int = 1) -> Path:
    """Six BUS-BRA-style cases (no normal images there) on two devices, one image missing."""
    rng = np.random.default_rng(seed)
    lines = ["ID,Case,Pathology,Device"]
    for n in range(1, 7):
        label = "benign" if n % 2 else "malignant"
        image, masks = synth_pair(rng, label, 90, 70)  # portrait, as BUS-BRA's images
        image_id = f"bus_{n:04d}-l"
        if n != 6:
            _save(root / "Images" / f"{image_id}.png", image)
        _save(root / "Masks" / f"mask_{n:04d}-l.png", masks[0].astype(np.uint8) * 255)
        lines.append(f"{image_id},{n},{label},{'GE' if n < 4 else 'Toshiba'}")
    (root / "bus_data.csv").write_text("\n".join(lines) + "\n")
    return root


def test_both_layouts_are_read_and_bad_files_are_skipped_with_a_reason(tmp_path):
    items, problems = ee.read_manifest(make_manifest_set(tmp_path / "m"))
    assert len(items) == 12
    assert problems == []
    images, masks, kept, bad = ee.load_items(items)
    assert len(kept) == 9
    assert len(images) == len(masks) == 9
    assert sorted(p["reason"] for p in bad) == [
        "decode_error",
        "mask_size_mismatch",
        "missing_file",
    ]
    items, problems = ee.read_bus_bra(make_bus_bra(tmp_path / "b"))
    assert [i.image.name for i in items][:1] == ["bus_0001-l.png"]
    assert items[0].mask.name == "mask_0001-l.png"
    assert items[0].patient == "1"
    _, _, kept, bad = ee.load_items(items)
    assert len(kept) == 5
    assert [p["reason"] for p in bad] == ["missing_file"]


def test_a_set_that_cannot_be_read_is_reported_not_raised(tmp_path):
    one = ee.ExternalSet("gone", str(tmp_path / "nothing.csv"))
    report = ee.evaluate_set(one, predict=None, batch_size=4, project=tmp_path)
    assert report["status"] == "unreadable"
    assert "not found" in report["error"]
    (tmp_path / "bad.csv").write_text("path,class\nx.png,benign\n")
    report = ee.evaluate_set(ee.ExternalSet("bad", "bad.csv"), None, 4, tmp_path)
    assert report["status"] == "unreadable"
    assert "lacks the columns" in report["error"]


def test_settings_are_checked():
    with pytest.raises(ValueError, match="letters"):
        ee.ExternalConfig(datasets=({"name": "a.b", "path": "x"},))
    with pytest.raises(ValueError, match="layout"):
        ee.ExternalConfig(datasets=({"name": "a", "path": "x", "layout": "dicom"},))
    with pytest.raises(ValueError, match="repeat"):
        ee.ExternalConfig(datasets=({"name": "a", "path": "x"}, {"name": "a", "path": "y"}))


def test_with_no_set_configured_the_step_says_so_and_passes(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("evaluate_external:\n  datasets: []\n")
    assert ee.main(["--params", str(params), "--out", str(tmp_path / "ext.json")]) == 0
    assert "no external dataset configured" in capsys.readouterr().out


@pytest.fixture(scope="module")
def smoke_chain(smoke_run):
    import keras

    from busi.model.chain import predict_chain
    from busi.model.loading import chain_settings

    ws = smoke_run["workspace"]
    from busi.model.unet import load_unet

    unet = load_unet(ws / "models/unet.keras")
    classifier = keras.models.load_model(ws / "models/classifier.keras")
    crop = chain_settings(ws / "data/rois/summary.json")
    return lambda images: predict_chain(images, unet, classifier, crop.roi, crop.tta_flip)


@pytest.mark.slow
def test_figures_overall_and_per_device_on_both_layouts(tmp_path, smoke_chain):
    images, masks, kept, _ = ee.load_items(ee.read_manifest(make_manifest_set(tmp_path))[0])
    report = ee.score_set(images, masks, kept, smoke_chain, batch_size=4)
    overall = report["overall"]
    assert overall["n_images"] == 9
    assert overall["n_normal"] == 3
    assert overall["n_patients"] == 5
    assert "normal_false_lesion_rate" in overall
    assert set(report["per_device"]) == {"A", "B"}
    assert sum(d["n_images"] for d in report["per_device"].values()) == 9
    for key in ("lesion_dice_mean", "lesion_dice_median", "lesion_not_found"):
        assert 0 <= overall[key] <= 1
    images, masks, kept, _ = ee.load_items(ee.read_bus_bra(make_bus_bra(tmp_path / "b"))[0])
    bra = ee.score_set(images, masks, kept, smoke_chain)["overall"]
    assert "normal_false_lesion_rate" not in bra  # no normal images in the set
    assert bra["benign_malignant_auc"] is not None


@pytest.mark.slow
def test_the_figures_go_on_the_version_and_into_the_guard(tmp_path, smoke_chain, monkeypatch):
    from mlflow import MlflowClient

    from tests.code.test_promote_model import BASE, fake_register

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("BUSI_TRACKING", "on")  # the version has no run: the step's holds the report
    version = fake_register(uri, BASE)
    monkeypatch.setattr(ee, "load_chain", lambda c, v: smoke_chain)
    make_manifest_set(tmp_path / "site_a")
    make_bus_bra(tmp_path / "bra")
    params = tmp_path / "params.yaml"
    params.write_text(
        "evaluate_external:\n  datasets:\n"
        "    - {name: site_a, path: site_a/manifest.csv}\n"
        "    - {name: bra, path: bra, layout: bus_bra}\n"
        "    - {name: absent, path: nowhere/manifest.csv}\n"
    )
    out = tmp_path / "reports" / "external.json"
    assert ee.main(["--params", str(params), "--out", str(out), "--tracking-uri", uri]) == 0
    result = json.loads(out.read_text())
    assert [r["status"] for r in result["datasets"]] == ["scored", "scored", "unreadable"]
    c = MlflowClient(tracking_uri=uri, registry_uri=uri)
    info = registry.version_info(c, registry.PIPELINE_MODEL, version)
    external = info.external()
    assert set(external) == {"site_a", "bra"}
    assert external["site_a"]["malignant_recall"] == pytest.approx(
        result["datasets"][0]["overall"]["malignant_recall"], abs=1e-5
    )
    assert info.tags["evaluation.external.bra"].endswith("external/external_bra.json")
