"""What averaging classifiers that already ran would give, read from their per-image tables
(bench_chain_seeds.py's ``per_image/`` files: one chain run each, same split and U-Net), no
model run. For each group of tables: each member's class figures, then those of the mean of
the members' class probabilities (the ensemble ``train_classifier.members`` builds, if its
members are these runs' classifiers).

Only the class figures can be read this way: lesion images called normal, normal images
called normal, accuracy, macro-F1 and malignant AUC (malignant against the rest). What the
ensemble's P(normal) would change through ``crop_rois.normal_veto`` (masks emptied, so
lesions not found, Dice and false lesions) is not in the tables: a screen, not a verdict.

    P=bench/results/per_image
    python bench/screen_table_ensembles.py --name t04_useed1 \\
        --group t04 $P/chain_seeds_val_snf_fov_ema_veto_t04_xeon{,_c100,_c200}_seed1.csv

Writes bench/results/screen_ensembles_<name>.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("benign", "malignant", "normal")
PROBS = [f"prob_{c}" for c in CLASSES]


def class_figures(truth: np.ndarray, proba: np.ndarray) -> dict:
    """The class figures of probabilities [N, 3] (CLASSES order) against class names."""
    from sklearn.metrics import f1_score, roc_auc_score

    pred = np.asarray(CLASSES)[proba.argmax(axis=1)]
    lesion = truth != "normal"
    malignant = (truth == "malignant").astype(int)
    return {
        "lesion_called_normal": float((pred[lesion] == "normal").mean()),
        "normal_called_normal": f"{int((pred[~lesion] == 'normal').sum())} of {(~lesion).sum()}",
        "accuracy": float((pred == truth).mean()),
        "macro_f1": float(f1_score(truth, pred, labels=list(CLASSES), average="macro")),
        "malignant_auc": float(roc_auc_score(malignant, proba[:, 1])),
    }


def screen(tables: list) -> list[tuple[str, dict]]:
    """[(label, figures)] for each member table and for the mean of their probabilities;
    the tables must hold the same images with the same classes."""
    ids = tables[0].index
    for table in tables[1:]:
        if set(table.index) != set(ids):
            raise ValueError("the tables hold different images: not runs on one split")
    truth = tables[0].loc[ids, "class"].to_numpy()
    for table in tables[1:]:
        if (table.loc[ids, "class"].to_numpy() != truth).any():
            raise ValueError("the tables give different classes for the same image")
    probas = [t.loc[ids, PROBS].to_numpy(dtype=float) for t in tables]
    rows = [(f"member {k}", class_figures(truth, p)) for k, p in enumerate(probas)]
    rows.append((f"mean of {len(probas)}", class_figures(truth, np.mean(probas, axis=0))))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True, help="names the results file")
    parser.add_argument(
        "--group",
        nargs="+",
        action="append",
        required=True,
        metavar="LABEL CSV",
        help="a label, then the per-image tables of the members (2 or more); repeatable",
    )
    args = parser.parse_args()
    import pandas as pd

    lines = [
        f"# Classifier ensembles screened from per-image tables: {args.name}",
        "",
        "Written by `bench/screen_table_ensembles.py` (no model run): each member's class",
        "figures and those of the mean of their probabilities. Class figures only; what the",
        "ensemble would change through the normal veto is not in the tables.",
        "",
        "| group | tables | lesion called normal | normal called normal | accuracy | macro-F1 "
        "| malignant AUC |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for label, *paths in args.group:
        if len(paths) < 2:
            parser.error(f"--group {label}: give at least two tables")
        tables = [pd.read_csv(p).set_index("id") for p in paths]
        names = [Path(p).stem for p in paths]
        for (row, f), table_name in zip(screen(tables), [*names, "all"], strict=True):
            lines.append(
                f"| {label} | {row}: {table_name} | {f['lesion_called_normal']:.3f} | "
                f"{f['normal_called_normal']} | {f['accuracy']:.3f} | {f['macro_f1']:.3f} | "
                f"{f['malignant_auc']:.3f} |"
            )
    out = REPO / "bench" / "results" / f"screen_ensembles_{args.name}.md"
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
