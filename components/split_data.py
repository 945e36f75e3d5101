"""split_data: a stratified, group-aware train/val/test split with a frozen test set.

Near-duplicate groups from validate_data are the unit of assignment, so no group spans two
splits. Images listed in ``exclude`` (id and reason code, e.g. a known leak the hashes miss)
are kept out of every split; a listed image of the frozen test split is an error, since the
test set never changes. Groups whose members carry different labels go to train only,
never to test. Once a split exists, its images keep their side; new images go to train or
val only, so models trained on later data versions are still scored on the same test set.

Core: ``split_manifest`` (accepted manifest rows + previous split -> new split). Shell:
``main`` reads ``data/manifest.csv`` and the previous ``data/splits.csv``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from busi.config import load_section
from busi.errors import BusiError

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
EXCLUDED = "excluded"
COLUMNS = ["id", "class", "path", "dup_group", "split", "split_reason"]


@dataclass(frozen=True)
class SplitConfig:
    seed: int = 42
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    # Images kept out of every split ({id, reason}: split ``excluded``, reason ``listed:
    # <reason>``), for leaks the near-duplicate hashes do not catch.
    exclude: tuple[dict, ...] = ()

    def __post_init__(self) -> None:
        if not all(
            isinstance(e, dict)
            and set(e) == {"id", "reason"}
            and all(isinstance(v, str) and v.strip() for v in e.values())
            for e in self.exclude
        ):
            raise ValueError("each exclude entry is {id: <image id>, reason: <reason code>}")
        if not (0 < self.val_fraction < 1 and 0 < self.test_fraction < 1):
            raise ValueError("val_fraction and test_fraction must lie in (0, 1)")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must be below 1")

    @property
    def excluded(self) -> dict[str, str]:
        return {e["id"]: e["reason"] for e in self.exclude}

    @property
    def fractions(self) -> dict[str, float]:
        train = 1.0 - self.val_fraction - self.test_fraction
        return {"train": train, "val": self.val_fraction, "test": self.test_fraction}


def _assign_new_groups(
    groups: list[tuple[str, list[int]]],
    labels: pd.Series,
    split: pd.Series,
    allowed: tuple[str, ...],
    cfg: SplitConfig,
) -> None:
    """Greedy stratified assignment: each group goes to the allowed split of its class that is
    furthest below its target share. Mutates ``split``."""
    fractions = cfg.fractions
    for label in sorted(labels.unique()):
        in_class = labels == label
        class_groups = [(name, idx) for name, idx in groups if labels.iloc[idx[0]] == label]
        if not class_groups:
            continue
        total = int(in_class.sum())
        counts = {s: int(((split == s) & in_class).sum()) for s in SPLITS}
        # Splits that are closed (a frozen test set) keep what they hold; the rest share the
        # remaining images in proportion to their fractions.
        open_total = total - sum(counts[s] for s in SPLITS if s not in allowed)
        share = sum(fractions[s] for s in allowed)
        target = {s: fractions[s] / share * open_total for s in allowed}
        # Big groups first so the small ones can even out the counts.
        class_groups.sort(key=lambda g: -len(g[1]))
        for _name, idx in class_groups:
            need = {s: (target[s] - counts[s]) / max(target[s], 1e-9) for s in allowed}
            best = max(allowed, key=lambda s: (need[s], -SPLITS.index(s)))
            split.iloc[idx] = best
            counts[best] += len(idx)


def split_manifest(
    accepted: pd.DataFrame, previous: pd.DataFrame | None, cfg: SplitConfig
) -> tuple[pd.DataFrame, dict]:
    """Assign every accepted image to train/val/test (or excluded, with the reason)."""
    df = accepted[["id", "class", "path", "dup_group", "label_conflict"]].reset_index(drop=True)
    df["label_conflict"] = df["label_conflict"].astype(bool)
    split = pd.Series([None] * len(df), dtype=object)
    reason = pd.Series([""] * len(df), dtype=object)
    before: dict[str, str] = {}
    before_reason: dict[str, str] = {}
    if previous is not None and len(previous):
        kept = previous[previous["split"].isin(SPLITS)]
        before = dict(zip(kept["id"], kept["split"], strict=True))
        before_reason = dict(zip(kept["id"], kept["split_reason"].fillna(""), strict=True))
    frozen = any(s == "test" for s in before.values())
    listed = cfg.excluded
    listed_in_test = sorted(i for i in listed if before.get(i) == "test")
    if listed_in_test:
        raise BusiError(
            f"split_data.exclude lists images of the frozen test split {listed_in_test}: the "
            "test set does not change; exclude their train/val near-duplicates instead"
        )
    unknown = sorted(set(listed) - set(df["id"]))
    if unknown:
        logger.warning("split_data.exclude: ids not in the manifest: %s", unknown)
    for i, image_id in enumerate(df["id"]):
        if image_id in listed:
            split.iloc[i], reason.iloc[i] = EXCLUDED, f"listed: {listed[image_id]}"

    rng = np.random.default_rng(cfg.seed)
    group_names = sorted(df["dup_group"].unique())
    order = rng.permutation(len(group_names))
    new_groups: list[tuple[str, list[int]]] = []
    for pos in order:
        name = group_names[pos]
        idx = [i for i in df.index[df["dup_group"] == name] if split.iloc[i] is None]
        if not idx:
            continue
        old = [before.get(df.at[i, "id"]) for i in idx]
        conflict = bool(df.loc[idx, "label_conflict"].any())
        if "test" in old:
            for i, o in zip(idx, old, strict=True):
                if conflict:
                    split.iloc[i], reason.iloc[i] = (
                        EXCLUDED,
                        "label conflict with a frozen test image",
                    )
                elif o == "test":
                    split.iloc[i], reason.iloc[i] = "test", "frozen"
                else:
                    split.iloc[i] = EXCLUDED
                    reason.iloc[i] = "near-duplicate of a frozen test image"
        elif conflict:
            split.iloc[idx] = "train"
            reason.iloc[idx] = "label conflict: kept out of val/test"
        elif any(o is not None for o in old):
            kept = [o for o in old if o is not None]
            side = max(("train", "val"), key=lambda s: (kept.count(s), s == "train"))
            for i, o in zip(idx, old, strict=True):
                split.iloc[i] = side
                if o == side:
                    reason.iloc[i] = "kept from the previous split"
                elif o is None:
                    reason.iloc[i] = f"new: joins its near-duplicate group in {side}"
                else:
                    reason.iloc[i] = f"moved to {side} with its near-duplicate group"
        else:
            new_groups.append((name, idx))
    allowed = ("train", "val") if frozen else SPLITS
    _assign_new_groups(new_groups, df["class"], split, allowed, cfg)
    for _name, idx in new_groups:
        reason.iloc[idx] = "new" if frozen else "assigned"
    # An image that stays where it was keeps the reason it got there: rerunning on the same
    # data rewrites the same file.
    for i, image_id in enumerate(df["id"]):
        if before.get(image_id) == split.iloc[i] and before_reason.get(image_id):
            reason.iloc[i] = before_reason[image_id]
    df["split"], df["split_reason"] = split.astype("str"), reason.astype("str")
    out = df[COLUMNS].sort_values("id", kind="stable").reset_index(drop=True)
    known = set(previous["id"]) if previous is not None else set()
    return out, split_report(out, df, frozen, known)


def split_report(out: pd.DataFrame, full: pd.DataFrame, frozen: bool, known: set[str]) -> dict:
    used = out[out["split"].isin(SPLITS)]
    spans = used.groupby("dup_group")["split"].nunique()
    table = pd.crosstab(used["split"], used["class"])
    proportions = (table.div(table.sum(axis=1), axis=0)).round(4)
    conflict_ids = set(full.loc[full["label_conflict"], "id"])
    return {
        "frozen_test_set": frozen,
        "images": len(out),
        "new_images": int((~out["id"].isin(list(known))).sum()),
        "per_split": {s: int((out["split"] == s).sum()) for s in (*SPLITS, EXCLUDED)},
        "per_split_class": {s: {c: int(n) for c, n in row.items()} for s, row in table.iterrows()},
        "class_proportions": {
            s: {c: float(v) for c, v in row.items()} for s, row in proportions.iterrows()
        },
        "groups_spanning_splits": sorted(spans[spans > 1].index.to_list()),
        "label_conflict_images": sorted(conflict_ids),
        "label_conflicts_in_test": sorted(
            conflict_ids & set(out.loc[out["split"] == "test", "id"])
        ),
        "excluded": out.loc[out["split"] == EXCLUDED, ["id", "split_reason"]].to_dict("records"),
    }


def summarize(report: dict) -> str:
    per = report["per_split"]
    lines = [
        f"{report['images']} images: train {per['train']}, val {per['val']}, test {per['test']}, "
        f"excluded {per['excluded']} (test set {'frozen' if report['frozen_test_set'] else 'new'}, "
        f"{report['new_images']} new images)."
    ]
    for s, props in report["class_proportions"].items():
        lines.append(f"  {s:<5} " + ", ".join(f"{c} {v:.1%}" for c, v in props.items()))
    lines.append(
        f"{len(report['label_conflict_images'])} images with conflicting labels kept out of test; "
        f"{len(report['groups_spanning_splits'])} near-duplicate groups span two splits."
    )
    return "\n".join(lines)


def run(manifest_path: Path, splits_path: Path, report_path: Path, cfg: SplitConfig) -> dict:
    manifest_path, splits_path = Path(manifest_path), Path(splits_path)
    if not manifest_path.is_file():
        raise BusiError(f"manifest {manifest_path} not found: run `busi validate-data` first")
    manifest = pd.read_csv(manifest_path)
    accepted = manifest[manifest["status"] == "accepted"]
    if accepted.empty:
        raise BusiError(f"{manifest_path} has no accepted image: see reports/validation.json")
    previous = pd.read_csv(splits_path) if splits_path.is_file() else None
    if previous is not None:
        logger.info("keeping the test set of the existing %s", splits_path)
    splits, report = split_manifest(accepted, previous, cfg)
    report["config"] = asdict(cfg)
    splits_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = splits_path.with_suffix(".csv.tmp")
    splits.to_csv(tmp, index=False)
    tmp.replace(splits_path)  # the frozen split is never left half-written
    Path(report_path).parent.mkdir(parents=True, exist_ok=True)
    Path(report_path).write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    from busi.cli import parser_for

    parser = parser_for("split-data", "--manifest", "--splits", "--params")
    parser.add_argument(
        "--report",
        type=Path,
        default=Path("reports/split.json"),
        help="where to write the report (JSON) (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    cfg = load_section(args.params, "split_data", SplitConfig)
    from busi import tracking

    with tracking.step_run("split_data", asdict(cfg)):
        report = run(args.manifest, args.splits, args.report, cfg)
        tracking.log_step_outputs(report["per_split"], artifacts=[args.splits, args.report])
    print(summarize(report))
    print(f"splits: {args.splits}  report: {args.report}")
    return 0
