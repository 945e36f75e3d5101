"""Check a workspace's params.yaml before anything runs: every stage's section must load into
its settings, and settings that depend on another stage's must agree. Without this a bad
value in train_classifier, say, is refused only when that stage starts, after the U-Nets have
trained for half an hour.

``check_params`` collects every problem and raises one error that lists them all.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import yaml

from busi.config import from_dict
from busi.errors import BusiError

# params.yaml section -> (module, settings class) that its stage loads it into
STAGE_SETTINGS = {
    "validate_data": ("busi.data.validation", "ValidateConfig"),
    "split_data": ("components.split_data", "SplitConfig"),
    "augment_data": ("components.augment_data", "AugmentConfig"),
    "train_unet": ("busi.model.unet_training", "UnetConfig"),
    "train_unet_folds": ("components.train_unet_folds", "FoldsConfig"),
    "crop_rois": ("busi.model.chain", "CropConfig"),
    "train_classifier": ("components.train_classifier", "ClassifierConfig"),
    "evaluate_models": ("components.evaluate_models", "EvaluateConfig"),
    "stress_test_models": ("components.stress_test_models", "StressConfig"),
}


def stage_problems(raw: dict) -> tuple[list[str], dict]:
    """(problems, {section: settings}) for the sections of ``raw`` (a parsed params.yaml);
    a section that is missing or does not load is a problem."""
    problems, loaded = [], {}
    for section, (module, name) in STAGE_SETTINGS.items():
        if section not in raw:
            problems.append(f"{section}: the section is missing; add it (see README)")
            continue
        values = raw[section] or {}
        if not isinstance(values, dict):
            problems.append(f"{section}: holds {values!r}; write its settings as key: value lines")
            continue
        cls = getattr(importlib.import_module(module), name)
        try:
            # from_dict names the section in its message
            loaded[section] = from_dict(cls, values, where=section)
        except BusiError as exc:
            problems.append(str(exc))
    return problems, loaded


def cross_stage_problems(loaded: dict) -> list[str]:
    """Settings of one stage that need a setting of another."""
    problems = []
    crop, classifier, folds = (
        loaded.get(k) for k in ("crop_rois", "train_classifier", "train_unet_folds")
    )
    if (
        crop is not None
        and classifier is not None
        and classifier.context_crop
        and crop.context != "image"
    ):
        problems.append(
            f"train_classifier.context_crop {classifier.context_crop} changes the classifier's "
            f"context channels, and crop_rois.context is {crop.context!r}, so there are none: "
            "set crop_rois.context: image or train_classifier.context_crop: 0"
        )
    if (
        crop is not None
        and folds is not None
        and crop.train_segmenter == "out_of_fold"
        and folds.folds < 2
    ):
        problems.append(
            f"crop_rois.train_segmenter is out_of_fold, which needs the fold U-Nets, and "
            f"train_unet_folds.folds is {folds.folds}: set train_unet_folds.folds: 2 (or more) "
            "or crop_rois.train_segmenter: full"
        )
    augment, unet = loaded.get("augment_data"), loaded.get("train_unet")
    if augment is not None and unet is not None:
        halvings = 2**unet.arch.depth
        if augment.image_size % halvings:
            problems.append(
                f"augment_data.image_size {augment.image_size} is not a multiple of "
                f"{halvings}, which the {unet.architecture} U-Net (train_unet.architecture) "
                f"halves it by: set augment_data.image_size to a multiple of {halvings} "
                f"(e.g. {max(halvings, augment.image_size // halvings * halvings)})"
            )
    return problems


def check_params(params_path: Path) -> None:
    """Raise one BusiError listing every problem of ``params_path``; return when there is none."""
    params_path = Path(params_path)
    if not params_path.is_file():
        raise BusiError(f"params file {params_path} not found: run from the project root")
    try:
        raw = yaml.safe_load(params_path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise BusiError(f"{params_path} is not valid YAML ({exc}); mend it and run again") from exc
    problems, loaded = stage_problems(raw)
    problems += cross_stage_problems(loaded)
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems)
        raise BusiError(
            f"{params_path}: {len(problems)} setting(s) to mend before the pipeline runs; "
            f"nothing was run:\n{listed}"
        )
