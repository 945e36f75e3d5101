"""Single classifiers against small ensembles of them, on the same crops: how much a reseed of
the classifier moves the val figures, and how much averaging K members (``train_classifier.
members``) takes out of that.

    python bench/bench_classifier_ensemble.py \
        --workspace scratch/chain-seeds/default/seed-0/workspace --pool 6 --size 3

A workspace is one that ``bench_chain_seeds.py --split val`` (or ``make run``) left: its
params.yaml, crops (data/rois) and evaluation. The bench trains ``--pool`` classifiers on its
train crops, member k from the workspace's ``train_classifier.seed`` + 100 k, exactly as
``members`` trains them (so member 0 is the workspace's own classifier, and members 0..K-1
are the ensemble ``members: K`` ships), and scores on the val crops each single classifier
and every ensemble of ``--size`` of them (the mean of their class probabilities, as
``ensemble_classifier`` computes it). The val crops are the chain's: member 0's figures are
checked against the workspace's metrics/evaluation.json (evaluate_models on val), so the
figures are evaluate_models' figures. Nothing of the workspace is changed; each member's val
probabilities are kept under scratch/classifier-ensemble/ so that a rerun trains only what
is missing. One member costs one classifier training (5.5-11.5 min measured on AMD EPYC, 2 cores:
classifier_ensemble.md).
Writes bench/results/classifier_ensemble[_NAME].{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
FIGURES = ("macro_f1", "accuracy", "malignant_auc", "lesion_called_normal", "normal_called_lesion")


def figures(labels: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """evaluate_models' classification figures for one set of class probabilities, and the
    two errors of the lesion/normal call: lesion images called normal, normal images called
    a lesion."""
    from busi.data.preprocess import CLASSES
    from busi.model.metrics import classification_metrics

    cls = classification_metrics(labels, proba, list(CLASSES), positive="malignant")
    normal = CLASSES.index("normal")
    called = np.argmax(proba, axis=1)
    lesion = labels != normal
    return {
        "macro_f1": float(cls["macro_f1"]),
        "accuracy": float(cls["accuracy"]),
        "malignant_auc": float(cls["roc_auc_malignant_vs_rest"]),
        "lesion_called_normal": float(np.mean(called[lesion] == normal)),
        "normal_called_lesion": float(np.mean(called[~lesion] != normal)),
    }


def spread(rows: list[dict]) -> dict[str, dict]:
    """Per figure over ``rows``: mean, sample standard deviation, min and max."""
    out = {}
    for key in FIGURES:
        values = np.array([r[key] for r in rows], dtype=float)
        out[key] = {
            "mean": float(values.mean()),
            "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "min": float(values.min()),
            "max": float(values.max()),
            "n": len(values),
        }
    return out


def compare(labels: np.ndarray, member_probas: list[np.ndarray], size: int) -> dict:
    """Every single member's figures and every ``size``-member ensemble's (the mean of the
    members' probabilities), with the spread of each; also the disjoint ensembles (members
    0..size-1, size..2 size-1, ...), which are independent draws of what ``members: size``
    ships."""
    singles = [figures(labels, p) for p in member_probas]
    combos = list(itertools.combinations(range(len(member_probas)), size))
    ensembles = [
        {"members": list(c), **figures(labels, np.mean([member_probas[k] for k in c], axis=0))}
        for c in combos
    ]
    blocks = [list(range(i, i + size)) for i in range(0, len(member_probas) - size + 1, size)]
    disjoint = [e for e in ensembles if e["members"] in blocks]
    return {
        "singles": singles,
        "ensembles": ensembles,
        "spread_singles": spread(singles),
        "spread_ensembles": spread(ensembles),
        "disjoint_ensembles": disjoint,
    }


def _cache_dir(workspace: Path) -> Path:
    """Members trained on one workspace's crops are kept by the crops' content and the
    classifier settings, so a changed workspace never reuses stale members."""
    h = hashlib.md5()
    for name in ("train.npz", "val.npz"):
        h.update((workspace / "data" / "rois" / name).read_bytes())
    params = yaml.safe_load((workspace / "params.yaml").read_text())["train_classifier"]
    h.update(json.dumps(params, sort_keys=True).encode())
    return REPO / "scratch" / "classifier-ensemble" / h.hexdigest()[:12]


def train_pool(workspace: Path, pool: int) -> tuple[np.ndarray, list[np.ndarray], dict]:
    """The val labels, each member's val probabilities and the bench's notes on the run."""
    import tempfile

    from busi.config import from_dict
    from busi.model.chain import predict_proba
    from components.train_classifier import (
        ClassifierConfig,
        fit_classifier,
        load_rois,
        member_configs,
    )

    params = yaml.safe_load((workspace / "params.yaml").read_text())
    base = from_dict(ClassifierConfig, params["train_classifier"])
    configs = member_configs(dataclasses.replace(base, members=pool))
    x_train, y_train = load_rois(workspace / "data" / "rois" / "train.npz")
    x_val, y_val = load_rois(workspace / "data" / "rois" / "val.npz")
    cache = _cache_dir(workspace)
    cache.mkdir(parents=True, exist_ok=True)
    probas, minutes = [], {}
    for cfg in configs:
        path = cache / f"seed_{cfg.seed}.npz"
        if not path.is_file():
            started = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                model = fit_classifier(x_train, y_train, x_val, y_val, cfg, Path(tmp) / "h.csv")
            np.savez(path, proba=predict_proba(model, x_val))
            minutes[cfg.seed] = (time.perf_counter() - started) / 60
            print(f"member seed {cfg.seed}: {minutes[cfg.seed]:.1f} min", flush=True)
        probas.append(np.load(path)["proba"])
    return (
        y_val,
        probas,
        {"seeds": [c.seed for c in configs], "minutes": minutes, "cache": str(cache)},
    )


def check_member_0(workspace: Path, labels: np.ndarray, proba: np.ndarray) -> dict:
    """Member 0 is the workspace's classifier retrained: its val figures must be the
    workspace's evaluate_models figures on val (else the crops or the training differ)."""
    evaluation = json.loads((workspace / "metrics" / "evaluation.json").read_text())
    if evaluation["split"] != "val":
        raise SystemExit(
            f"{workspace}: its evaluation is of the {evaluation['split']} split; the bench "
            "scores val (bench_chain_seeds.py --split val)"
        )
    cls = evaluation["classification"]
    mine = figures(labels, proba)
    theirs = {
        "macro_f1": cls["macro_f1"],
        "accuracy": cls["accuracy"],
        "malignant_auc": cls["roc_auc_malignant_vs_rest"],
    }
    same = all(math.isclose(mine[k], v, abs_tol=1e-9) for k, v in theirs.items())
    return {"member_0": {k: mine[k] for k in theirs}, "evaluate_models": theirs, "equal": same}


def _row(name: str, s: dict) -> str:
    cells = [
        f"{s[k]['mean']:.3f} ± {s[k]['sd']:.3f} ({s[k]['min']:.3f}-{s[k]['max']:.3f})"
        for k in FIGURES
    ]
    return f"| {name} | " + " | ".join(cells) + " |"


def render(result: dict) -> str:
    from bench.results_files import isa_note

    m = result["machine"]
    lines = [
        f"Measured {result['date']} on {m['cpu']} ({m['cores']} cores{isa_note(m)}), "
        f"commit {m['commit']}: "
        f"pool of {result['pool']} classifiers, ensembles of {result['size']}, val crops.",
        "",
        "Mean ± sample sd (min-max) over the singles, and over every ensemble of the pool "
        "(ensembles that share members are not independent: their sd is a lower figure).",
        "",
    ]
    header = "| | " + " | ".join(FIGURES) + " |"
    for ws in result["workspaces"]:
        lines += [f"### {ws['workspace']} (classifier seeds {ws['seeds']})", ""]
        lines += [
            f"Member 0 against the workspace's evaluate_models on val: "
            f"{ws['check']['member_0']} vs {ws['check']['evaluate_models']}: "
            f"equal {ws['check']['equal']}.",
            "",
            header,
            "|---|" + "---:|" * len(FIGURES),
            _row("singles", ws["spread_singles"]),
            _row(f"ensembles of {result['size']}", ws["spread_ensembles"]),
        ]
        for e in ws["disjoint_ensembles"]:
            lines.append(
                f"| ensemble {e['members']} | " + " | ".join(f"{e[k]:.3f}" for k in FIGURES) + " |"
            )
        for k, single in enumerate(ws["singles"]):
            lines.append(
                f"| single {k} (seed {ws['seeds'][k]}) | "
                + " | ".join(f"{single[f]:.3f}" for f in FIGURES)
                + " |"
            )
        lines.append("")
    return "\n".join(lines).rstrip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workspace", type=Path, nargs="+", required=True)
    parser.add_argument("--pool", type=int, default=6, help="classifiers trained per workspace")
    parser.add_argument("--size", type=int, default=3, help="members of each ensemble scored")
    parser.add_argument("--name", help="part of the results file's name")
    args = parser.parse_args()
    if not 2 <= args.size <= args.pool:
        raise SystemExit(f"--size {args.size} must be between 2 and --pool {args.pool}")
    sys.path.insert(0, str(REPO))
    from bench.bench_models import machine
    from bench.results_files import write_results

    out = []
    for workspace in args.workspace:
        for needed in (
            "params.yaml",
            "data/rois/train.npz",
            "data/rois/val.npz",
            "metrics/evaluation.json",
        ):
            if not (workspace / needed).is_file():
                raise SystemExit(
                    f"{workspace / needed} not found: run bench_chain_seeds.py "
                    "--split val for that seed first"
                )
        labels, probas, notes = train_pool(workspace, args.pool)
        out.append(
            {
                "workspace": str(workspace),
                **notes,
                "check": check_member_0(workspace, labels, probas[0]),
                **compare(labels, probas, args.size),
            }
        )
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "pool": args.pool,
        "size": args.size,
        "workspaces": out,
    }
    name = "classifier_ensemble" + (f"_{args.name}" if args.name else "")
    write_results(
        name,
        "Single classifiers against small ensembles of them",
        result,
        render(result),
        script="bench/bench_classifier_ensemble.py",
    )
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
