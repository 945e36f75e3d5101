"""evaluate_external: score a registered busi-pipeline version (default: the challenger) on
datasets the pipeline never trains on, named in ``params.yaml: evaluate_external.datasets``.

Two layouts:
- ``manifest``: a CSV with columns ``image``, ``mask``, ``label`` (benign, malignant or
  normal; the mask may be empty for normal images) and optional ``patient`` and ``device``;
  relative paths are relative to the CSV's folder.
- ``bus_bra``: the public BUS-BRA layout, ``Images/bus_0001-l.png``,
  ``Masks/mask_0001-l.png`` and ``bus_data.csv`` with columns ``ID``, ``Case`` (the
  patient), ``Pathology`` (benign or malignant) and ``Device``.

Per set, overall and per device: lesion Dice (mean, median), lesion not found, called
normal, malignant recall, benign-vs-malignant AUC and, where the set has normal images,
the false-lesion rate (metrics.robustness_figures; the chain is evaluate_models'). A file
that is missing or cannot be read is reported and skipped; a set that cannot be read at
all is reported and skipped. The overall figures go on the model version as tags
``external.<set>.<figure>`` (the promotion guard compares ``external.<set>.<guard>`` of the
challenger and the champion), the whole report as an artifact of the version's run (tag
``evaluation.external.<set>``) and to ``reports/external.json``. With no set configured the
step says so and passes.

Core: ``read_manifest``, ``read_bus_bra``, ``load_items``, ``score_set`` (pure but for the
files read and the model called). Shell: ``evaluate`` and ``main``.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from busi import registry
from busi.config import load_section
from busi.data.imaging import ImageDecodeError, decode_image, decode_mask
from busi.data.preprocess import CLASSES, MAX_PIXELS
from busi.errors import BusiError
from busi.model.metrics import robustness_figures, to_jsonable

logger = logging.getLogger(__name__)

LAYOUTS = ("manifest", "bus_bra")
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class ExternalSet:
    name: str  # letters, digits, '_' and '-': it becomes part of tag names
    path: str  # the manifest CSV, or the BUS-BRA folder
    layout: str = "manifest"


@dataclass(frozen=True)
class ExternalConfig:
    model_alias: str = registry.CHALLENGER
    datasets: tuple[dict, ...] = ()  # each {name, path, layout}
    batch_size: int = 32  # images through the chain at a time

    def __post_init__(self) -> None:
        self.sets()

    def sets(self) -> list[ExternalSet]:
        out = []
        for entry in self.datasets:
            if not isinstance(entry, dict) or not {"name", "path"} <= set(entry):
                raise ValueError(f"each dataset needs a name and a path: {entry!r}")
            unknown = set(entry) - {"name", "path", "layout"}
            if unknown:
                raise ValueError(f"dataset {entry['name']!r}: unknown keys {sorted(unknown)}")
            one = ExternalSet(**{k: str(v) for k, v in entry.items()})
            if not _NAME.match(one.name):
                raise ValueError(f"dataset name {one.name!r}: use letters, digits, _ and -")
            if one.layout not in LAYOUTS:
                raise ValueError(f"dataset {one.name!r}: layout must be one of {LAYOUTS}")
            out.append(one)
        names = [s.name for s in out]
        if len(set(names)) != len(names):
            raise ValueError(f"dataset names repeat: {names}")
        return out


@dataclass(frozen=True)
class Item:
    image_id: str
    image: Path
    mask: Path | None
    label: str
    patient: str = ""
    device: str = "unknown"


def _problem(item: str, reason: str, detail: str) -> dict:
    return {"item": item, "reason": reason, "detail": detail}


def _text(value) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def _read_csv(path: Path, needed: set[str]) -> pd.DataFrame:
    if not path.is_file():
        raise BusiError(f"{path} not found")
    try:
        table = pd.read_csv(path, dtype=str)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise BusiError(f"{path} is not a readable CSV: {exc}") from exc
    missing = needed - set(table.columns)
    if missing:
        raise BusiError(f"{path} lacks the columns {sorted(missing)}; it has {list(table)}")
    return table


def read_manifest(csv_path: Path) -> tuple[list[Item], list[dict]]:
    """Items of a manifest CSV and the rows that cannot be used (with the reason)."""
    csv_path = Path(csv_path)
    table = _read_csv(csv_path, {"image", "mask", "label"})
    items, problems = [], []
    for n, row in table.iterrows():
        image, mask = _text(row["image"]), _text(row["mask"])
        label = _text(row["label"]).strip().lower()
        name = image or f"row {n + 2}"
        if not image:
            problems.append(_problem(name, "no_image", "the image column is empty"))
        elif label not in CLASSES:
            problems.append(_problem(name, "unknown_label", f"label {row['label']!r}"))
        else:
            items.append(
                Item(
                    image,
                    csv_path.parent / image,
                    csv_path.parent / mask if mask else None,
                    label,
                    _text(row.get("patient")),
                    _text(row.get("device")) or "unknown",
                )
            )
    return items, problems


def read_bus_bra(root: Path) -> tuple[list[Item], list[dict]]:
    """Items of a BUS-BRA folder: ``bus_data.csv`` rows, ``Images/<ID>.png`` and
    ``Masks/mask_<ID without 'bus_'>.png``."""
    root = Path(root)
    table = _read_csv(root / "bus_data.csv", {"ID", "Case", "Pathology", "Device"})
    items, problems = [], []
    for _, row in table.iterrows():
        image_id = _text(row["ID"]).strip()
        label = _text(row["Pathology"]).strip().lower()
        if label not in ("benign", "malignant"):
            problems.append(_problem(image_id, "unknown_label", f"Pathology {row['Pathology']!r}"))
            continue
        stem = image_id.removeprefix("bus_")
        items.append(
            Item(
                image_id,
                root / "Images" / f"{image_id}.png",
                root / "Masks" / f"mask_{stem}.png",
                label,
                _text(row["Case"]),
                _text(row["Device"]) or "unknown",
            )
        )
    return items, problems


def load_items(items: list[Item]) -> tuple[list, list, list[Item], list[dict]]:
    """Images and masks of the items that can be read; the others as problems."""
    images, masks, kept, problems = [], [], [], []
    for item in items:
        try:
            pixels = decode_image(item.image.read_bytes(), max_pixels=MAX_PIXELS).pixels
            if item.mask is None:
                if item.label != "normal":
                    raise ImageDecodeError("no_mask", "a lesion image needs a mask")
                mask = np.zeros(pixels.shape, dtype=bool)
            else:
                mask = decode_mask(item.mask.read_bytes(), max_pixels=MAX_PIXELS)[0]
            if mask.shape != pixels.shape:
                raise ImageDecodeError(
                    "mask_size_mismatch", f"mask {mask.shape} vs image {pixels.shape}"
                )
        except FileNotFoundError as exc:
            problems.append(_problem(item.image_id, "missing_file", str(exc.filename)))
            continue
        except OSError as exc:
            problems.append(_problem(item.image_id, "unreadable", str(exc)))
            continue
        except ImageDecodeError as exc:
            problems.append(_problem(item.image_id, exc.reason, exc.detail))
            continue
        images.append(pixels)
        masks.append(mask)
        kept.append(item)
    return images, masks, kept, problems


def score_set(images, masks, items: list[Item], predict, batch_size: int = 32) -> dict:
    """Figures overall and per device. ``predict``: images -> chain.ChainResult."""
    pred_masks, probas = [], []
    for start in range(0, len(images), batch_size):
        result = predict(images[start : start + batch_size])
        pred_masks += result.masks
        probas.append(result.proba)
    proba = np.concatenate(probas) if probas else np.zeros((0, len(CLASSES)))
    labels = [item.label for item in items]

    def figures(idx: list[int]) -> dict:
        out = robustness_figures(
            [masks[i] for i in idx],
            [labels[i] for i in idx],
            [pred_masks[i] for i in idx],
            proba[idx],
            CLASSES,
        )
        out["n_patients"] = len({items[i].patient for i in idx if items[i].patient})
        if not out["n_normal"]:
            out.pop("normal_false_lesion_rate")  # only for sets with normal images
        return out

    devices = sorted({item.device for item in items})
    return {
        "overall": figures(list(range(len(items)))),
        "per_device": {
            d: figures([i for i, item in enumerate(items) if item.device == d]) for d in devices
        },
    }


def external_tags(dataset: str, overall: dict) -> dict[str, str]:
    """``external.<set>.<figure>`` version tags of the overall numeric figures."""
    return {
        f"{registry.EXTERNAL_PREFIX}{dataset}.{k}": f"{v:.6g}"
        for k, v in overall.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def evaluate_set(one: ExternalSet, predict, batch_size: int, project: Path) -> dict:
    """One set's report; a set that cannot be read is reported, not raised."""
    path = Path(one.path) if Path(one.path).is_absolute() else project / one.path
    try:
        reader = read_bus_bra if one.layout == "bus_bra" else read_manifest
        items, problems = reader(path)
    except BusiError as exc:
        logger.error("external set %s cannot be read: %s", one.name, exc)
        return {"name": one.name, "path": str(path), "status": "unreadable", "error": str(exc)}
    images, masks, kept, bad = load_items(items)
    problems += bad
    for p in problems:
        logger.warning("external set %s: skipped %s (%s: %s)", one.name, *p.values())
    report = {
        "name": one.name,
        "path": str(path),
        "layout": one.layout,
        "n_listed": len(items) + len(problems) - len(bad),
        "n_skipped": len(problems),
        "skipped": problems,
    }
    if not kept:
        return report | {"status": "empty", "error": "no usable image"}
    return report | {"status": "scored", **score_set(images, masks, kept, predict, batch_size)}


def load_chain(c, version: int):
    """The version's chain as a function images -> ChainResult, loaded as serving loads it."""
    from busi.model.chain import predict_chain
    from busi.serving.server import load_pyfunc

    model = load_pyfunc(f"models:/{registry.PIPELINE_MODEL}/{version}", c.tracking_uri)
    inner = model.unwrap_python_model()
    return lambda images: predict_chain(
        images, inner.unet, inner.classifier, inner.crop.roi, inner.crop.tta_flip
    )


def evaluate(
    cfg: ExternalConfig,
    out: Path,
    project: Path = Path("."),
    tracking_uri: str | None = None,
    version: int | None = None,
) -> dict:
    """Score the version on every configured set; tags, artifact and ``out``."""
    sets = cfg.sets()
    if not sets:
        from busi import tracking

        # Still a step run, so the DAG run's tree has every task and says why it was empty.
        with tracking.step_run("evaluate_external", asdict(cfg)) as step:
            if step is not None:
                import mlflow

                mlflow.set_tag("external.note", "no external dataset configured")
        return {"datasets": [], "note": "no external dataset configured"}
    c = registry.client(tracking_uri)
    if version is None:
        info = registry.alias_version(c, registry.PIPELINE_MODEL, cfg.model_alias)
        if info is None:
            raise BusiError(
                f"{registry.PIPELINE_MODEL} has no version with the alias "
                f"'{cfg.model_alias}': run `busi register-model` first"
            )
    else:
        info = registry.version_info(c, registry.PIPELINE_MODEL, version)
    predict = load_chain(c, info.version)
    from busi import tracking

    name, v = registry.PIPELINE_MODEL, str(info.version)
    reports = []
    with tracking.step_run("evaluate_external", asdict(cfg) | {"version": v}) as step:
        for one in sets:
            report = to_jsonable(evaluate_set(one, predict, cfg.batch_size, project))
            reports.append(report)
            if report["status"] != "scored":
                continue
            for key, value in external_tags(one.name, report["overall"]).items():
                c.set_model_version_tag(name, v, key, value)
            tracking.log_metrics(
                {
                    f"{one.name}.{k}": val
                    for k, val in report["overall"].items()
                    if isinstance(val, int | float)
                }
            )
            # The report goes with the version's run; a version made without one (by hand)
            # gets it on this step's run, when tracking is on.
            run_id = c.get_model_version(name, v).run_id or (step.info.run_id if step else None)
            if not run_id:
                logger.warning(
                    "version %s has no run and tracking is off: the report of %s is only in %s",
                    v,
                    one.name,
                    out.parent,
                )
            if run_id:
                path = out.parent / f"external_{one.name}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(report, indent=2) + "\n")
                c.log_artifact(run_id, str(path), "external")
                c.set_model_version_tag(
                    name,
                    v,
                    f"evaluation.external.{one.name}",
                    f"runs:/{run_id}/external/{path.name}",
                )
        result = {"model": name, "version": info.version, "datasets": reports}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        tracking.log_step_outputs({}, artifacts=[out])
    return result


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> int:
    from busi.cli import parser_for

    parser = parser_for("evaluate-external", "--params")
    parser.add_argument("--version", type=int, default=None, help="default: the params' alias")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("reports/external.json"),
        help="where to write the external report (JSON) (default: %(default)s)",
    )
    parser.add_argument("--tracking-uri", default=None, help="default $MLFLOW_TRACKING_URI")
    args = parser.parse_args(argv)
    cfg = load_section(args.params, "evaluate_external", ExternalConfig)
    result = evaluate(cfg, args.out, args.params.resolve().parent, args.tracking_uri, args.version)
    if not result["datasets"]:
        print(
            "no external dataset configured (params.yaml: evaluate_external.datasets); "
            "nothing to score"
        )
        return 0
    print(f"{result['model']} v{result['version']} on external sets (report: {args.out}):")
    for r in result["datasets"]:
        if r["status"] != "scored":
            print(f"  {r['name']}: {r['status']}: {r.get('error')}")
            continue
        o = r["overall"]
        print(
            f"  {r['name']}: {o['n_images']} images ({r['n_skipped']} skipped): lesion Dice "
            f"{_fmt(o['lesion_dice_mean'])} (median {_fmt(o['lesion_dice_median'])}), no "
            f"lesion found {_fmt(o['lesion_not_found'])}, called normal "
            f"{_fmt(o['lesion_called_normal'])}, benign-vs-malignant AUC "
            f"{_fmt(o['benign_malignant_auc'])}"
            + (
                f", false lesion on normal {_fmt(o['normal_false_lesion_rate'])}"
                if "normal_false_lesion_rate" in o
                else ""
            )
        )
    return 0
