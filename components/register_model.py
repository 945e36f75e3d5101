"""register_model: register the trained segmenter, the classifier and the two-stage pyfunc
``busi-pipeline`` in the MLflow model registry, and give the new versions the alias
``challenger``. ``promote_model`` then decides whether the challenger becomes champion.

Each pipeline version carries, as tags, the lineage (code commit, data version, dvc.lock,
params, the pipeline's MLflow run) and its figures on the frozen test split
(``metric.<name>``), which the promotion rule compares.

Safe to retry: the models are fingerprinted (md5 of both model files and the crop
settings); registering the same models again reuses the existing versions instead of
making new ones. If registration fails midway, the versions made so far are deleted, so
the registry never holds half a pipeline. An unreachable tracking server is reported
before anything is written.

Core: ``fingerprint``, ``version_tags`` (pure). Shell: ``register`` and ``main``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from busi import registry
from busi.errors import BusiError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegisterResult:
    pipeline_version: int
    unet_version: int | None
    classifier_version: int | None
    reused: bool
    fingerprint: str


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint(unet: Path, classifier: Path, crop_config: dict) -> str:
    """Identifies what is registered: the two model files, the chain settings and the
    layout of the pyfunc package (so a new layout, e.g. one adding the LiteRT copies, makes
    a new version of the same models)."""
    from busi.model.pipeline_model import PACKAGE_FORMAT

    parts = [
        file_md5(unet),
        file_md5(classifier),
        json.dumps(crop_config, sort_keys=True),
        PACKAGE_FORMAT,
    ]
    return hashlib.md5("|".join(parts).encode()).hexdigest()


def test_split_md5(splits_csv: Path) -> str:
    """The identity of the frozen test split: md5 of its sorted image ids."""
    import pandas as pd

    splits = pd.read_csv(splits_csv)
    ids = sorted(splits.loc[splits["split"] == "test", "id"].astype(str))
    return hashlib.md5("\n".join(ids).encode()).hexdigest()


def evaluation_figures(evaluation: dict) -> dict[str, float]:
    """The figures the promotion rule may compare: the headline metrics plus per-class
    recall and precision (``malignant_recall``, ...)."""
    figures = {
        k: float(v)
        for k, v in evaluation.get("headline", {}).items()
        if isinstance(v, int | float) and v == v  # drop None and NaN
    }
    for cls, scores in evaluation.get("classification", {}).get("per_class", {}).items():
        for key in ("recall", "precision"):
            if isinstance(scores.get(key), int | float):
                figures[f"{cls}_{key}"] = float(scores[key])
    return figures


def behaviour_tag(evaluation: dict) -> str:
    """``passed``, ``failed: <check>, ...``, or empty for an evaluation made before the
    behavioural checks existed."""
    result = evaluation.get("behaviour")
    if not result:
        return ""
    return "passed" if result["passed"] else "failed: " + ", ".join(result["failed"])


def stress_tags(report: dict) -> dict[str, str]:
    """``stress.<shift>.<figure>`` tags from stress_test_models' report: per shift the drop
    in lesion Dice and the share of lesion images called normal (the model card shows them)."""
    tags = {}
    for shift, figures in report.get("shifts", {}).items():
        for key in ("lesion_dice_mean_drop", "lesion_called_normal"):
            if isinstance(figures.get(key), int | float):
                tags[f"stress.{shift}.{key}"] = f"{figures[key]:.4g}"
    return tags


def version_tags(
    figures: dict[str, float], lineage: dict[str, str], extra: dict[str, str]
) -> dict[str, str]:
    tags = {f"{registry.METRIC_PREFIX}{k}": f"{v:.12g}" for k, v in figures.items()}
    return {**tags, **lineage, **{k: v for k, v in extra.items() if v}}


def register(
    unet_path: Path,
    classifier_path: Path,
    rois_summary: Path,
    evaluation_path: Path,
    splits_csv: Path,
    tracking_uri: str | None = None,
    per_image: Path | None = None,
) -> RegisterResult:
    """Register the models; ``per_image`` (default: evaluate_models' ``per_image.csv`` in
    the project's plots/evaluation beside ``evaluation_path``'s metrics folder) is attached
    so that promote_model can pair this version with another image by image."""
    if per_image is None:
        per_image = Path(evaluation_path).resolve().parents[1] / "plots/evaluation/per_image.csv"
    for path, step in (
        (unet_path, "train-unet"),
        (classifier_path, "train-classifier"),
        (rois_summary, "crop-rois"),
        (evaluation_path, "evaluate-models"),
        (splits_csv, "split-data"),
    ):
        if not path.is_file():
            raise BusiError(f"{path} not found: run `busi {step}` (or `dvc repro`) first")
    c = registry.client(tracking_uri)  # fails fast, before anything is written
    crop_config = json.loads(rois_summary.read_text())["config"]
    fp = fingerprint(unet_path, classifier_path, crop_config)
    existing = registry.find_version_by_tag(c, registry.PIPELINE_MODEL, "fingerprint", fp)
    if existing is not None:
        logger.info("these models are already %s v%d", registry.PIPELINE_MODEL, existing.version)
        champion = registry.alias_version(c, registry.PIPELINE_MODEL, registry.CHAMPION)
        if champion is None or champion.version != existing.version:
            registry.set_alias_all(c, registry.CHALLENGER, existing)
        return RegisterResult(
            pipeline_version=existing.version,
            unet_version=_int(existing.tags.get("unet_version")),
            classifier_version=_int(existing.tags.get("classifier_version")),
            reused=True,
            fingerprint=fp,
        )

    import keras

    from busi import tracking
    from busi.model.chain import CropConfig
    from busi.model.pipeline_model import log_pipeline_model
    from busi.model.unet import load_unet

    evaluation = json.loads(evaluation_path.read_text())
    figures = evaluation_figures(evaluation)
    os.environ["MLFLOW_TRACKING_URI"] = c.tracking_uri
    created: list[tuple[str, str]] = []
    with tracking.step_run("register_model", {"fingerprint": fp}) as run:
        extra = {
            "fingerprint": fp,
            "test_split_md5": test_split_md5(splits_csv),
            "pipeline_run_id": os.environ.get("BUSI_PARENT_RUN_ID", ""),
            "register_run_id": run.info.run_id if run else "",
            registry.BEHAVIOUR_TAG: behaviour_tag(evaluation),
        }
        tags = version_tags(figures, tracking.lineage_tags(), extra)
        stress = Path(evaluation_path).parent / "stress_test.json"
        if stress.is_file():
            tags |= stress_tags(json.loads(stress.read_text()))
        try:
            unet = load_unet(unet_path)
            classifier = keras.models.load_model(classifier_path)
            size = unet.input_shape[1]
            import numpy as np

            unet_info = tracking.log_keras_model(
                unet,
                "unet",
                np.zeros((1, size, size, 1), "float32"),
                registered_model_name=registry.UNET_MODEL,
            )
            created.append((registry.UNET_MODEL, str(unet_info.registered_model_version)))
            cls_input = (1, *classifier.input_shape[1:])
            cls_info = tracking.log_keras_model(
                classifier,
                "classifier",
                np.zeros(cls_input, "float32"),
                registered_model_name=registry.CLASSIFIER_MODEL,
            )
            created.append((registry.CLASSIFIER_MODEL, str(cls_info.registered_model_version)))
            pipe_info = log_pipeline_model(
                unet_path,
                classifier_path,
                CropConfig(**crop_config),
                (unet, classifier),
                registered_model_name=registry.PIPELINE_MODEL,
            )
            created.append((registry.PIPELINE_MODEL, str(pipe_info.registered_model_version)))
            links = {
                "unet_version": str(unet_info.registered_model_version),
                "classifier_version": str(cls_info.registered_model_version),
            }
            for name, version in created:
                for key, value in tags.items():
                    c.set_model_version_tag(name, version, key, value)
            for key, value in links.items():
                c.set_model_version_tag(
                    registry.PIPELINE_MODEL, str(pipe_info.registered_model_version), key, value
                )
            # The per-image predictions, the card and the alias belong to the version too: a
            # failure here removes the versions like any other, so that a retry registers
            # them whole (a retry that found the version would leave it without a card).
            _attach_per_image(c, run, str(pipe_info.registered_model_version), Path(per_image))
            pipeline = registry.version_info(
                c, registry.PIPELINE_MODEL, pipe_info.registered_model_version
            )
            _write_card(c, run, pipeline, evaluation_path, splits_csv, Path(per_image).parent)
            registry.set_alias_all(c, registry.CHALLENGER, pipeline)
        except BaseException:
            for name, version in reversed(created):
                try:
                    c.delete_model_version(name, version)
                except Exception:  # best effort: report the original failure
                    logger.exception("could not delete %s v%s", name, version)
            raise
        if run is not None:
            import mlflow

            mlflow.set_tags({f"registered.{n}": v for n, v in created})
    return RegisterResult(
        pipeline_version=pipeline.version,
        unet_version=int(links["unet_version"]),
        classifier_version=int(links["classifier_version"]),
        reused=False,
        fingerprint=fp,
    )


def _attach_per_image(c, run, version: str, per_image: Path) -> None:
    """Log the per-image predictions on the register run and point a version tag at them."""
    if run is None or not per_image.is_file():
        logger.warning(
            "%s v%s has no per-image predictions (%s): promote_model will compare its point "
            "figures only; run `busi evaluate-models` and register with tracking on",
            registry.PIPELINE_MODEL,
            version,
            per_image if run is not None else "tracking is off",
        )
        return
    c.log_artifact(run.info.run_id, str(per_image), "evaluation")
    uri = f"runs:/{run.info.run_id}/evaluation/{per_image.name}"
    c.set_model_version_tag(registry.PIPELINE_MODEL, version, registry.PER_IMAGE_TAG, uri)


def _write_card(c, run, pipeline, evaluation_path: Path, splits_csv: Path, plots: Path):
    """The model card: the version's description in the registry and an artifact."""
    from busi.model import model_card

    reliability = plots / model_card.RELIABILITY_NAME
    where = (
        f"runs:/{run.info.run_id}/model_card/{model_card.RELIABILITY_NAME}"
        if run is not None and reliability.is_file()
        else None
    )
    inputs = model_card.card_inputs_from_files(
        pipeline.version,
        evaluation_path,
        pipeline.tags,
        splits_csv,
        Path("params.yaml"),
        model_card.collect_training_cost(c, pipeline.tags.get("pipeline_run_id")),
        where,
    )
    model_card.publish_card(
        c, run, str(pipeline.version), model_card.render_card(inputs), reliability
    )


def _int(value) -> int | None:
    return int(value) if value not in (None, "") else None


def main(argv: list[str] | None = None) -> int:
    from busi.cli import parser_for

    parser = parser_for("register-model", "--unet", "--classifier", "--rois", "--splits")
    parser.add_argument(
        "--evaluation",
        type=Path,
        default=Path("metrics/evaluation.json"),
        help="the figures that evaluate-models wrote (default: %(default)s)",
    )
    parser.add_argument(
        "--per-image",
        type=Path,
        default=Path("plots/evaluation/per_image.csv"),
        help="the per-image predictions that evaluate-models wrote (CSV) (default: %(default)s)",
    )
    parser.add_argument("--tracking-uri", default=None, help="default $MLFLOW_TRACKING_URI")
    args = parser.parse_args(argv)
    result = register(
        args.unet,
        args.classifier,
        args.rois / "summary.json",
        args.evaluation,
        args.splits,
        args.tracking_uri,
        per_image=args.per_image,
    )
    verb = "already registered as" if result.reused else "registered"
    print(
        f"{verb} {registry.PIPELINE_MODEL} v{result.pipeline_version} "
        f"({registry.UNET_MODEL} v{result.unet_version}, "
        f"{registry.CLASSIFIER_MODEL} v{result.classifier_version}); "
        f"alias '{registry.CHALLENGER}' unless it is already the champion"
    )
    return 0
