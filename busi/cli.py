"""The `busi` command: one sub-command per pipeline step, named exactly like the step, and the
platform's commands (up, down, serve, app, predict, show-model, run-training, run-step)."""

from __future__ import annotations

import importlib
import logging
import sys
import textwrap

from busi.errors import BusiError

# The one table: command -> (entry point "module:function", what it does in whole sentences).
# Each pipeline step's command is the step's name with '-' for '_' (the DVC stage and the
# Airflow task id), and its module is components/<step>.py; the other commands are entry
# points of the library (busi/).
TABLE: dict[str, tuple[str, str]] = {
    "ingest-data": (
        "components.ingest_data:main",
        "Import the BUSI folder or zip into data/busi and version it with DVC.",
    ),
    "validate-data": (
        "components.validate_data:main",
        "Build the manifest, run the Great Expectations suite and quarantine bad files.",
    ),
    "split-data": (
        "components.split_data:main",
        "Split the accepted images into train, val and test by near-duplicate group, "
        "stratified by class, keeping the test split frozen.",
    ),
    "augment-data": (
        "components.augment_data:main",
        "Resize the split images, augment the train split and write TFRecords.",
    ),
    "train-unet": (
        "components.train_unet:main",
        "Train the U-Net lesion segmenter (an interrupted run resumes).",
    ),
    "train-unet-folds": (
        "components.train_unet_folds:main",
        "Train K U-Nets, each on the train split minus one fold, for out-of-fold train crops "
        "(nothing when train_unet_folds.folds is 0).",
    ),
    "crop-rois": (
        "components.crop_rois:main",
        "Segment every image and crop the region of interest for the classifier.",
    ),
    "train-classifier": (
        "components.train_classifier:main",
        "Train the benign/malignant/normal classifier on the crops.",
    ),
    "evaluate-models": (
        "components.evaluate_models:main",
        "Score the whole chain on the frozen test split, with intervals and behavioural checks.",
    ),
    "stress-test-models": (
        "components.stress_test_models:main",
        "Score the chain on the test split under shifts other sites bring (field of view, "
        "pixel size, gain, blur, speckle, JPEG).",
    ),
    "run-pipeline": (
        "components.run_pipeline:main",
        "Run all stages (dvc repro) for a profile under one MLflow parent run.",
    ),
    "register-model": (
        "components.register_model:main",
        "Register the segmenter, the classifier and the two-stage pipeline model in MLflow "
        "as the challenger.",
    ),
    "evaluate-external": (
        "components.evaluate_external:main",
        "Score a registered version (default: the challenger) on the external datasets in "
        "params.yaml; the figures go on the version and into the promotion guard.",
    ),
    "promote-model": (
        "components.promote_model:main",
        "Make the challenger (or --version N) the champion if the rule in params.yaml says "
        "so; roll back by hand.",
    ),
    "show-model": (
        "busi.model.model_card:main",
        "Print the model card of the champion (or --version N) of busi-pipeline.",
    ),
    "ingest-batch": (
        "components.ingest_batch:main",
        "Validate a batch of new images from the landing zone, quarantine bad files, merge "
        "the good ones and make a new data version.",
    ),
    "reproduce": (
        "components.reproduce:main",
        "Rebuild a past MLflow run from its code commit, data version and params, and "
        "compare the metrics.",
    ),
    "run-training": (
        "busi.orchestration.run_training:main_run_training",
        "Import the data and run the busi_training DAG end to end through Airflow.",
    ),
    "run-step": (
        "busi.orchestration.tasks:main_run_step",
        "Run one step of a busi_training DAG run (what a Kubernetes pod runs).",
    ),
    "serve": (
        "busi.serving.server:main_serve",
        "Serve the champion model over REST on 127.0.0.1; promotions and rollbacks are "
        "followed without a restart.",
    ),
    "predict": (
        "busi.serving.predict:main_predict",
        "Print the champion's answer for image files, one JSON line per image.",
    ),
    "app": (
        "busi.serving.app:main_app",
        "Start the Streamlit page: upload an image, see the lesion outline, ROI and class.",
    ),
    "up": (
        "busi.local.up:main_up",
        "Start the local platform: the MLflow server and Airflow, on 127.0.0.1.",
    ),
    "down": (
        "busi.local.up:main_down",
        "Stop the local platform started by `busi up`.",
    ),
}

COMMANDS = {name: text for name, (_entry, text) in TABLE.items()}


def entry_point(command: str) -> tuple[str, str]:
    """(module, function) of a command."""
    module, function = TABLE[command][0].split(":")
    return module, function


def describe(command: str) -> str:
    """What a command does: its parser's description and its line in `busi --help`."""
    return TABLE[command][1]


def parser_for(command: str, *paths: str):
    """The argument parser of ``busi COMMAND``, described by its line of the table, with
    the shared path options ``paths`` (flags of ``PATH_OPTIONS``)."""
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(prog=f"busi {command}", description=describe(command))
    for flag in paths:
        default, text = PATH_OPTIONS[flag]
        parser.add_argument(
            flag, type=Path, default=Path(default), help=f"{text} (default: %(default)s)"
        )
    return parser


def add_profile_options(parser) -> None:
    """``--profile`` and ``--source``, as run-pipeline and run-training take them."""
    import os
    from pathlib import Path

    parser.add_argument(
        "--profile",
        default=os.environ.get("BUSI_PROFILE", "default"),
        help="default (real data) or a profiles/NAME.yaml (default: $BUSI_PROFILE, else default)",
    )
    parser.add_argument(
        "--source",
        type=Path,
        default=None,
        help="BUSI folder or zip for the default profile (default $BUSI_SOURCE); profiles "
        "with synthetic data (smoke, quick) make their own and ignore $BUSI_SOURCE",
    )


# The path options several steps share: flag -> (default, what it is). The defaults are
# the paths dvc.yaml passes (tests/code/test_cli.py checks that).
PATH_OPTIONS = {
    "--data-dir": ("data/busi", "the BUSI-layout folder of class folders"),
    "--manifest": ("data/manifest.csv", "the manifest that validate-data writes"),
    "--splits": ("data/splits.csv", "the split that split-data writes"),
    "--data": ("data/prepared", "the TFRecords and meta.json that augment-data wrote"),
    "--unet": ("models/unet.keras", "the U-Net that train-unet saved"),
    "--unet-folds": ("models/unet_folds", "the fold U-Nets that train-unet-folds saved"),
    "--classifier": ("models/classifier.keras", "the classifier that train-classifier saved"),
    "--rois": ("data/rois", "the crops and summary.json that crop-rois wrote"),
    "--params": ("params.yaml", "the params file; this step reads its own section"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        "usage: busi COMMAND [options]   (busi COMMAND --help for its options)",
        "",
        "commands:",
    ]
    indent = " " * (width + 4)
    for name, text in COMMANDS.items():
        lines += textwrap.wrap(
            text, 100, initial_indent=f"  {name:<{width}}  ", subsequent_indent=indent
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"busi: unknown command '{command}'\n\n{_usage()}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    module_name, function = entry_point(command)
    entry = getattr(importlib.import_module(module_name), function)
    try:
        return int(entry(rest) or 0)
    except BusiError as exc:
        print(f"busi {command}: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
