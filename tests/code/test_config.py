"""params.yaml sections load into typed configs; mistakes are named."""

from __future__ import annotations

import pytest

from busi.config import load_section
from busi.data.validation import ValidateConfig
from busi.errors import BusiError
from components.split_data import SplitConfig


def test_sections_load_with_lists_as_tuples(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("validate_data:\n  classes: [a, b]\n  lesion_classes: [a]\n")
    cfg = load_section(path, "validate_data", ValidateConfig)
    assert cfg.classes == ("a", "b")
    assert cfg.min_side == ValidateConfig().min_side


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


def test_profiles_merge_over_params_and_unknown_ones_are_named(tmp_path):
    from busi.orchestration.workspace import deep_merge, prepare_workspace
    from tests.conftest import REPO_ROOT

    merged = deep_merge({"a": {"x": 1, "y": 2}, "b": 3}, {"a": {"y": 20}, "c": 4})
    assert merged == {"a": {"x": 1, "y": 20}, "b": 3, "c": 4}
    with pytest.raises(BusiError, match=r"unknown profile 'nightly'.*smoke"):
        prepare_workspace(REPO_ROOT, "nightly", tmp_path / "ws")
    assert prepare_workspace(REPO_ROOT, "default") == REPO_ROOT


def test_a_profile_extends_another_and_a_circle_is_refused(tmp_path):
    import yaml

    from busi.orchestration.workspace import profile_overrides
    from tests.conftest import REPO_ROOT

    quick = profile_overrides(REPO_ROOT, "quick")
    oof = profile_overrides(REPO_ROOT, "quick_oof")
    # quick's settings, with fold U-Nets and out-of-fold crops on top
    assert oof["train_unet"] == quick["train_unet"]
    assert oof["promote_model"] == quick["promote_model"]
    assert quick["train_unet_folds"]["folds"] == 0
    assert oof["train_unet_folds"]["folds"] == 2
    assert oof["crop_rois"] == {**quick["crop_rois"], "train_segmenter": "out_of_fold"}
    assert "extends" not in oof

    profiles = tmp_path / "profiles"
    profiles.mkdir()
    for name, parent in (("a", "b"), ("b", "c"), ("c", "a")):
        (profiles / f"{name}.yaml").write_text(yaml.safe_dump({"extends": parent}))
    with pytest.raises(BusiError, match=r"circle \(a -> b -> c -> a\)"):
        profile_overrides(tmp_path, "a")
    (profiles / "d.yaml").write_text("extends: nightly\n")
    with pytest.raises(BusiError, match="unknown profile 'nightly'"):
        profile_overrides(tmp_path, "d")


def test_smoke_workspace_gets_merged_params_and_its_own_dvc(tmp_path):
    import yaml

    from busi.orchestration.workspace import prepare_workspace
    from tests.conftest import REPO_ROOT

    ws = prepare_workspace(REPO_ROOT, "smoke", tmp_path / "ws")
    params = yaml.safe_load((ws / "params.yaml").read_text())
    smoke = yaml.safe_load((REPO_ROOT / "profiles" / "smoke.yaml").read_text())
    base = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    assert params["augment_data"]["image_size"] == smoke["augment_data"]["image_size"]
    assert params["train_unet"]["architecture"] == base["train_unet"]["architecture"]
    assert "synthetic" not in params  # generator settings are not a stage's params
    assert (ws / ".dvc").is_dir()
    assert (ws / "dvc.yaml").read_text() == (REPO_ROOT / "dvc.yaml").read_text()
    for package in ("components", "busi"):
        assert (ws / package).resolve() == (REPO_ROOT / package).resolve()


def test_one_work_tree_prepared_by_several_processes_at_once_is_made_once(tmp_path):
    """Tasks on one Celery worker (and `busi up`) may prepare the same work tree at the
    same moment; unguarded, the later `dvc init` finds the other's fresh .dvc and fails."""
    import multiprocessing

    from busi.orchestration.workspace import prepare_workspace
    from tests.conftest import REPO_ROOT

    ws = tmp_path / "ws"
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        made = pool.starmap(prepare_workspace, [(REPO_ROOT, "smoke", ws)] * 4)
    assert made == [ws.resolve()] * 4
    assert (ws / ".dvc" / "config").is_file()


def test_a_failed_dvc_init_says_what_dvc_said(tmp_path):
    from busi.orchestration.workspace import dvc_init

    dvc_init(tmp_path)
    with pytest.raises(BusiError, match=r"(?s)dvc init --no-scm.*exists\. Use `-f`"):
        dvc_init(tmp_path)  # a second init: DVC refuses, and its reason reaches the user
