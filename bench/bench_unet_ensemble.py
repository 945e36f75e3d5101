"""Would an ensemble of U-Nets hold up better than one? The segmentation figures of each
seed's U-Net and of the mean of their lesion probabilities, on the val split (issue 13:
choose on val, never on test), from the seed workspaces of bench_chain_seeds.py. Only the
U-Nets run (with the flip average, as the chain does); the lesion rule is params.yaml's.

    python bench/bench_unet_ensemble.py                    # seeds 0 1 2 of chain_seeds
    python bench/bench_unet_ensemble.py --workspace 0=PATH 1=PATH
    python bench/bench_unet_ensemble.py --folds --workspace 0=PATH   # + the fold U-Nets
    python bench/bench_unet_ensemble.py --folds --gate --chain --workspace 0=PATH 1=PATH

With ``--folds`` the members are, in each workspace, the full U-Net and the fold U-Nets
train_unet_folds trained (``models/unet_folds/fold-<k>.keras``): an ensemble make run
already pays for. Each workspace is scored alone (full, each fold, full + folds) and the
means over workspaces are given; results go to ``unet_ensemble_folds.{json,md}``
(``unet_ensemble_folds_gated`` with ``--gate``). With
``--chain`` too, the whole chain is scored with each workspace's classifier behind the full
U-Net and behind the average of all its U-Nets (as evaluate_models scores it, on the split,
with the behavioural checks). The classifier is not retrained: its train crops are out of
fold (the fold U-Nets') either way, but the epoch it kept was chosen on the full U-Net's
val crops, so this reads what the segmenter changes, not a retrained chain. With ``--gate``
the average gated by the full U-Net is scored too (``average_unets(..., gate=rule)``: the
average draws the lesion, the full U-Net alone decides whether there is one), without and
with ``fallback`` (the full U-Net's own map where the average finds no lesion).

Writes bench/results/unet_ensemble.{json,md} (with ``--folds``: the files named above).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SEEDS_DIR = REPO / "scratch" / "chain-seeds" / "default"


def figures(probs: list[np.ndarray], truth: list[np.ndarray], labels: list[str], rule) -> dict:
    """Lesion Dice (mean over lesion images), false-lesion rate on normal images, and the
    share of lesion images with no lesion found, for probability maps under ``rule``."""
    from busi.model.masks import clean_mask
    from busi.model.metrics import segmentation_metrics

    pred = [clean_mask(p, rule) for p in probs]
    seg = segmentation_metrics(truth, pred, labels)
    lesion = [i for i, label in enumerate(labels) if label != "normal"]
    return {
        "lesion_dice": float(seg["dice_mean"]),
        "normal_false_lesion_rate": float(seg["normal_false_lesion_rate"]),
        "lesion_not_found": float(np.mean([not pred[i].any() for i in lesion])),
    }


def ensemble_figures(
    probs_by_seed: dict[int, list[np.ndarray]], truth: list, labels: list[str], rule
) -> dict[str, dict]:
    """Each seed alone, then the mean probability of every combination of two or more."""
    seeds = sorted(probs_by_seed)
    out = {f"seed {s}": figures(probs_by_seed[s], truth, labels, rule) for s in seeds}
    for k in range(2, len(seeds) + 1):
        for combo in itertools.combinations(seeds, k):
            mean = [
                np.mean([probs_by_seed[s][i] for s in combo], axis=0) for i in range(len(truth))
            ]
            out["mean of " + "+".join(map(str, combo))] = figures(mean, truth, labels, rule)
    return out


def fold_figures(
    probs_by_member: dict[str, list[np.ndarray]], truth: list, labels: list[str], rule
) -> dict[str, dict]:
    """One workspace's members (``full``, ``fold-<k>``): each alone, then the full U-Net
    with every fold and all of them together (the mean of their lesion probabilities)."""
    out = {name: figures(p, truth, labels, rule) for name, p in probs_by_member.items()}
    folds = [n for n in probs_by_member if n != "full"]
    for k in range(1, len(folds) + 1):
        for combo in itertools.combinations(folds, k):
            names = ["full", *combo]
            mean = [
                np.mean([probs_by_member[n][i] for n in names], axis=0) for i in range(len(truth))
            ]
            out["+".join(names)] = figures(mean, truth, labels, rule)
    return out


def segment_latency(segmenter, images: list, size: int, flip: bool) -> dict:
    """Per-image milliseconds of ``segment`` (one image a call, with the chain's flip
    average) for a segmenter as serving runs it (its checked LiteRT copy): p50, p95 and
    the number of images timed (after one untimed warm-up call)."""
    from busi.model.chain import segment
    from busi.model.lite_runtime import LiteModel, compile_checked

    lite = LiteModel(compile_checked(segmenter)[0])
    segment(lite, images[:1], size, tta_flip=flip)
    times = []
    for image in images:
        start = time.perf_counter()
        segment(lite, [image], size, tta_flip=flip)
        times.append((time.perf_counter() - start) * 1000.0)
    return {
        "p50_ms": float(np.percentile(times, 50)),
        "p95_ms": float(np.percentile(times, 95)),
        "images": len(times),
    }


def render_latency(latency: dict) -> list[str]:
    """One row per segmenter: its LiteRT copy's per-image p50 and p95."""
    lines = [
        "",
        f"Segmentation latency, seed {latency['seed']}'s U-Nets as serving runs them (LiteRT, "
        "one image a call, with the flip average), the first images of the split:",
        "",
        "| segmenter | p50 (ms) | p95 (ms) | images |",
        "|---|---:|---:|---:|",
    ]
    for name, row in latency["segmenters"].items():
        lines.append(f"| {name} | {row['p50_ms']:.1f} | {row['p95_ms']:.1f} | {row['images']} |")
    return lines


CHAIN_FIGURES = (
    "lesion_dice_mean",
    "normal_false_lesion_rate",
    "lesion_not_found",
    "lesion_called_normal",
    "accuracy",
    "macro_f1",
    "malignant_auc",
)


def chain_figures(segmenter, classifier, crop, images, masks, labels, params: Path) -> dict:
    """The chain behind ``segmenter`` on one split, as evaluate_models scores it: the
    robustness figures (Dice, not found, called normal, ...), macro-F1, and the behavioural
    checks that failed (evaluate_models' settings from ``params``)."""
    from busi.config import load_section
    from busi.data.preprocess import CLASSES
    from busi.model.behaviour import run_checks
    from busi.model.metrics import robustness_figures
    from components.evaluate_models import EvaluateConfig, evaluate_chain

    cfg = load_section(params, "evaluate_models", EvaluateConfig)
    ids = [CLASSES.index(c) for c in labels]
    result = evaluate_chain(images, masks, ids, segmenter, classifier, crop.roi, crop.tta_flip, cfg)
    out = robustness_figures(masks, labels, result["pred_masks"], result["proba"], CLASSES)
    out["macro_f1"] = result["classification"]["macro_f1"]
    normals = [img for img, label in zip(images, labels, strict=True) if label == "normal"]
    checks = run_checks(
        segmenter, classifier, normals, images, crop.roi, crop.tta_flip, cfg.behaviour_config()
    )
    out["checks_failed"] = checks["failed"]
    return out


def matches_evaluation(figures: dict, evaluation: dict) -> bool:
    """Whether the chain's figures behind the full U-Net equal those evaluate_models wrote
    for the workspace (``metrics/evaluation.json``, same split): the bench scores the chain
    as the pipeline does."""
    head = evaluation["headline"]
    pairs = [
        (figures["lesion_dice_mean"], head["lesion_dice"]),
        (figures["normal_false_lesion_rate"], head["normal_false_lesion_rate"]),
        (figures["accuracy"], head["accuracy"]),
        (figures["macro_f1"], head["macro_f1"]),
        (figures["malignant_auc"], head["malignant_auc"]),
    ]
    same = all(
        (a is None and b is None) or (a is not None and b is not None and abs(a - b) < 1e-9)
        for a, b in pairs
    )
    return same and figures["checks_failed"] == evaluation["behaviour"]["failed"]


def render_chain(chain: dict[str, dict[str, dict]]) -> list[str]:
    """Rows per workspace and segmenter, then the paired mean difference of each figure."""
    lines = [
        "",
        "The whole chain, each workspace's classifier (not retrained) behind the segmenter:",
        "",
        "| seed | segmenter | " + " | ".join(CHAIN_FIGURES) + " | checks failed |",
        "|---|---|" + "---:|" * len(CHAIN_FIGURES) + "---|",
    ]
    for seed, rows in chain.items():
        for name, f in rows.items():
            cells = ["n/a" if f[k] is None else f"{f[k]:.3f}" for k in CHAIN_FIGURES]
            failed = ", ".join(f["checks_failed"]) or "none"
            lines.append(f"| {seed} | {name} | " + " | ".join(cells) + f" | {failed} |")
    checked = {
        seed: rows["full"]["matches_evaluation"]
        for seed, rows in chain.items()
        if rows["full"].get("matches_evaluation") is not None
    }
    if checked:
        lines += [
            "",
            "Check: behind the full U-Net the figures equal the workspace's own evaluate_models "
            "figures (metrics/evaluation.json): "
            + "; ".join(f"seed {s} {'yes' if ok else 'NO'}" for s, ok in checked.items())
            + ".",
        ]
    base, *others = list(next(iter(chain.values())))
    for other in others:
        lines.append("")
        lines.append(f"Paired difference ({other} minus {base}), mean over workspaces (each):")
        lines.append("")
        for key in CHAIN_FIGURES:
            diffs = [
                rows[other][key] - rows[base][key]
                for rows in chain.values()
                if rows[other][key] is not None and rows[base][key] is not None
            ]
            each = ", ".join(f"{d:+.3f}" for d in diffs)
            mean = f"{np.mean(diffs):+.3f}" if diffs else "n/a"
            lines.append(f"- {key}: {mean} ({each})")
    return lines


def _measured(result: dict, whose: str) -> str:
    """The results header: when, where, which split, the lesion rule and the workspaces."""
    return (
        f"Measured {result['date']} on {result['machine']}, commit {result['commit']}, the "
        f"{result['split']} split ({result['n_images']} images, {result['n_normal']} normal), "
        f"lesion rule {result['rule']}, {whose}: "
        + "; ".join(f"seed {s} `{p}`" for s, p in result["workspaces"].items())
        + "."
    )


def render_folds(result: dict) -> str:
    """Per workspace and member set, then the mean over workspaces of each member set."""
    lines = [
        _measured(result, "the full and fold U-Nets of"),
        "",
        "| seed | U-Nets | lesion Dice | false lesion on normal images | lesion images not found |",
        "|---|---|---:|---:|---:|",
    ]
    sets: dict[str, list[dict]] = {}
    for seed, rows in result["figures"].items():
        for name, f in rows.items():
            sets.setdefault(name, []).append(f)
            lines.append(
                f"| {seed} | {name} | {f['lesion_dice']:.3f} | "
                f"{f['normal_false_lesion_rate']:.3f} | {f['lesion_not_found']:.3f} |"
            )
    if len(result["figures"]) > 1:
        for name, fs in sets.items():
            mean = {k: np.mean([f[k] for f in fs]) for k in fs[0]}
            lines.append(
                f"| mean of {len(fs)} | {name} | {mean['lesion_dice']:.3f} | "
                f"{mean['normal_false_lesion_rate']:.3f} | {mean['lesion_not_found']:.3f} |"
            )
    if result.get("chain"):
        lines += render_chain(result["chain"])
    if result.get("latency"):
        lines += render_latency(result["latency"])
    return "\n".join(lines)


def render(result: dict) -> str:
    rows = result["figures"]
    singles = [v for k, v in rows.items() if k.startswith("seed ")]
    lines = [
        _measured(result, "U-Nets of"),
        "",
        "| U-Net | lesion Dice | false lesion on normal images | lesion images not found |",
        "|---|---:|---:|---:|",
    ]
    for name, f in rows.items():
        lines.append(
            f"| {name} | {f['lesion_dice']:.3f} | {f['normal_false_lesion_rate']:.3f} | "
            f"{f['lesion_not_found']:.3f} |"
        )
    if singles:
        mean = {k: np.mean([s[k] for s in singles]) for k in singles[0]}
        lines.append(
            f"| mean of the single seeds | {mean['lesion_dice']:.3f} | "
            f"{mean['normal_false_lesion_rate']:.3f} | {mean['lesion_not_found']:.3f} |"
        )
    return "\n".join(lines)


def score_fold_workspace(
    ws: Path, models, images, masks, labels, rule, flip, args, time_it: bool = False
) -> dict:
    """One workspace of ``--folds``: its fold U-Nets' probability maps (``probs``, by fold),
    those of the gated averages (``gated_probs``, with ``--gate``), and with ``--chain`` the
    whole chain behind the full U-Net, the plain average and the gated ones (``chain``), with
    ``time_it`` each segmenter's LiteRT latency on ``--latency`` images (``latency``).
    ``models``: the workspace's (U-Net, classifier, crop settings)."""
    from busi.model.chain import segment
    from busi.model.unet import average_unets, load_unet

    unet, classifier, crop = models
    size = unet.input_shape[1]
    fold_paths = sorted((ws / "models" / "unet_folds").glob("fold-*.keras"))
    if not fold_paths:
        raise SystemExit(f"{ws}: no models/unet_folds/fold-*.keras (train_unet_folds)")
    folds = {path.stem: load_unet(path) for path in fold_paths}
    out: dict = {
        "probs": {k: segment(m, images, size, tta_flip=flip) for k, m in folds.items()},
        "gated_probs": {},
    }
    ensemble = "+".join(["full", *folds])
    segmenters = {"full": unet, ensemble: average_unets([unet, *folds.values()])}
    for fallback in (False, True) if args.gate else ():
        name = f"gated{'+fallback' if fallback else ''} {ensemble}"
        gated = average_unets([unet, *folds.values()], gate=rule, fallback=fallback)
        segmenters[name] = gated
        out["gated_probs"][name] = segment(gated, images, size, tta_flip=flip)
    if time_it:
        out["latency"] = {
            name: segment_latency(model, images[: args.latency], size, flip)
            for name, model in segmenters.items()
        }
    if args.chain:
        params = ws / "params.yaml"
        out["chain"] = {
            name: chain_figures(model, classifier, crop, images, masks, labels, params)
            for name, model in segmenters.items()
        }
        evaluation = ws / "metrics" / "evaluation.json"
        if evaluation.is_file():
            record = json.loads(evaluation.read_text())
            if record.get("split") == args.split:
                full = out["chain"]["full"]
                full["matches_evaluation"] = matches_evaluation(full, record)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workspace",
        nargs="+",
        default=[f"{s}={SEEDS_DIR / f'seed-{s}' / 'workspace'}" for s in (0, 1, 2)],
        metavar="SEED=PATH",
        help="a seed workspace with models/unet.keras and the data (default: chain_seeds' 0-2)",
    )
    parser.add_argument(
        "--split", default="val", choices=("val", "train"), help="default: %(default)s"
    )
    parser.add_argument(
        "--folds",
        action="store_true",
        help="ensemble each workspace's full U-Net with its fold U-Nets (models/unet_folds)",
    )
    parser.add_argument(
        "--chain",
        action="store_true",
        help="with --folds: score the whole chain behind the full U-Net and behind the average",
    )
    parser.add_argument(
        "--gate",
        action="store_true",
        help="with --folds: also the average gated by the full U-Net's lesion decision",
    )
    parser.add_argument(
        "--latency",
        type=int,
        default=0,
        metavar="N",
        help="with --folds: time each segmenter's LiteRT copy on N images (first workspace)",
    )
    args = parser.parse_args()
    if (args.chain or args.gate or args.latency) and not args.folds:
        parser.error("--chain, --gate and --latency go with --folds")
    sys.path.insert(0, str(REPO))
    import subprocess

    import yaml

    from bench.bench_data import machine_info
    from bench.results_files import chain_paths, seed_paths, write_results
    from busi.model.chain import segment
    from busi.model.loading import load_chain_and_split
    from busi.model.masks import LesionRule

    workspaces = seed_paths(args.workspace, "--workspace", "SEED=PATH to a seed workspace")
    crop = yaml.safe_load((REPO / "params.yaml").read_text())["crop_rois"]
    rule = LesionRule(crop["threshold"], crop["min_area"], crop["keep"])
    probs, gated_probs, truth, labels, chain, latency = {}, {}, None, None, {}, {}
    for seed, ws in sorted(workspaces.items()):
        if not (ws / "models" / "unet.keras").is_file():
            raise SystemExit(f"{ws}: no models/unet.keras; run bench_chain_seeds.py first")
        unet, classifier, chain_crop, part, images, masks = load_chain_and_split(
            chain_paths(ws), args.split
        )
        these = part["class"].to_list()
        if labels is not None and these != labels:
            raise SystemExit(f"{ws}: its {args.split} split differs from the first workspace's")
        size, flip = unet.input_shape[1], crop["tta_flip"]
        probs[seed] = segment(unet, images, size, tta_flip=flip)
        if args.folds:
            scored = score_fold_workspace(
                ws,
                (unet, classifier, chain_crop),
                images,
                masks,
                these,
                rule,
                flip,
                args,
                time_it=bool(args.latency) and not latency,
            )
            probs[seed] = {"full": probs[seed], **scored["probs"]}
            gated_probs[seed] = scored["gated_probs"]
            if args.chain:
                chain[str(seed)] = scored["chain"]
            if "latency" in scored:
                latency = {"seed": seed, "segmenters": scored["latency"]}
        truth, labels = masks, these
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": "{cpu_model} ({nproc} cores; {cpu_isa})".format(**machine_info()),
        "commit": commit,
        "split": args.split,
        "n_images": len(labels),
        "n_normal": labels.count("normal"),
        "rule": f"threshold {rule.threshold}, min_area {rule.min_area}, keep {rule.keep}",
        "workspaces": {str(s): str(p) for s, p in sorted(workspaces.items())},
    }
    if args.folds:
        result["figures"] = {
            str(s): fold_figures(p, truth, labels, rule) for s, p in sorted(probs.items())
        }
        for s, by_name in gated_probs.items():
            for name, p in by_name.items():
                result["figures"][str(s)][name] = figures(p, truth, labels, rule)
        result["chain"] = chain
        result["latency"] = latency
        text = render_folds(result)
        write_results(
            "unet_ensemble_folds_gated" if args.gate else "unet_ensemble_folds",
            "The full U-Net with its fold U-Nets"
            + (", gated by the full U-Net" if args.gate else ""),
            result,
            text,
            "bench/bench_unet_ensemble.py",
        )
    else:
        result["figures"] = ensemble_figures(probs, truth, labels, rule)
        text = render(result)
        write_results("unet_ensemble", "U-Net ensembles on the val split", result, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
