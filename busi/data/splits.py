"""The split's rows joined with the manifest: what the steps after split_data read."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from busi.errors import BusiError


def load_split_rows(manifest_path: Path, splits_path: Path) -> pd.DataFrame:
    """Rows of the split that are in train/val/test, with their mask files."""
    for path, step in ((manifest_path, "validate-data"), (splits_path, "split-data")):
        if not Path(path).is_file():
            raise BusiError(f"{path} not found: run `busi {step}` first")
    splits = pd.read_csv(splits_path)
    manifest = pd.read_csv(manifest_path)[["id", "mask_files"]]
    rows = splits[splits["split"].isin(["train", "val", "test"])].merge(manifest, on="id")
    return rows.reset_index(drop=True)
