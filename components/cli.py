"""The `busi` command: one sub-command per pipeline step, named exactly like the step."""

from __future__ import annotations

import importlib
import logging
import sys

from components.errors import BusiError

# sub-command -> module in components/ (the step name with '_' for '-').
COMMANDS = {
    "ingest-data": "import the BUSI folder or zip into data/busi and version it with DVC",
    "validate-data": "build the manifest, run the Great Expectations suite, quarantine bad files",
    "split-data": "group-aware stratified train/val/test split with a frozen test set",
    "augment-data": "resize the split images, augment the train split, write TFRecords",
    "train-unet": "train the U-Net lesion segmenter (resumes an interrupted run)",
    "crop-rois": "segment every image and crop the region of interest for the classifier",
    "train-classifier": "train the benign/malignant/normal classifier on the crops",
    "evaluate-models": "score the whole chain on the frozen test split",
    "stress-test-models": "score the chain on the test split under shifts other sites bring "
    "(field of view, pixel size, gain, blur, speckle, JPEG)",
    "run-pipeline": "run all stages (dvc repro) for a profile under one MLflow parent run",
    "register-model": "register the segmenter, the classifier and the two-stage pipeline model "
    "in MLflow as the challenger",
    "evaluate-external": "score a registered version (default: the challenger) on the external "
    "datasets in params.yaml; figures go on the version and into the promotion guard",
    "promote-model": "make the challenger (or --version N) the champion if the rule in "
    "params.yaml says so; roll back by hand",
    "show-model": "print the model card of the champion (or --version N) of busi-pipeline",
    "ingest-batch": "validate a batch of new images from the landing zone, quarantine bad "
    "files, merge the good ones and make a new data version",
    "reproduce": "rebuild a past MLflow run from its code commit, data version and params, "
    "and compare the metrics",
    "run-training": "import the data and run the busi_training DAG end to end through Airflow",
    "run-step": "run one step of a busi_training DAG run (what a Kubernetes pod runs)",
    "serve": "serve the champion model over REST on 127.0.0.1 (follows promotions and "
    "rollbacks without a restart)",
    "predict": "print the champion's answer for image files, one JSON line per image",
    "app": "the Streamlit page: upload an image, see the lesion outline, ROI and class",
    "up": "start the local platform: MLflow server and Airflow, on 127.0.0.1",
    "down": "stop the local platform started by `busi up`",
}

# A command whose module is not named after it.
MODULES = {
    "up": "platform",
    "down": "platform",
    "run-training": "orchestrate",
    "run-step": "orchestrate",
    "serve": "serve_model",
    "predict": "predict_images",
    "app": "app",
    "show-model": "model_card",
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        "usage: busi COMMAND [options]   (busi COMMAND --help for its options)",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
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
    module_name = MODULES.get(command, command.replace("-", "_"))
    module = importlib.import_module(f"components.{module_name}")
    entry = getattr(module, f"main_{command.replace('-', '_')}", None) or module.main
    try:
        return int(entry(rest) or 0)
    except BusiError as exc:
        print(f"busi {command}: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
