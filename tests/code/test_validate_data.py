"""validate-data on a synthetic corpus salted with every kind of bad file we know of."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from busi.data.synthetic import synth_pair
from busi.data.validation import ValidateConfig, summarize
from busi.errors import BusiError
from components.validate_data import main, run

CFG = ValidateConfig()


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")  # uint16 arrays give 16-bit PNGs
    return buf.getvalue()


def _mask_png(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mask).convert("1").save(buf, format="PNG")
    return buf.getvalue()


def _pair(label: str, seed: int, size: tuple[int, int] = (90, 100)):
    img, masks = synth_pair(np.random.default_rng(seed), label, *size)
    mask = masks[0] if masks else np.zeros(size, dtype=bool)
    return img, mask


def _write(root: Path, rel: str, data: bytes) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def add_bad_files(root: Path) -> dict[str, set[str]]:
    """Salt ``root`` with bad files; return {path: reason codes expected}."""
    expected: dict[str, set[str]] = {}

    def bad(rel: str, data: bytes, *codes: str, mask: bytes | None = None) -> None:
        _write(root, rel, data)
        if mask is not None:
            _write(root, rel.replace(".png", "_mask.png"), mask)
        expected[rel] = set(codes)

    img, mask = _pair("benign", 100)
    good_png, good_mask = _png(img), _mask_png(mask)
    bad("benign/benign (101).png", b"", "undecodable", mask=good_mask)  # zero bytes
    bad("benign/benign (102).png", good_png[: len(good_png) // 2], "undecodable", mask=good_mask)
    jpeg = io.BytesIO()
    Image.fromarray(img).save(jpeg, format="JPEG")
    bad("benign/benign (103).png", jpeg.getvalue(), "undecodable", mask=good_mask)  # not a PNG
    html = b"<!DOCTYPE html><html><body>Access denied</body></html>"
    bad("benign/benign (104).png", html, "undecodable", mask=good_mask)
    huge = _png(np.zeros((5000, 5100), dtype=np.uint8))  # 25.5 M pixels, 25 KB on disk
    bad("benign/benign (105).png", huge, "undecodable", mask=good_mask)
    bad("benign/benign (106).png", good_png, "missing_mask")
    small_mask = _mask_png(mask[:50, :50])
    bad("benign/benign (107).png", good_png, "mask_size_mismatch", mask=small_mask)
    gradient = (np.arange(90 * 100).reshape(90, 100) % 256).astype(np.uint8)
    bad("benign/benign (108).png", good_png, "mask_not_binary", mask=_png(gradient))
    empty = _mask_png(np.zeros_like(mask))
    bad("malignant/malignant (101).png", _png(_pair("malignant", 101)[0]), "empty_mask", mask=empty)
    normal_img, _ = _pair("normal", 102)
    bad("normal/normal (101).png", _png(normal_img), "lesion_on_normal", mask=good_mask)
    bad("cysts/cysts (1).png", good_png, "unknown_class", "odd_filename", mask=good_mask)
    bad("benign/benign (109) copy.png", _png(_pair("benign", 109)[0]), "odd_filename")
    img_dup, mask_dup = _pair("benign", 110)
    _write(root, "benign/benign (110).png", _png(img_dup))
    _write(root, "benign/benign (110)_mask.png", _mask_png(mask_dup))
    bad("benign/benign (111).png", _png(img_dup), "exact_duplicate", mask=_mask_png(mask_dup))
    bad(
        "benign/malignant (112).png",
        _png(_pair("benign", 112)[0]),
        "name_class_mismatch",
        mask=good_mask,
    )
    tiny, tiny_mask = _pair("benign", 113, size=(20, 24))
    bad("benign/benign (113).png", _png(tiny), "too_small", mask=_mask_png(tiny_mask))
    bad(
        "benign/benign (114).png",
        _png(np.full((90, 100), 128, np.uint8)),
        "blank_image",
        mask=good_mask,
    )
    bad("benign/benign (115).png", good_png, "mask_undecodable", mask=b"\x89PNG\r\n\x1a\nbroken")
    bad("benign/notes.txt", b"remember to check benign 3", "odd_filename", "undecodable")
    whole = np.ones_like(mask)
    bad(
        "benign/benign (116).png", _png(_pair("benign", 116)[0]), "full_mask", mask=_mask_png(whole)
    )
    nearly = whole.copy()
    nearly[0, :50] = False  # 99.4 % of the image
    scan = _png(_pair("malignant", 117)[0])
    bad("malignant/malignant (117).png", scan, "full_mask", mask=_mask_png(nearly))
    (root / "benign" / "benign (118).png").mkdir()  # a folder, as a bad unzip can leave
    expected["benign/benign (118).png"] = {"folder_named_like_image"}
    # Files that are not image candidates at all.
    _write(root, "benign/benign (999)_mask.png", good_mask)
    expected["benign/benign (999)_mask.png"] = {"orphan_mask"}
    _write(root, "benign/extra/benign (120).png", good_png)
    expected["benign/extra/benign (120).png"] = {"unexpected_location"}
    return expected


def add_accepted_oddities(root: Path) -> dict[str, str]:
    """Files that are fine after conversion or grouping; returns {id: what must be reported}."""
    img, mask = _pair("benign", 200)
    m = _mask_png(mask)
    _write(root, "benign/benign (201).png", _png(img.astype(np.uint16) * 257))
    _write(root, "benign/benign (201)_mask.png", m)
    pal = Image.fromarray(img).convert("P")
    buf = io.BytesIO()
    pal.save(buf, format="PNG")
    _write(root, "benign/benign (202).png", buf.getvalue())
    _write(root, "benign/benign (202)_mask.png", m)
    rgba = np.dstack([img, img, img, np.full_like(img, 255)])
    _write(root, "benign/benign (203).png", _png(rgba))
    _write(root, "benign/benign (203)_mask.png", m)
    # The same file under two classes, as BUSI's benign (433) = malignant (145).
    other, other_mask = _pair("malignant", 204)
    _write(root, "benign/benign (204).png", _png(other))
    _write(root, "benign/benign (204)_mask.png", _mask_png(other_mask))
    _write(root, "malignant/malignant (204).png", _png(other))
    _write(root, "malignant/malignant (204)_mask.png", _mask_png(other_mask))
    # A near-duplicate: the same scan with a little noise.
    noisy = np.clip(
        other.astype(int) + np.random.default_rng(5).integers(-3, 4, other.shape), 0, 255
    ).astype(np.uint8)
    _write(root, "malignant/malignant (205).png", _png(noisy))
    _write(root, "malignant/malignant (205)_mask.png", _mask_png(other_mask))
    return {
        "benign/benign (201)": "I;16",
        "benign/benign (202)": "P",
        "benign/benign (203)": "RGBA",
    }


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def salted(corpus, tmp_path):
    root, written = corpus
    expected = add_bad_files(root)
    converted = add_accepted_oddities(root)
    before = _tree_digest(root)
    result = run(root, tmp_path / "manifest.csv", tmp_path / "validation.json", CFG)
    return root, written, expected, converted, before, result


def test_every_kind_of_bad_file_is_quarantined_with_its_reason(salted):
    _root, _written, expected, _converted, _before, result = salted
    assert len({c for codes in expected.values() for c in codes}) >= 15
    found = {e["path"]: {r["code"] for r in e["reasons"]} for e in result.report["quarantined"]}
    for path, codes in expected.items():
        assert path in found, f"{path} was not quarantined"
        assert codes <= found[path], f"{path}: expected {codes}, got {found[path]}"
    assert set(found) == set(expected), f"unexpected quarantine: {set(found) - set(expected)}"


def test_every_good_file_survives(salted):
    _root, written, _expected, converted, _before, result = salted
    accepted = set(result.accepted["id"])
    for item in written:
        assert item.image_id in accepted, f"good image {item.image_id} was rejected"
    for image_id in [
        *converted,
        "benign/benign (204)",
        "malignant/malignant (204)",
        "malignant/malignant (205)",
        "benign/benign (110)",
    ]:
        assert image_id in accepted


def test_nothing_is_modified_or_deleted(salted):
    root, _written, _expected, _converted, before, _result = salted
    assert _tree_digest(root) == before


def test_conversions_multi_masks_and_conflicts_are_reported(salted):
    _root, written, _expected, converted, _before, result = salted
    report, manifest = result.report, result.manifest.set_index("id")
    for image_id, mode in converted.items():
        assert manifest.at[image_id, "mode"] == mode
        assert mode in manifest.at[image_id, "conversion"]
    multi = [w for w in written if len(w.mask_paths) > 1 and w.label != "normal"]
    assert multi, "the synthetic corpus should hold an image with two masks"
    reported = {m["id"] for m in report["multi_mask_images"]}
    assert {w.image_id for w in multi} <= reported
    assert ["benign/benign (204)", "malignant/malignant (204)"] in report[
        "same_image_in_two_classes"
    ]
    assert (
        manifest.at["malignant/malignant (205)", "dup_group"]
        == manifest.at["benign/benign (204)", "dup_group"]
    )
    assert manifest.loc[
        ["benign/benign (204)", "malignant/malignant (205)"], "label_conflict"
    ].all()


def test_multiple_masks_are_combined_with_or(corpus, tmp_path):
    root, written = corpus
    item = next(w for w in written if len(w.mask_paths) > 1)
    masks = [np.asarray(Image.open(p)) > 0 for p in item.mask_paths]
    expected = np.logical_or.reduce(masks).mean()
    result = run(root, tmp_path / "m.csv", tmp_path / "r.json", CFG)
    row = result.manifest.set_index("id").loc[item.image_id]
    assert row["n_masks"] == 2
    assert row["lesion_area_fraction"] == pytest.approx(expected)
    assert row["lesion_area_fraction"] > max(m.mean() for m in masks)


def test_manifest_and_report_are_written(salted, tmp_path):
    *_, result = salted
    report = json.loads((tmp_path / "validation.json").read_text())
    assert report["counts"]["quarantined_images"] == len(result.manifest) - len(result.accepted)
    manifest_columns = set(result.manifest.columns)
    for column in (
        "id",
        "class",
        "path",
        "width",
        "height",
        "mode",
        "mask_files",
        "lesion_area_fraction",
        "sha256",
        "phash",
        "dup_group",
    ):
        assert column in manifest_columns
    text = summarize(report)
    assert "quarantined" in text
    assert "benign/benign (101).png" in text


def _cli_args(data_dir: Path, out: Path, params: Path) -> list[str]:
    return ["--data-dir", str(data_dir), "--manifest", str(out / "m.csv"),
            "--report", str(out / "r.json"), "--params", str(params)]  # fmt: skip


def test_too_few_images_fails_with_a_clear_message(tmp_path, capsys):
    from busi.data.synthetic import make_busi_like

    root = tmp_path / "busi"
    make_busi_like(root, n_per_class=4, seed=3)
    params = tmp_path / "params.yaml"
    params.write_text("validate_data:\n  min_images_per_class: 10\n")
    args = _cli_args(root, tmp_path, params)
    with pytest.raises(BusiError, match=r"cannot train.*'benign' has 4 usable images"):
        main(args)
    assert json.loads((tmp_path / "r.json").read_text())["trainable"] is False


def test_no_data_at_all_fails(tmp_path):
    (tmp_path / "busi" / "benign").mkdir(parents=True)
    with pytest.raises(BusiError, match="no usable image"):
        params = tmp_path / "params.yaml"
        params.write_text("validate_data: {}\n")
        main(_cli_args(tmp_path / "busi", tmp_path, params))


def test_missing_data_folder_says_what_to_do(tmp_path):
    with pytest.raises(BusiError, match="busi ingest-data"):
        run(tmp_path / "nope", tmp_path / "m.csv", tmp_path / "r.json", CFG)


def test_cli_exit_code_is_non_zero_on_failure(tmp_path, capsys):
    from busi.cli import main as cli_main

    shutil.copy(Path(__file__).parents[2] / "params.yaml", tmp_path / "params.yaml")
    code = cli_main(
        [
            "validate-data",
            "--data-dir",
            str(tmp_path / "absent"),
            "--params",
            str(tmp_path / "params.yaml"),
        ]
    )
    assert code != 0
    assert "busi ingest-data" in capsys.readouterr().err


def test_near_duplicates_between_the_distances_need_agreeing_pixels():
    import pandas as pd

    from busi.data.validation import find_duplicates

    base = 0x0F0F0F0F0F0F0F0F
    twelve_bits_off = base ^ 0xFFF  # Hamming distance 12
    rows = pd.DataFrame(
        {
            "id": ["benign/a", "benign/b", "benign/c"],
            "class": ["benign"] * 3,
            "sha256": ["1" * 64, "2" * 64, "3" * 64],
            "decode_error": [None] * 3,
            "phash": [f"{base:016x}", f"{twelve_bits_off:016x}", f"{twelve_bits_off:016x}"],
        }
    )
    rng = np.random.default_rng(0)
    same = rng.normal(size=64 * 64)
    thumbs = {
        0: same,
        1: same + rng.normal(scale=0.1, size=same.size),
        2: rng.normal(size=same.size),
    }
    thumbs = {k: (v - v.mean()) / v.std() for k, v in thumbs.items()}
    grouped = find_duplicates(rows, 10, 14, 0.85, thumbs).set_index("id")["dup_group"]
    assert grouped["benign/b"] == grouped["benign/a"]  # 12 bits apart, same pixels
    # c has b's hash (distance 0 to b) so it joins b's group through b, not through pixels.
    assert grouped["benign/c"] == grouped["benign/a"]
    alone = find_duplicates(
        rows.iloc[[0, 2]].reset_index(drop=True), 10, 14, 0.85, {0: thumbs[0], 1: thumbs[2]}
    )
    assert alone["dup_group"].nunique() == 2  # 12 bits apart, unrelated pixels
    only_hash = find_duplicates(rows, 10).set_index("id")["dup_group"]
    assert only_hash["benign/b"] != only_hash["benign/a"]
