"""The params check that runs before the pipeline (busi/orchestration/preflight.py)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml

from busi.errors import BusiError
from busi.orchestration.preflight import STAGE_SETTINGS, check_params
from busi.orchestration.workspace import deep_merge, profile_overrides

REPO = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, params: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def _project_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.mark.parametrize("profile", ["default", "smoke", "quick", "quick_oof"])
def test_the_project_params_and_each_profile_pass(tmp_path, profile):
    params = _project_params()
    if profile != "default":
        params = deep_merge(params, profile_overrides(REPO, profile))
    check_params(_write(tmp_path, params))


def test_every_stage_with_settings_is_checked():
    # each stage of dvc.yaml whose section holds settings is in the check
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    params = _project_params()
    with_settings = {s for s in stages if s in params}
    assert with_settings <= set(STAGE_SETTINGS), with_settings - set(STAGE_SETTINGS)


def test_every_problem_is_listed_in_one_error(tmp_path):
    params = _project_params()
    params["train_classifier"]["gamma"] = 3.0
    params["augment_data"]["no_such_key"] = 1
    del params["split_data"]
    params["train_unet_folds"] = [2]
    with pytest.raises(BusiError) as caught:
        check_params(_write(tmp_path, params))
    message = str(caught.value)
    assert "4 setting(s) to mend" in message
    assert "train_unet_folds: holds [2]; write its settings as key: value lines" in message
    assert "nothing was run" in message
    assert "train_classifier: gamma 3.0 must be in [0, 2]" in message
    assert "augment_data: unknown keys ['no_such_key']" in message
    assert "split_data: the section is missing" in message


def test_the_classifier_context_crop_needs_the_context_channels(tmp_path):
    params = _project_params()
    params["train_classifier"]["context_crop"] = 0.5
    params["crop_rois"]["context"] = "image"
    check_params(_write(tmp_path, params))
    params["crop_rois"]["context"] = "none"
    with pytest.raises(
        BusiError, match=re.escape("set crop_rois.context: image or train_classifier")
    ):
        check_params(_write(tmp_path, params))


def test_out_of_fold_crops_need_the_fold_unets(tmp_path):
    params = _project_params()
    params["crop_rois"]["train_segmenter"] = "out_of_fold"
    params["train_unet_folds"]["folds"] = 2
    check_params(_write(tmp_path, params))
    params["train_unet_folds"]["folds"] = 0
    with pytest.raises(BusiError, match=re.escape("train_unet_folds.folds is 0")):
        check_params(_write(tmp_path, params))


def test_an_encoder_unet_needs_an_image_size_it_can_halve_five_times(tmp_path):
    params = _project_params()
    params["augment_data"]["image_size"] = 112  # a multiple of 16: the compact U-Net's 4
    check_params(_write(tmp_path, params))
    params["train_unet"]["architecture"] = "mobilenet_v2"
    with pytest.raises(BusiError) as caught:
        check_params(_write(tmp_path, params))
    assert "augment_data.image_size 112 is not a multiple of 32" in str(caught.value)
    assert "the mobilenet_v2 U-Net" in str(caught.value)
    assert "(e.g. 96)" in str(caught.value)
    params["augment_data"]["image_size"] = 128
    check_params(_write(tmp_path, params))


def test_a_missing_or_broken_params_file_is_refused(tmp_path):
    with pytest.raises(BusiError, match="not found"):
        check_params(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train_unet: [unclosed\n")
    with pytest.raises(BusiError, match="not valid YAML"):
        check_params(broken)


def test_run_pipeline_refuses_bad_settings_before_importing_any_data(tmp_path):
    from components.run_pipeline import run

    ws = tmp_path / "ws"
    with pytest.raises(BusiError, match=re.escape("train_classifier: gamma 3")):
        run("smoke", None, REPO, ws, settings={"train_classifier": {"gamma": 3.0}})
    assert (ws / "params.yaml").is_file()
    assert not (ws / "data" / "busi").exists()
    assert not (ws / "data.dvc").exists()


def test_the_dag_s_first_task_refuses_bad_settings_before_its_parent_run(tmp_path, monkeypatch):
    """busi_training's first task (validate_data) checks params.yaml, so a DAG run, one that
    new data triggered too, stops before anything trains; the later tasks do not check again."""
    from busi.orchestration import tasks

    params = _project_params()
    params["train_classifier"]["contrast"] = 1.5
    _write(tmp_path, params)
    started = []
    monkeypatch.setattr(tasks, "workspace_for", lambda profile: tmp_path)
    monkeypatch.setattr(tasks, "dvc_sync", lambda: False)
    monkeypatch.setattr(tasks, "parent_run", lambda *args: started.append(args) or "parent")
    monkeypatch.setattr(tasks, "step_commands", lambda *a: ([], [sys.executable, "-c", ""], []))
    with pytest.raises(BusiError, match=re.escape("train_classifier: contrast 1.5")):
        tasks.run_step("validate_data", "manual__1", "busi_training", "quick", ())
    assert started == []
    out = tasks.run_step("split_data", "manual__1", "busi_training", "quick", ())
    assert out["step"] == "split_data"
    assert len(started) == 1
