"""params.yaml sections load into typed configs; mistakes are named."""

from __future__ import annotations

import pytest

from components.config import load_section
from components.errors import BusiError
from components.split_data import SplitConfig
from components.validate_data import ValidateConfig


def test_sections_load_with_lists_as_tuples(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("validate_data:\n  classes: [a, b]\n  lesion_classes: [a]\n")
    cfg = load_section(path, "validate_data", ValidateConfig)
    assert cfg.classes == ("a", "b") and cfg.min_side == ValidateConfig().min_side


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("split_data:\n  seeed: 1\n", "unknown keys \\['seeed'\\]"),
        ("other: {}\n", "no 'split_data' section"),
        ("split_data:\n  test_fraction: 1.5\n", "must lie in"),
    ],
)
def test_mistakes_are_reported(tmp_path, text, message):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(BusiError, match=message):
        load_section(path, "split_data", SplitConfig)


def test_missing_params_file(tmp_path):
    with pytest.raises(BusiError, match="not found"):
        load_section(tmp_path / "absent.yaml", "split_data", SplitConfig)
