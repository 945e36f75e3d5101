"""model_card: the Markdown model card of a registered busi-pipeline version: what it is
for and not for, the data and split behind it, its figures with intervals, per lesion size,
calibration, external and stress results, training cost, lineage and the failure modes the
evaluation found. register_model writes it as the version's description (shown on the
version's page in the MLflow UI) and as an artifact; ``busi show-model`` prints it.

Core: ``render_card`` (plain values in, Markdown out). Shell: ``collect_training_cost``,
``publish_card`` and ``main`` (``busi show-model [--version N]``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from busi import registry
from busi.errors import BusiError
from busi.model.uncertainty import SIZE_LABELS

logger = logging.getLogger(__name__)

CARD_NAME = "model_card.md"
RELIABILITY_NAME = "reliability.png"
# The description of a model version is stored in the backend: MLflow's SQL schema makes
# it VARCHAR(5000), which PostgreSQL enforces (SQLite does not): a longer card failed
# register_model on Postgres after the version was created (found on the local cluster,
# issue 15). The description is cut to fit; the artifact keeps the whole card.
MAX_DESCRIPTION = 5000
HEADLINE_NAMES = {
    "macro_f1": "macro-F1 (3 classes)",
    "accuracy": "accuracy",
    "malignant_recall": "malignant recall (sensitivity)",
    "malignant_auc": "malignant-vs-rest ROC AUC",
    "lesion_dice": "lesion Dice (images with a lesion)",
    "lesion_iou": "lesion IoU",
    "normal_false_lesion_rate": "false lesion on normal images",
    "ece": "expected calibration error",
}
INTENDED_USE = (
    "Research on breast-ultrasound image analysis: outline the lesion in a B-mode image, "
    "crop the region of interest and classify the image as normal, benign or malignant. "
    "Use it to study the method, to compare models, and as a second look beside an expert "
    "in a research setting."
)
MISUSE = (
    "It is **not a diagnostic device** and must not be used to diagnose, to screen, to "
    "decide on biopsy or treatment, or on anyone's care. It has not been validated on "
    "other scanners, sites, populations, Doppler or elastography images, or video frames; "
    "it was trained on one public dataset (BUSI, Al-Dhabyani et al. 2020, one site in "
    "Cairo, women aged 25-75) and will be wrong in ways its test figures do not show."
)
SPLIT_RULES = (
    "Stratified by class with near-duplicate groups as the unit (pHash distance <= 10 of "
    "64 bits, see bench/results/data.md): no group spans two splits. Images in a "
    "label-conflict group (the same image under two classes) go to train only. The test "
    "split is frozen once chosen; a new image that is a near-duplicate of a test image is "
    "excluded rather than trained on. Intervals resample these groups, not images."
)


@dataclass(frozen=True)
class CardInputs:
    version: int | str
    evaluation: dict  # metrics/evaluation.json
    tags: dict[str, str]  # the version's tags (lineage, external.*, stress.*)
    split_counts: dict[str, dict[str, int]]  # split -> class -> images
    params: dict = field(default_factory=dict)  # params.yaml sections that made the model
    training: dict[str, dict] = field(default_factory=dict)  # step -> wall s, peak MiB, machine
    reliability_artifact: str | None = None  # where the diagram lies, if logged


def _num(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ci(entry: dict | None) -> str:
    if not entry or entry.get("value") is None:
        return "n/a"
    if entry.get("low") is None:
        return _num(entry["value"])
    return f"{_num(entry['value'])} [{_num(entry['low'])}, {_num(entry['high'])}]"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def failure_modes(evaluation: dict) -> list[str]:
    """Sentences on where the model fails, counted from the evaluation."""
    out = []
    for bucket, entry in (evaluation.get("per_lesion_size") or {}).items():
        n, missed = entry.get("n_images", 0), entry.get("n_missed", 0)
        if n and missed:
            out.append(
                f"Lesions {SIZE_LABELS.get(bucket, bucket)}: {missed} of {n} missed by the "
                "segmenter (no predicted pixel on the lesion)."
            )
    seg = evaluation.get("segmentation") or {}
    rate, n_normal = seg.get("normal_false_lesion_rate"), seg.get("n_normal")
    if rate and n_normal:
        out.append(
            f"Normal images: a false lesion on {round(rate * n_normal)} of {n_normal} ({rate:.0%})."
        )
    cls = evaluation.get("classification") or {}
    names, matrix = cls.get("class_names") or [], cls.get("confusion_matrix") or []
    if "malignant" in names and matrix:
        m = names.index("malignant")
        row = matrix[m]
        for j, name in enumerate(names):
            if j != m and row[j]:
                out.append(
                    f"Malignant images called {name}: {row[j]} of {sum(row)} (missed cancers)."
                )
        if "benign" in names:
            b = names.index("benign")
            if matrix[b][m]:
                out.append(f"Benign images called malignant: {matrix[b][m]} of {sum(matrix[b])}.")
    bins = (evaluation.get("calibration") or {}).get("bins") or []
    worst = max(
        (b for b in bins if b.get("n_images", 0) >= 5 and b.get("accuracy") is not None),
        key=lambda b: abs(b["confidence"] - b["accuracy"]),
        default=None,
    )
    if worst and abs(worst["confidence"] - worst["accuracy"]) >= 0.1:
        out.append(
            f"Confidence {worst['low']:.1f}-{worst['high']:.1f}: {worst['n_images']} images at "
            f"mean confidence {worst['confidence']:.2f} were right {worst['accuracy']:.0%} of "
            "the time (do not read the probabilities as risks)."
        )
    return out or ["None counted on the test split (it is small: see the intervals)."]


def _prefixed(tags: dict[str, str], prefix: str) -> list[list[str]]:
    return [[k.removeprefix(prefix), v] for k, v in sorted(tags.items()) if k.startswith(prefix)]


def render_card(inputs: CardInputs) -> str:
    ev, tags = inputs.evaluation, inputs.tags
    intervals = ev.get("intervals") or {}
    figures = intervals.get("figures") or {}
    lines = [
        f"# busi-pipeline v{inputs.version}: model card",
        "",
        "Two-stage chain: a U-Net outlines the lesion, the region of interest around it is "
        "cropped and a CNN classifies it as normal, benign or malignant.",
        "",
        "## Intended use",
        INTENDED_USE,
        "",
        "## Must not be used for",
        MISUSE,
        "",
        "## Data",
        f"Data version (DVC md5 of data/busi): `{tags.get('data_version', 'not recorded')}`.",
        "",
    ]
    splits = [s for s in ("train", "val", "test") if s in inputs.split_counts]
    classes = sorted({c for s in splits for c in inputs.split_counts[s]})
    if splits:
        rows = [[c, *(inputs.split_counts[s].get(c, 0) for s in splits)] for c in classes]
        rows.append(["all", *(sum(inputs.split_counts[s].values()) for s in splits)])
        lines += [*_table(["class", *splits], rows), ""]
    lines += ["## Split and leakage rules", SPLIT_RULES, ""]
    level = intervals.get("level", 0.95)
    lines += [
        f"## Figures on the test split ({ev.get('n_images', '?')} images, "
        f"{intervals.get('n_groups', '?')} near-duplicate groups)",
        f"Value [{level:.0%} interval: {intervals.get('method', 'not computed')}, "
        f"{intervals.get('samples', '?')} resamples]. A difference smaller than the interval's "
        "width is not evidence of a better model.",
        "",
    ]
    if figures:
        lines += _table(
            ["figure", "value [interval]"],
            [[HEADLINE_NAMES.get(k, k), _ci(v)] for k, v in figures.items()],
        )
    else:
        head = ev.get("headline") or {}
        lines += _table(
            ["figure", "value (no interval: evaluated before intervals were computed)"],
            [[HEADLINE_NAMES.get(k, k), _num(v)] for k, v in head.items()],
        )
    per_class = ev.get("per_class") or {}
    if per_class:
        lines += ["", "### Per class", ""]
        lines += _table(
            ["class", "images", "precision", "recall", "F1"],
            [
                [
                    c,
                    e.get("n_images"),
                    _ci(e.get("precision")),
                    _ci(e.get("recall")),
                    _ci(e.get("f1")),
                ]
                for c, e in per_class.items()
            ],
        )
    sizes = ev.get("per_lesion_size") or {}
    if sizes:
        lines += ["", "### Per lesion size (share of the image covered by the true lesion)", ""]
        lines += _table(
            ["lesion size", "images", "missed", "lesion Dice", "class accuracy"],
            [
                [
                    SIZE_LABELS.get(k, k),
                    e.get("n_images", 0),
                    e.get("n_missed", 0),
                    _ci(e.get("lesion_dice")),
                    _ci(e.get("accuracy")),
                ]
                for k, e in sizes.items()
            ],
        )
    bins = [b for b in (ev.get("calibration") or {}).get("bins") or [] if b.get("n_images")]
    lines += ["", "## Calibration", ""]
    if bins:
        where = inputs.reliability_artifact or "plots/evaluation/reliability.png"
        lines += [f"Reliability diagram: `{where}`. Top-1 confidence against the share right:", ""]
        lines += _table(
            ["confidence bin", "images", "mean confidence", "share right"],
            [
                [
                    f"{b['low']:.1f}-{b['high']:.1f}",
                    b["n_images"],
                    _num(b["confidence"], 2),
                    _num(b["accuracy"], 2),
                ]
                for b in bins
            ],
        )
    else:
        lines.append("Not computed for this version.")
    lines += ["", "## External validation and stress tests", ""]
    external, stress = _prefixed(tags, registry.EXTERNAL_PREFIX), _prefixed(tags, "stress.")
    if external or stress:
        lines += _table(
            ["test", "figure"],
            [[f"external {k}", v] for k, v in external] + [[f"stress {k}", v] for k, v in stress],
        )
    else:
        lines.append(
            "None recorded for this version: its figures come from the BUSI test split only."
        )
    lines += ["", "## Training cost", ""]
    if inputs.training:
        lines += _table(
            ["step", "wall time", "peak memory", "machine"],
            [
                [
                    step,
                    f"{e['wall_seconds'] / 60:.1f} min" if e.get("wall_seconds") else "n/a",
                    f"{e['peak_mib']:.0f} MiB" if e.get("peak_mib") else "n/a",
                    e.get("machine") or "not recorded",
                ]
                for step, e in inputs.training.items()
            ],
        )
    else:
        lines.append("Not recorded in this tracking store (the training runs are elsewhere).")
    lines += ["", "## Lineage", ""]
    lineage = [
        ["code commit", tags.get("git_commit")],
        ["data version", tags.get("data_version")],
        ["params.yaml md5", tags.get("params_md5")],
        ["dvc.lock md5", tags.get("dvc_lock_md5")],
        ["pipeline (parent) run", tags.get("pipeline_run_id")],
        ["register run", tags.get("register_run_id")],
        ["busi-unet version", tags.get("unet_version")],
        ["busi-classifier version", tags.get("classifier_version")],
        ["profile", tags.get("profile")],
    ]
    lines += _table(["what", "value"], [[k, f"`{v}`"] for k, v in lineage if v])
    if inputs.params:
        lines += ["", "Parameters:", "", "```yaml"]
        import yaml

        lines += yaml.safe_dump(inputs.params, sort_keys=False).rstrip().splitlines()
        lines.append("```")
    lines += ["", "## Known failure modes", ""]
    lines += [f"- {text}" for text in failure_modes(ev)]
    return "\n".join(lines) + "\n"


# The sections a version's description gives up first when the whole card does not fit the
# backend's column: what matters most in the MLflow UI (intended use, misuse, the figures
# with their intervals, the known failure modes) stays; the rest is in the artifact.
DROP_FIRST = (
    "Lineage",
    "Training cost",
    "Calibration",
    "Split and leakage rules",
    "External validation and stress tests",
    "Data",
)


def _sections(card: str) -> list[str]:
    """The card cut before each ``## `` heading (the first part is the title)."""
    parts, current = [], []
    for line in card.splitlines(keepends=True):
        if line.startswith("## ") and current:
            parts.append("".join(current))
            current = []
        current.append(line)
    parts.append("".join(current))
    return parts


def description_of(card: str) -> str:
    """The card as a version's description: whole when it fits the backend's column, else
    with its least needed sections (DROP_FIRST, in that order) replaced by a pointer to the
    artifact that holds the whole card; cut at the end only if that is still too long."""
    if len(card) <= MAX_DESCRIPTION:
        return card
    pointer = f"(in the full card: the artifact {CARD_NAME})\n\n"
    parts = _sections(card)
    for title in DROP_FIRST:
        if len("".join(parts)) <= MAX_DESCRIPTION:
            break
        parts = [
            f"## {title}\n{pointer}" if part.startswith(f"## {title}\n") else part for part in parts
        ]
    text = "".join(parts)
    if len(text) <= MAX_DESCRIPTION:
        return text
    note = f"\n\n(truncated: the full card is the artifact {CARD_NAME})\n"
    return text[: MAX_DESCRIPTION - len(note)] + note


# ---------------------------------------------------------------- shell


def split_counts(splits_csv: Path) -> dict[str, dict[str, int]]:
    import pandas as pd

    splits = pd.read_csv(splits_csv)
    counts = splits.groupby(["split", "class"]).size()
    out: dict[str, dict[str, int]] = {}
    for (split, cls), n in counts.items():
        out.setdefault(str(split), {})[str(cls)] = int(n)
    return out


def collect_training_cost(c, parent_run_id: str | None) -> dict[str, dict]:
    """Wall time, peak memory and machine of the training steps under the pipeline run."""
    if not parent_run_id:
        return {}
    try:
        parent = c.get_run(parent_run_id)
    except Exception:  # the parent run lives in another store
        return {}
    runs = c.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'"
    )
    out = {}
    for run in runs:
        step = run.data.tags.get("step", "")
        if step.startswith("train_"):
            out[step] = {
                "wall_seconds": run.data.metrics.get("step_wall_seconds"),
                "peak_mib": run.data.metrics.get("step_peak_rss_mib"),
                "machine": run.data.tags.get("machine"),
            }
    return dict(sorted(out.items()))


def params_sections(
    params_path: Path, names=("augment_data", "train_unet", "crop_rois", "train_classifier")
) -> dict:
    import yaml

    if not params_path.is_file():
        return {}
    raw = yaml.safe_load(params_path.read_text()) or {}
    return {k: raw[k] for k in names if k in raw}


def publish_card(c, run, version: str, card: str, reliability: Path | None) -> str:
    """The card as the version's description and as artifacts of the register run."""
    import tempfile

    c.update_model_version(registry.PIPELINE_MODEL, version, description=description_of(card))
    if run is None:
        return card
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / CARD_NAME
        path.write_text(card)
        c.log_artifact(run.info.run_id, str(path), "model_card")
    if reliability is not None and reliability.is_file():
        c.log_artifact(run.info.run_id, str(reliability), "model_card")
    c.set_model_version_tag(
        registry.PIPELINE_MODEL,
        version,
        "model_card",
        f"runs:/{run.info.run_id}/model_card/{CARD_NAME}",
    )
    return card


def card_of(c, version: int | None) -> tuple[int, str]:
    """(version, its card): ``version``, or the champion's when None."""
    if version is None:
        info = registry.alias_version(c, registry.PIPELINE_MODEL, registry.CHAMPION)
        if info is None:
            raise BusiError(
                f"{registry.PIPELINE_MODEL} has no champion: pass --version N, or register and "
                "promote a model first"
            )
        version = info.version
    try:
        mv = c.get_model_version(registry.PIPELINE_MODEL, str(version))
    except Exception as exc:
        raise BusiError(f"{registry.PIPELINE_MODEL} has no version {version}") from exc
    if not mv.description:
        raise BusiError(
            f"{registry.PIPELINE_MODEL} v{version} has no model card (it was registered before "
            "cards were written); register the models again to make one"
        )
    return int(version), full_card(c, mv)


def full_card(c, mv) -> str:
    """A version's whole card: its description, or the artifact (tag ``model_card``) when
    the description was cut to fit the backend."""
    source = mv.tags.get("model_card", "")
    if f"artifact {CARD_NAME}" not in mv.description or not source.startswith("runs:/"):
        return mv.description
    import tempfile

    run_id, _, path = source.removeprefix("runs:/").partition("/")
    with tempfile.TemporaryDirectory() as tmp:
        return Path(c.download_artifacts(run_id, path, tmp)).read_text()


def version_description(name: str, version: str, tracking_uri: str) -> str | None:
    """A registered version's whole card (its description, or the artifact when the
    description had to be shortened), or None when it has none."""
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    mv = c.get_model_version(name, str(version))
    return full_card(c, mv) if mv.description else None


def main(argv: list[str] | None = None) -> int:
    from busi.cli import parser_for

    parser = parser_for("show-model")
    parser.add_argument("--version", type=int, default=None, help="default: the champion")
    parser.add_argument("--tracking-uri", default=None, help="default $MLFLOW_TRACKING_URI")
    args = parser.parse_args(argv)
    _, card = card_of(registry.client(args.tracking_uri), args.version)
    print(card, end="")
    return 0


def card_inputs_from_files(
    version,
    evaluation_path: Path,
    tags: dict,
    splits_csv: Path,
    params: Path,
    training: dict,
    reliability_artifact: str | None,
) -> CardInputs:
    return CardInputs(
        version=version,
        evaluation=json.loads(Path(evaluation_path).read_text()),
        tags=tags,
        split_counts=split_counts(splits_csv),
        params=params_sections(params),
        training=training,
        reliability_artifact=reliability_artifact,
    )
