"""ingest-data: versioning with DVC, idempotence, new versions, zip input, S3 remote (moto)."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest
import yaml

from busi.data.importer import ingest, same_tree
from busi.data.synthetic import make_busi_like
from busi.data.versions import DATA_DIR, DVC_FILE
from busi.errors import BusiError
from tests.conftest import run_dvc


@pytest.fixture
def source(tmp_path: Path) -> Path:
    root = tmp_path / "Dataset_BUSI_with_GT"
    make_busi_like(root, n_per_class=3, seed=2)
    (root / "README.txt").write_text("not an image, beside the class folders\n")
    return root


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    return tmp_path / "remote"


def _md5(repo: Path) -> str:
    return yaml.safe_load((repo / DVC_FILE).read_text())["outs"][0]["md5"]


def test_first_ingest_versions_and_pushes(dvc_project, source, remote):
    result = ingest(source, dvc_project, str(remote))
    assert result.changed
    assert result.previous_version is None
    assert same_tree(source, dvc_project / DATA_DIR)
    assert _md5(dvc_project) == result.version
    assert any(remote.rglob("*")), "nothing was pushed to the remote"
    assert "/busi" in (dvc_project / "data" / ".gitignore").read_text()
    assert (dvc_project / ".dvc" / "config.local").is_file()  # remote is per machine


def test_reingesting_the_same_data_is_a_no_op(dvc_project, source, remote):
    first = ingest(source, dvc_project, str(remote))
    dvc_text = (dvc_project / DVC_FILE).read_text()
    mtimes = {p: p.stat().st_mtime_ns for p in (dvc_project / DATA_DIR).rglob("*")}
    second = ingest(source, dvc_project, str(remote))
    assert not second.changed
    assert second.version == first.version
    assert (dvc_project / DVC_FILE).read_text() == dvc_text
    assert {p: p.stat().st_mtime_ns for p in (dvc_project / DATA_DIR).rglob("*")} == mtimes


def test_changed_data_makes_a_new_version_and_the_old_one_comes_back(
    dvc_project, source, remote, tmp_path
):
    v1 = ingest(source, dvc_project, str(remote))
    v1_dvc = (dvc_project / DVC_FILE).read_text()
    v1_copy = tmp_path / "v1"
    shutil.copytree(source, v1_copy)
    make_busi_like(source, n_per_class=5, seed=4)  # rewrites and adds images
    v2 = ingest(source, dvc_project, str(remote))
    assert v2.changed
    assert v2.version != v1.version
    assert v2.previous_version == v1.version
    assert same_tree(source, dvc_project / DATA_DIR)
    # Back to v1 from the DVC file of that version, first from the cache ...
    (dvc_project / DVC_FILE).write_text(v1_dvc)
    run_dvc(dvc_project, "checkout", "--force", str(DVC_FILE))
    assert same_tree(v1_copy, dvc_project / DATA_DIR)
    # ... and from the remote alone, as on a fresh clone.
    shutil.rmtree(dvc_project / ".dvc" / "cache")
    shutil.rmtree(dvc_project / DATA_DIR)
    run_dvc(dvc_project, "pull", str(DVC_FILE))
    assert same_tree(v1_copy, dvc_project / DATA_DIR)


def test_zip_source_gives_the_same_version_as_the_folder(dvc_project, source, remote, tmp_path):
    archive = tmp_path / "busi.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(source.rglob("*")):
            zf.write(path, Path("Dataset_BUSI_with_GT") / path.relative_to(source))
    from_zip = ingest(archive, dvc_project, str(remote))
    from_folder = ingest(source, dvc_project, str(remote))
    assert not from_folder.changed
    assert from_folder.version == from_zip.version


def test_uncommitted_changes_in_data_are_not_overwritten(dvc_project, source, remote):
    ingest(source, dvc_project, str(remote))
    precious = dvc_project / DATA_DIR / "benign" / "benign (77).png"
    precious.write_bytes(b"a file someone added by hand")
    make_busi_like(source, n_per_class=4, seed=9)
    with pytest.raises(BusiError, match="changes not recorded"):
        ingest(source, dvc_project, str(remote))
    assert precious.read_bytes() == b"a file someone added by hand"


def test_bad_sources_get_clear_errors(dvc_project, source, tmp_path, remote):
    with pytest.raises(BusiError, match="does not exist"):
        ingest(tmp_path / "missing", dvc_project, str(remote))
    (tmp_path / "photos" / "cats").mkdir(parents=True)
    with pytest.raises(BusiError, match="does not look like BUSI"):
        ingest(tmp_path / "photos", dvc_project, str(remote))
    (tmp_path / "broken.zip").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(BusiError, match="not a readable zip"):
        ingest(tmp_path / "broken.zip", dvc_project, str(remote))
    with pytest.raises(BusiError, match="inside the work tree"):
        ingest(source, dvc_project, str(dvc_project / "remote"))
    with pytest.raises(BusiError, match="not a DVC project"):
        ingest(tmp_path / "photos", tmp_path, str(remote))


@pytest.mark.slow
def test_s3_remote_round_trip(dvc_project, source, moto_server, monkeypatch):
    import boto3

    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    s3 = boto3.client("s3", endpoint_url=moto_server)
    s3.create_bucket(Bucket="busi-data")
    result = ingest(source, dvc_project, "s3://busi-data/dvc", endpoint_url=moto_server)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="busi-data").get("Contents", [])]
    assert keys
    assert all(k.startswith("dvc/") for k in keys)
    # A fresh copy of the project with no cache and no data pulls it back from S3.
    shutil.rmtree(dvc_project / ".dvc" / "cache")
    shutil.rmtree(dvc_project / DATA_DIR)
    run_dvc(dvc_project, "pull", str(DVC_FILE))
    assert same_tree(source, dvc_project / DATA_DIR)
    assert _md5(dvc_project) == result.version
