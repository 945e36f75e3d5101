"""Fixtures for the checks on the real BUSI dataset.

The dataset lies at ``$BUSI_SOURCE`` (default ``../shared/datasets/busi`` relative to the
project root): a folder with the class folders, its ``Dataset_BUSI_with_GT`` parent, or the
zip. When it is absent every test in this folder is skipped, with the path in the reason.
Validation and the split run once per session into a temporary folder; nothing of the
project (``data/``, ``reports/``) is written.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SOURCE = "../shared/datasets/busi"


def busi_source() -> Path:
    """Where the dataset is said to be; a relative path is relative to the project root."""
    source = Path(os.environ.get("BUSI_SOURCE") or DEFAULT_SOURCE).expanduser()
    return source if source.is_absolute() else (REPO / source).resolve()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    source = busi_source()
    if source.exists():
        return
    skip = pytest.mark.skip(reason=f"BUSI dataset not found at {source}; set BUSI_SOURCE")
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(skip)


@dataclass
class Pipeline:
    """What one validation + split of the real data produced."""

    data_dir: Path
    manifest: pd.DataFrame  # every image, with status, dup_group, label_conflict, phash
    report: dict  # reports/validation.json as a dict
    splits: pd.DataFrame  # data/splits.csv of a fresh split (no previous split)
    split_report: dict  # reports/split.json as a dict
    near_duplicate_max_distance: int


def _data_root(source: Path, scratch: Path) -> Path:
    from busi.data.importer import find_dataset_root

    if source.is_file():
        if source.suffix.lower() != ".zip":
            pytest.fail(f"BUSI_SOURCE={source} is a file but not a zip")
        with zipfile.ZipFile(source) as zf:
            members = [m for m in zf.namelist() if not m.startswith("__MACOSX/")]
            zf.extractall(scratch / "unzipped", members=members)
        return find_dataset_root(scratch / "unzipped")
    return find_dataset_root(source)


@pytest.fixture(scope="session")
def busi(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    from busi.config import load_section
    from busi.data.validation import ValidateConfig
    from components import split_data, validate_data

    source = busi_source()
    if not source.exists():  # also guards a direct call outside this folder
        pytest.skip(f"BUSI dataset not found at {source}; set BUSI_SOURCE")
    scratch = tmp_path_factory.mktemp("busi_real")
    data_dir = _data_root(source, scratch)
    params = REPO / "params.yaml"
    validate_cfg = load_section(params, "validate_data", ValidateConfig)
    split_cfg = load_section(params, "split_data", split_data.SplitConfig)

    manifest_path = scratch / "data" / "manifest.csv"
    splits_path = scratch / "data" / "splits.csv"  # absent: a fresh split, never the repo's
    assert not splits_path.exists()
    result = validate_data.run(
        data_dir, manifest_path, scratch / "reports" / "validation.json", validate_cfg
    )
    split_report = split_data.run(
        manifest_path, splits_path, scratch / "reports" / "split.json", split_cfg
    )
    return Pipeline(
        data_dir=data_dir,
        manifest=result.manifest,
        report=result.report,
        splits=pd.read_csv(splits_path),
        split_report=split_report,
        near_duplicate_max_distance=validate_cfg.near_duplicate_max_distance,
    )
