"""ingest-batch: ready batches from a landing zone (folder or S3 on moto) are validated,
bad files quarantined with reasons, good ones merged under new BUSI names and versioned."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from busi import cli
from busi.data.importer import ingest
from busi.data.synthetic import make_busi_like, synth_pair
from busi.data.validation import ValidateConfig
from busi.data.versions import DATA_DIR, DVC_FILE, Dvc
from busi.errors import BusiError
from components.ingest_batch import (
    LOCK_FILE,
    Batch,
    IngestBatchConfig,
    ingest_batches,
    is_ready,
    main,
    next_numbers,
    workspace_lock,
)
from components.validate_data import run
from tests.conftest import REPO_ROOT, run_dvc

# ---------------------------------------------------------------- building batches


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def put(batch: Path, rel: str, data: bytes) -> bytes:
    path = batch / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def put_image(
    batch: Path,
    rel: str,
    seed: int,
    size: tuple[int, int] = (90, 100),
    lesions: int = 1,
    with_mask: bool = True,
) -> bytes:
    """A synthetic image (class from its folder) and, unless told not to, its masks."""
    label = rel.split("/")[0]
    img, masks = synth_pair(np.random.default_rng(seed), label, *size, n_lesions=lesions)
    if label == "normal":
        masks = [np.zeros(size, dtype=bool)]
    stem = rel.rsplit(".", 1)[0]
    for k, mask in enumerate(masks if with_mask else []):
        put(batch, f"{stem}_mask{'' if k == 0 else f'_{k}'}.png", _png(mask.astype(np.uint8) * 255))
    return put(batch, rel, _png(img))


def ready(batch: Path) -> Path:
    put(batch, "_READY", b"")
    return batch


# ---------------------------------------------------------------- a versioned workspace


@pytest.fixture(scope="session")
def template(tmp_path_factory) -> Path:
    """A DVC project holding a synthetic corpus (3 images a class), pushed to a local remote.
    Built once; each test works on a copy."""
    base = tmp_path_factory.mktemp("ingest-batch-template")
    repo = base / "project"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    run_dvc(repo, "init", "-q")
    shutil.copy(REPO_ROOT / "params.yaml", repo / "params.yaml")
    make_busi_like(base / "source", n_per_class=3, seed=2)
    ingest(base / "source", repo, str(base / "remote"))
    return base


@pytest.fixture
def ws(template, tmp_path) -> Path:
    """A copy of the template project with its own remote; ``ws.parent / 'landing'`` exists."""
    repo, remote = tmp_path / "project", tmp_path / "remote"
    shutil.copytree(template / "project", repo, symlinks=True)
    shutil.copytree(template / "remote", remote)
    config = repo / ".dvc" / "config.local"
    config.write_text(config.read_text().replace(str(template / "remote"), str(remote)))
    (tmp_path / "landing").mkdir()
    return repo


def md5_in_dvc(repo: Path) -> str:
    return yaml.safe_load((repo / DVC_FILE).read_text())["outs"][0]["md5"]


def data_files(repo: Path) -> dict[str, bytes]:
    root = repo / DATA_DIR
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def landing_files(landing: Path) -> set[str]:
    return {p.relative_to(landing).as_posix() for p in landing.rglob("*") if p.is_file()}


# ---------------------------------------------------------------- pure core


def test_readiness_marker_or_quiet_time():
    cfg = IngestBatchConfig(settle_seconds=60)
    uploading = Batch("b", ("benign/a.png",), newest=1000.0)
    assert not is_ready(uploading, cfg, now=1030.0)
    assert is_ready(uploading, cfg, now=1060.0)
    marked = Batch("b", ("_READY", "benign/a.png"), newest=1000.0)
    assert is_ready(marked, cfg, now=1000.0)
    assert not is_ready(Batch("empty", (), newest=0.0), cfg, now=1e9)
    with pytest.raises(ValueError, match="settle_seconds"):
        IngestBatchConfig(settle_seconds=-1)


def test_next_numbers_continue_after_the_highest_never_filling_gaps():
    names = [
        "benign/benign (1).png",
        "benign/benign (7)_mask_1.png",
        "benign/benign (3).png",
        "normal/normal (2).png",
        "malignant/scan.png",
    ]
    assert next_numbers(names) == {"benign": 8, "normal": 3}


# ---------------------------------------------------------------- local landing zone


def test_mixed_batch_quarantines_bad_files_merges_good_ones_and_pushes(ws):
    landing = ws.parent / "landing"
    b1 = landing / "b1"
    existing = data_files(ws)
    previous = md5_in_dvc(ws)
    good = {
        "benign/IMG_001.png": put_image(b1, "benign/IMG_001.png", seed=11),
        "malignant/scan a.png": put_image(b1, "malignant/scan a.png", seed=12, lesions=2),
        "normal/n1.png": put_image(b1, "normal/n1.png", seed=13),
    }
    truncated = put_image(b1, "benign/corrupt.png", seed=14)
    put(b1, "benign/corrupt.png", truncated[: len(truncated) // 2])
    put_image(b1, "benign/nomask.png", seed=15, with_mask=False)
    put_image(b1, "malignant/tiny.png", seed=16, size=(40, 40))
    put(b1, "benign/dup.png", existing["benign/benign (1).png"])
    put(b1, "benign/dup_mask.png", existing["benign/benign (1)_mask.png"])
    put(b1, "benign/notes.txt", b"scanned on the new machine\n")
    put(b1, "README.txt", b"batch from clinic A\n")
    ready(b1)

    result = ingest_batches(str(landing), ws)

    # A new version, recorded and pushed.
    assert result.changed
    assert result.previous_version == previous
    assert result.new_version == md5_in_dvc(ws) != previous
    assert json.loads(run_dvc(ws, "status", "-c", "--json", str(DVC_FILE)).stdout) == {}
    remote = ws.parent / "remote"
    new_image = (ws / DATA_DIR / "benign" / "benign (4).png").read_bytes()
    digest = hashlib.md5(new_image).hexdigest()
    assert (remote / "files" / "md5" / digest[:2] / digest[2:]).is_file()

    # Good images under the next free names, bytes unchanged, masks renamed with them.
    after = data_files(ws)
    assert after["benign/benign (4).png"] == good["benign/IMG_001.png"]
    assert after["malignant/malignant (4).png"] == good["malignant/scan a.png"]
    assert after["normal/normal (4).png"] == good["normal/n1.png"]
    added = set(after) - set(existing)
    assert added == {
        "benign/benign (4).png",
        "benign/benign (4)_mask.png",
        "malignant/malignant (4).png",
        "malignant/malignant (4)_mask.png",
        "malignant/malignant (4)_mask_1.png",
        "normal/normal (4).png",
        "normal/normal (4)_mask.png",
    }
    assert all(after[k] == v for k, v in existing.items())  # nothing old touched
    assert result.accepted == 3
    assert result.quarantined == 6

    # Bad files (with their masks) in the quarantine, each with a reason and a fix.
    quarantine = landing / "_quarantine" / "b1"
    report = json.loads((quarantine / "report.json").read_text())
    codes = {e["path"]: {r["code"] for r in e["reasons"]} for e in report["quarantined"]}
    assert codes == {
        "benign/corrupt.png": {"undecodable"},
        "benign/nomask.png": {"missing_mask"},
        "malignant/tiny.png": {"too_small"},
        "benign/dup.png": {"already_in_dataset"},
        "benign/notes.txt": {"undecodable", "missing_mask"},
        "README.txt": {"unexpected_location"},
    }
    for entry in report["quarantined"]:
        assert all(r["message"] and r["fix"] for r in entry["reasons"])
        assert all((quarantine / rel).is_file() for rel in entry["files"])
    dup = next(e for e in report["quarantined"] if e["path"] == "benign/dup.png")
    assert dup["reasons"][0]["detail"] == "same bytes as benign/benign (1).png"
    assert (quarantine / "benign" / "corrupt_mask.png").is_file()
    tiny = next(e for e in report["quarantined"] if e["path"] == "malignant/tiny.png")
    assert "below 64 px" in tiny["reasons"][0]["detail"]

    # The batch is filed under _done with the original -> new mapping; nothing is lost.
    done = landing / "_done" / "b1"
    done_report = json.loads((done / "report.json").read_text())
    mapping = {a["file"]: a["new_name"] for a in done_report["accepted"]}
    assert mapping == {
        "benign/IMG_001.png": "benign/benign (4).png",
        "malignant/scan a.png": "malignant/malignant (4).png",
        "normal/n1.png": "normal/normal (4).png",
    }
    assert done_report["data_version"] == result.new_version
    assert (done / "malignant" / "scan a_mask_1.png").is_file()
    assert (done / "_READY").is_file()
    assert not (landing / "b1").exists()
    assert result.batches[0].renamed["malignant/scan a_mask_1.png"] == (
        "malignant/malignant (4)_mask_1.png"
    )

    # validate-data accepts the merged images under their new names.
    validated = run(ws / DATA_DIR, ws / "manifest.csv", ws / "validation.json", ValidateConfig())
    status = validated.manifest.set_index("path")["status"]
    assert (status[sorted(mapping.values())] == "accepted").all()

    # A rerun finds nothing to do and changes nothing.
    dvc_text = (ws / DVC_FILE).read_text()
    again = ingest_batches(str(landing), ws)
    assert not again.changed
    assert again.new_version is None
    assert again.version == result.new_version
    assert "no batch" in again.message
    assert (ws / DVC_FILE).read_text() == dvc_text
    assert data_files(ws) == after


def test_entirely_bad_batch_makes_no_version_and_says_why(ws):
    landing = ws.parent / "landing"
    bad = landing / "clinic-b"
    put(bad, "benign/broken.png", b"\x89PNG\r\n\x1a\nnot really")
    put_image(bad, "malignant/m.png", seed=21, with_mask=False)
    ready(bad)
    dvc_text, before = (ws / DVC_FILE).read_text(), data_files(ws)

    result = ingest_batches(str(landing), ws)

    assert not result.changed
    assert result.new_version is None
    assert (ws / DVC_FILE).read_text() == dvc_text
    assert data_files(ws) == before
    assert "no image accepted" in result.message
    # The broken PNG has no mask either; validate-data reports both.
    assert "2 quarantined (missing_mask 2, undecodable 1)" in result.message
    assert result.reasons == {"missing_mask": 2, "undecodable": 1}
    assert (landing / "_quarantine" / "clinic-b" / "benign" / "broken.png").is_file()
    assert (landing / "_quarantine" / "clinic-b" / "report.json").is_file()
    assert not bad.exists()


def test_conflicting_labels_full_masks_and_image_named_folders_are_quarantined(ws):
    """The same file under two classes of one batch (neither copy merged), a mask covering the
    whole image, and folders named like images (empty, or holding the scan) each get their
    reason; the good image of the batch is merged and no file is lost."""
    landing = ws.parent / "landing"
    b = landing / "clinic-c"
    same = put_image(b, "benign/a.png", seed=31)
    put(b, "malignant/b.png", same)
    put(b, "malignant/b_mask.png", (b / "benign" / "a_mask.png").read_bytes())
    full = put_image(b, "malignant/whole.png", seed=32)
    put(b, "malignant/whole_mask.png", _png(np.full((90, 100), 255, np.uint8)))
    (b / "benign" / "c (1).png").mkdir()
    put_image(b, "normal/d.png/scan.png", seed=33)
    good = put_image(b, "normal/n.png", seed=34)
    ready(b)
    sent = landing_files(landing)

    result = ingest_batches(str(landing), ws)

    assert result.accepted == 1
    assert data_files(ws)["normal/normal (4).png"] == good
    quarantine = landing / "_quarantine" / "clinic-c"
    report = json.loads((quarantine / "report.json").read_text())
    by_path = {e["path"]: e for e in report["quarantined"]}
    codes = {path: {r["code"] for r in e["reasons"]} for path, e in by_path.items()}
    assert codes == {
        "benign/a.png": {"label_conflict"},
        "malignant/b.png": {"label_conflict"},
        "malignant/whole.png": {"full_mask"},
        "benign/c (1).png": {"folder_named_like_image"},
        "normal/d.png": {"folder_named_like_image"},
        "normal/d.png/scan.png": {"unexpected_location"},
        "normal/d.png/scan_mask.png": {"unexpected_location"},
    }
    conflict = by_path["benign/a.png"]["reasons"][0]
    assert conflict["detail"] == "same bytes as malignant/b.png"
    assert conflict["fix"]
    assert "100.0%" in by_path["malignant/whole.png"]["reasons"][0]["detail"]
    assert all(r["fix"] for e in report["quarantined"] for r in e["reasons"])
    assert (quarantine / "malignant" / "b.png").read_bytes() == same
    assert (quarantine / "malignant" / "whole.png").read_bytes() == full
    # Every file sent is in _done or the quarantine; only the emptied folders went.
    moved = {rel.split("/", 2)[2] for rel in landing_files(landing)} - {"report.json"}
    assert moved == {rel.split("/", 1)[1] for rel in sent}
    assert not b.exists()


def test_two_batches_are_both_merged_in_name_order_from_the_cli(ws, capsys):
    landing = ws.parent / "landing"
    # Created out of order; b-2 also repeats an image of b-1.
    second = {"benign/x.png": put_image(landing / "b-2", "benign/x.png", seed=32)}
    repeated = put_image(landing / "b-2", "benign/again.png", seed=31)
    first = {
        "benign/y.png": put_image(landing / "b-1", "benign/y.png", seed=31),
        "benign/z.png": put_image(landing / "b-1", "benign/z.png", seed=33),
    }
    assert repeated == first["benign/y.png"]
    ready(landing / "b-2")
    ready(landing / "b-1")
    previous = md5_in_dvc(ws)

    code = main(["--landing", str(landing), "--workspace", str(ws)])

    out = capsys.readouterr().out
    assert code == 0
    assert "NEW DATA" in out
    assert "NO NEW DATA" not in out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["changed"]
    assert summary["previous_version"] == previous
    assert [b["name"] for b in summary["batches"]] == ["b-1", "b-2"]
    assert summary["new_version"] == md5_in_dvc(ws)
    data = data_files(ws)
    assert data["benign/benign (4).png"] == first["benign/y.png"]
    assert data["benign/benign (5).png"] == first["benign/z.png"]
    assert data["benign/benign (6).png"] == second["benign/x.png"]
    assert "benign/benign (7).png" not in data
    again = json.loads((landing / "_quarantine" / "b-2" / "report.json").read_text())
    assert again["quarantined"][0]["path"] == "benign/again.png"
    assert (
        "benign (4).png (accepted from batch b-1)"
        in again["quarantined"][0]["reasons"][0]["detail"]
    )
    assert landing_files(landing / "_done") >= {"b-1/benign/y.png", "b-1/benign/z.png"}
    assert not (landing / "b-1").exists()
    assert not (landing / "b-2").exists()


def test_unsettled_batch_and_underscore_folders_are_left_alone(ws):
    landing = ws.parent / "landing"
    put_image(landing / "uploading", "benign/u.png", seed=41)
    put_image(landing / "_scratch", "benign/s.png", seed=42)
    ready(landing / "_scratch")
    before = landing_files(landing)
    dvc_text = (ws / DVC_FILE).read_text()

    waiting = ingest_batches(str(landing), ws)  # settle_seconds 60 from params.yaml

    assert not waiting.changed
    assert waiting.waiting == ("uploading",)
    assert "not ready" in waiting.message
    assert "uploading" in waiting.message
    assert landing_files(landing) == before
    assert (ws / DVC_FILE).read_text() == dvc_text

    settled = ingest_batches(str(landing), ws, now=time.time() + 61)
    assert settled.changed
    assert [b.name for b in settled.batches] == ["uploading"]
    assert (landing / "_scratch" / "benign" / "s.png").is_file()  # never a batch


def test_unrecorded_changes_in_data_are_refused_and_the_batch_kept(ws):
    landing = ws.parent / "landing"
    put_image(landing / "b1", "benign/a.png", seed=51)
    ready(landing / "b1")
    (ws / DATA_DIR / "benign" / "benign (99).png").write_bytes(b"added by hand")
    before = landing_files(landing)
    with pytest.raises(BusiError, match=r"changes not recorded in data\.dvc.*dvc commit"):
        ingest_batches(str(landing), ws)
    assert landing_files(landing) == before
    assert (ws / DATA_DIR / "benign" / "benign (99).png").read_bytes() == b"added by hand"


def fail_dvc(monkeypatch, command: str, why: str) -> None:
    """Make ``dvc <command>`` fail as it would on a full disk or a lost remote."""
    real = Dvc.__call__

    def dvc(self, *args, **kwargs):
        if args[0] == command:
            raise BusiError(f"`dvc {command}` failed: {why}")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Dvc, "__call__", dvc)


@pytest.mark.parametrize("failing", ["commit", "second move"])
def test_a_failure_mid_merge_leaves_no_half_batch(ws, monkeypatch, failing):
    landing = ws.parent / "landing"
    put_image(landing / "b1", "benign/a.png", seed=61)
    put_image(landing / "b1", "normal/b.png", seed=62)
    ready(landing / "b1")
    before_data, before_landing = data_files(ws), landing_files(landing)
    dvc_text = (ws / DVC_FILE).read_text()
    if failing == "commit":
        fail_dvc(monkeypatch, "commit", "No space left on device")
    else:
        real_replace, calls = os.replace, []

        def replace(src, dst):
            calls.append(dst)
            if len(calls) == 2:
                raise OSError("disk full")
            real_replace(src, dst)

        monkeypatch.setattr("components.ingest_batch.os.replace", replace)

    with pytest.raises((BusiError, OSError)):
        ingest_batches(str(landing), ws)

    assert data_files(ws) == before_data
    assert (ws / DVC_FILE).read_text() == dvc_text
    assert landing_files(landing) == before_landing  # still there to be retried
    assert not (ws / "data" / ".busi-batch.incoming").exists()
    assert json.loads(run_dvc(ws, "status", "--json", str(DVC_FILE)).stdout) == {}
    if failing == "commit":
        monkeypatch.undo()
        retried = ingest_batches(str(landing), ws)
        assert retried.changed
        assert retried.accepted == 2


def test_a_failed_push_is_retried_by_the_next_run(ws, monkeypatch):
    landing = ws.parent / "landing"
    put_image(landing / "b1", "benign/a.png", seed=81)
    ready(landing / "b1")
    fail_dvc(monkeypatch, "push", "remote unreachable")
    with pytest.raises(BusiError, match=r"recorded in data\.dvc but could not be pushed"):
        ingest_batches(str(landing), ws)
    version = md5_in_dvc(ws)
    assert (landing / "_done" / "b1" / "benign" / "a.png").is_file()  # merged, filed away
    status = run_dvc(ws, "status", "-c", "--json", str(DVC_FILE)).stdout
    assert "new" in status, "the new version should not be on the remote yet"

    monkeypatch.undo()
    later = ingest_batches(str(landing), ws)
    assert not later.changed
    assert later.version == version
    assert json.loads(run_dvc(ws, "status", "-c", "--json", str(DVC_FILE)).stdout) == {}


def test_a_second_ingest_waits_for_the_lock(ws):
    landing = ws.parent / "landing"
    with workspace_lock(ws):
        with pytest.raises(BusiError, match="another ingest-batch"):
            ingest_batches(str(landing), ws, lock_timeout=0.3)
        results = []
        worker = threading.Thread(target=lambda: results.append(ingest_batches(str(landing), ws)))
        worker.start()
        worker.join(timeout=1.5)
        assert worker.is_alive(), "it did not wait for the lock"
        assert not results, "it did not wait for the lock"
    worker.join(timeout=60)
    assert results
    assert not results[0].changed
    assert (ws / LOCK_FILE).is_file()


def test_bad_input_gets_clear_errors(ws, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("BUSI_LANDING", raising=False)
    assert cli.main(["ingest-batch", "--workspace", str(ws)]) == 2
    assert "no landing zone given" in capsys.readouterr().err
    with pytest.raises(BusiError, match="does not exist"):
        ingest_batches(str(tmp_path / "missing"), ws)
    with pytest.raises(BusiError, match="only a folder or s3://"):
        ingest_batches("gs://bucket/landing", ws)
    with pytest.raises(BusiError, match="overlap"):
        ingest_batches(str(ws / DATA_DIR / "benign"), ws)
    with pytest.raises(BusiError, match="overlap"):
        ingest_batches(str(ws), ws)  # the project root as landing zone: 'data' is no batch
    with pytest.raises(BusiError, match="not a DVC project"):
        ingest_batches(str(tmp_path / "landing"), tmp_path, params=ws / "params.yaml")
    with pytest.raises(BusiError, match="settle_seconds"):
        ingest_batches(str(tmp_path / "landing"), ws, settle_seconds=-5)
    assert (
        cli.main(["ingest-batch", "--landing", str(tmp_path / "landing"), "--workspace", str(ws)])
        == 0
    )
    assert "NO NEW DATA: nothing to merge: no batch in" in capsys.readouterr().out


# ---------------------------------------------------------------- S3 landing zone


@pytest.mark.slow
def test_s3_landing_zone_on_moto(ws, tmp_path, moto_server, monkeypatch):
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("BUSI_S3_ENDPOINT_URL", moto_server)
    s3 = boto3.client("s3", endpoint_url=moto_server)
    s3.create_bucket(Bucket="clinic")
    local = tmp_path / "upload"
    good = put_image(local / "b1", "malignant/m1.png", seed=71)
    put(local / "b1", "benign/broken.png", b"<html>not found</html>")
    ready(local / "b1")
    put_image(local / "later", "benign/l.png", seed=72)  # no marker, just uploaded
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        s3.upload_file(str(path), "clinic", f"incoming/{path.relative_to(local).as_posix()}")
    # A console "folder" named like an image: an empty key ending in '/'.
    s3.put_object(Bucket="clinic", Key="incoming/b1/benign/benign (9).png/", Body=b"")
    previous = md5_in_dvc(ws)

    result = ingest_batches("s3://clinic/incoming", ws)

    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="clinic")["Contents"]}
    assert result.changed
    assert result.new_version == md5_in_dvc(ws) != previous
    assert result.waiting == ("later",)
    assert (ws / DATA_DIR / "malignant" / "malignant (4).png").read_bytes() == good
    assert not any(k.startswith("incoming/b1/") for k in keys)
    assert {
        "incoming/_done/b1/_READY",
        "incoming/_done/b1/report.json",
        "incoming/_done/b1/malignant/m1.png",
        "incoming/_done/b1/malignant/m1_mask.png",
        "incoming/_quarantine/b1/benign/broken.png",
        "incoming/_quarantine/b1/report.json",
        "incoming/later/benign/l.png",
    } <= keys
    body = s3.get_object(Bucket="clinic", Key="incoming/_quarantine/b1/report.json")["Body"]
    report = json.loads(body.read())
    codes = {e["path"]: [r["code"] for r in e["reasons"]] for e in report["quarantined"]}
    assert codes == {
        "benign/broken.png": ["undecodable", "missing_mask"],
        "benign/benign (9).png": ["folder_named_like_image"],
    }
    assert "s3://clinic/incoming/_quarantine/b1/report.json" in result.reports
    assert json.loads(run_dvc(ws, "status", "-c", "--json", str(DVC_FILE)).stdout) == {}
