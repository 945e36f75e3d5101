"""Sweep of U-Net, chain and classifier settings, scored on the val split only.

Why: one real-data U-Net training costs about 28 minutes on the 2 CPU cores, so settings
cannot be compared there one by one. This sweep trains the pipeline's own Keras models
(``busi.model.unet_training.build_unet``, ``components.train_classifier.build_classifier``)
on any Keras 3 backend (JAX or PyTorch on a lent GPU), gives each trial a training budget
in epochs that the CPU cost converts to CPU minutes, and scores every trial on the
**val split** with the pipeline's chain code (``clean_mask``, ``rois_from_masks``) and
metrics. The test split is never read (``export`` writes train and val only).

The sweep is an approximation of ``train_unet``: numpy batches instead of the TFRecord
stream, offline copies made by ``augment_pair`` from images resized once, a Dice proxy on
a 192 px grid instead of each image's own size, other backends' kernels. It ranks
settings; the chosen one is then run by ``make run`` and measured by ``bench_models.py``.

Steps (see bench/results/sweep.md for a run):

    python bench/sweep_unet.py export                  # here: data/busi -> .sweep/busi_sweep.npz
    python bench/sweep_unet.py cpu-cost                # here: TF seconds per training image
    KERAS_BACKEND=jax python bench/sweep_unet.py run --workers 8 --out DIR   # GPU machine
    python bench/sweep_unet.py report DIR              # markdown table
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GRID = 192  # the scoring grid: masks and crops are taken at this size
SIZES = (96, 128)
DEFAULT_DATA = ROOT / ".sweep" / "busi_sweep.npz"


@dataclass(frozen=True)
class Trial:
    name: str
    size: int = 96
    arch: str = "compact"
    copies: int = 1  # offline augmented copies of each train image
    epochs: int = 20
    schedule: str = "constant"  # constant | cosine (to 0 over all epochs)
    lr: float = 1e-3
    patience: int = 5  # early stopping on val Dice; 0 = none
    seed: int = 0


BASE = Trial("base")  # params.yaml at commit c5c5fe7 (the committed real-data run)


def trials() -> list[Trial]:
    """In priority order: the runner starts them in this order."""
    cos = replace(BASE, schedule="cosine", patience=0)
    return [
        BASE,
        replace(cos, name="cos30", epochs=30),
        replace(BASE, name="const30", epochs=30),
        replace(cos, name="cos20", epochs=20),
        replace(cos, name="c0_cos60", copies=0, epochs=60),
        replace(cos, name="c3_cos15", copies=3, epochs=15),
        replace(cos, name="s128_cos20", size=128, epochs=20),
        replace(cos, name="res_cos30", arch="residual", epochs=30),
        replace(cos, name="cos30_lr3e-3", epochs=30, lr=3e-3),
        replace(cos, name="wide_cos20", arch="wide", epochs=20),
        replace(BASE, name="base_seed1", seed=1),
        replace(BASE, name="base_seed2", seed=2),
        replace(cos, name="cos30_seed1", epochs=30, seed=1),
        replace(cos, name="cos30_seed2", epochs=30, seed=2),
        replace(cos, name="cos40", epochs=40),
        replace(cos, name="s128_cos30", size=128, epochs=30),
        replace(cos, name="cos60", epochs=60),
        replace(cos, name="res_cos30_seed1", arch="residual", epochs=30, seed=1),
    ]


# ---------------------------------------------------------------- export (here, with data)


def export(data_dir: Path, manifest: Path, splits: Path, out: Path) -> dict:
    from busi.data.preprocess import CLASSES, load_pair, resize_gray, resize_mask
    from busi.data.splits import load_split_rows

    rows = load_split_rows(manifest, splits)
    arrays: dict[str, np.ndarray] = {}
    for split in ("train", "val"):  # never test
        part = rows[rows["split"] == split]
        pairs = [load_pair(data_dir, r["path"], r["mask_files"]) for _, r in part.iterrows()]
        for size in (*SIZES, GRID):
            arrays[f"{split}_img_{size}"] = np.stack([resize_gray(i, size) for i, _ in pairs])
            arrays[f"{split}_mask_{size}"] = np.stack([resize_mask(m, size) for _, m in pairs])
        arrays[f"{split}_label"] = np.array([CLASSES.index(c) for c in part["class"]])
        arrays[f"{split}_class"] = part["class"].to_numpy().astype(str)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    return {k: list(v.shape) for k, v in arrays.items()}


# ---------------------------------------------------------------- one trial (any backend)


def _augmented_train(data, size: int, copies: int):
    from components.augment_data import AugmentConfig, prepare_split

    cfg = AugmentConfig(image_size=size, copies=copies, seed=0)
    rng = np.random.default_rng(cfg.seed)
    images = list(data[f"train_img_{size}"])
    masks = list(data[f"train_mask_{size}"])
    # Already at size: prepare_split's resize is then the identity.
    x, y, _ = prepare_split(images, masks, True, cfg, rng)
    return x, y


def _x(images: np.ndarray) -> np.ndarray:
    return (images.astype(np.float32) / 255.0)[..., None]


def train_trial_unet(trial: Trial, data):
    import keras

    from busi.model.unet_training import (
        ARCHITECTURES,
        bce_dice_loss,
        build_unet,
        lesion_dice_metric,
    )

    keras.utils.set_random_seed(trial.seed)
    x, y = _augmented_train(data, trial.size, trial.copies)
    x, y = _x(x), y.astype(np.float32)[..., None]
    xv = _x(data[f"val_img_{trial.size}"])
    yv = data[f"val_mask_{trial.size}"].astype(np.float32)[..., None]
    batch = 16
    steps = math.ceil(len(x) / batch) * trial.epochs
    lr = trial.lr
    if trial.schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(trial.lr, decay_steps=steps, alpha=0.0)
    model = build_unet(trial.size, ARCHITECTURES[trial.arch], 0.9)
    model.compile(
        optimizer=keras.optimizers.Adam(lr), loss=bce_dice_loss, metrics=[lesion_dice_metric()]
    )
    rng = np.random.default_rng(trial.seed)
    curve, best, best_weights, wait = [], -1.0, None, 0
    for _epoch in range(trial.epochs):
        flip = rng.random(len(x)) < 0.5  # the online horizontal flip of train_unet
        xe = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
        ye = np.where(flip[:, None, None, None], y[:, :, ::-1], y)
        model.fit(xe, ye, batch_size=batch, epochs=1, shuffle=True, verbose=0)
        score = float(
            model.evaluate(xv, yv, batch_size=64, verbose=0, return_dict=True)["lesion_dice"]
        )
        curve.append(round(score, 4))
        if score > best:
            best, best_weights, wait = score, model.get_weights(), 0
        else:
            wait += 1
            if trial.patience and wait >= trial.patience:
                break
    model.set_weights(best_weights)
    return model, curve, len(x), int(model.count_params())


def _probs(model, images: np.ndarray) -> list[np.ndarray]:
    """Flip-TTA lesion probabilities of images already at the model's size, on the grid."""
    from busi.data.preprocess import resize_prob

    x = _x(images)
    prob = model.predict(x, batch_size=64, verbose=0)
    prob = (prob + model.predict(x[:, :, ::-1], batch_size=64, verbose=0)[:, :, ::-1]) / 2
    return [resize_prob(p[..., 0], GRID, GRID) for p in prob]


def score_segmentation(probs, true_masks, classes, threshold: float, min_area: float) -> dict:
    from busi.model.chain import RoiConfig, clean_mask
    from busi.model.metrics import segmentation_metrics

    roi = RoiConfig(threshold=threshold, min_area=min_area)
    masks = [clean_mask(p, roi) for p in probs]
    seg = segmentation_metrics(list(true_masks), masks, list(classes), lesion_min_area=0.0)
    lesion = [t.any() for t in true_masks]
    missed = sum(1 for t, m in zip(lesion, masks, strict=True) if t and not m.any())
    return {
        "threshold": threshold,
        "min_area": min_area,
        "dice": round(float(seg["dice_mean"]), 4),
        "dice_median": round(float(seg["dice_median"]), 4),
        "false_lesion_rate": round(float(seg["normal_false_lesion_rate"]), 4),
        "missed": missed,
        "lesion_images": int(sum(lesion)),
    }


def classifier_inputs(images, probs, masks, crop: int = 96, soft: bool = False):
    """The pipeline's classifier input: the crop plus the binary mask, or with ``soft`` the
    U-Net's probability over the same box (``mask_channel: probability``)."""
    from busi.model.chain import RoiConfig, classifier_input, rois_from_masks

    roi = RoiConfig(crop_size=crop, mask_channel="probability" if soft else "binary")
    crops, channel, _, _ = rois_from_masks(
        list(images), masks, roi, with_features=False, probs=probs
    )
    return classifier_input(crops, channel)


def train_trial_classifier(x, y, xv, yv, seed: int = 0, epochs: int = 40, patience: int = 10):
    """small_cnn as in params.yaml: balanced class weights, flips and gain/shift on the
    crop; the epoch with the best val macro-F1 is kept, as in train_classifier."""
    import keras
    from sklearn.metrics import f1_score, roc_auc_score

    from components.train_classifier import ClassifierConfig, build_classifier, class_weights

    keras.utils.set_random_seed(seed)
    cfg = ClassifierConfig(base_filters=16, dropout=0.3, epochs=epochs, patience=patience)
    model = build_classifier(cfg, x.shape[1])
    model.compile(
        optimizer=keras.optimizers.Adam(cfg.learning_rate), loss="categorical_crossentropy"
    )
    weights = class_weights(y)
    onehot = np.eye(3, dtype=np.float32)[y]
    rng = np.random.default_rng(seed)
    best, best_scores, wait = -1.0, {}, 0
    for _epoch in range(epochs):
        xe = x.copy()
        flip = rng.random(len(xe)) < 0.5
        xe[flip] = xe[flip][:, :, ::-1]
        gain = rng.uniform(0.85, 1.15, (len(xe), 1, 1))
        shift = rng.uniform(-0.08, 0.08, (len(xe), 1, 1))
        xe[..., 0] = np.clip(xe[..., 0] * gain + shift, 0, 1)
        model.fit(xe, onehot, batch_size=32, epochs=1, class_weight=weights, verbose=0)
        proba = model.predict(xv, batch_size=128, verbose=0)
        f1 = f1_score(yv, proba.argmax(1), average="macro")
        if f1 > best:
            best, wait = f1, 0
            best_scores = {
                "macro_f1": round(float(f1), 4),
                "accuracy": round(float((proba.argmax(1) == yv).mean()), 4),
                "malignant_auc": round(float(roc_auc_score(yv == 1, proba[:, 1])), 4),
                "best_epoch": _epoch + 1,
            }
        else:
            wait += 1
            if wait >= patience:
                break
    return best_scores


def run_trial(trial: Trial, data_path: Path, clf_epochs: int = 40) -> dict:
    import keras

    from busi.model.chain import RoiConfig, clean_mask

    data = dict(np.load(data_path))
    started = time.time()
    model, curve, n_train, n_params = train_trial_unet(trial, data)
    unet_s = time.time() - started
    probs = _probs(model, data[f"val_img_{trial.size}"])
    true = data[f"val_mask_{GRID}"]
    classes = data["val_class"]
    grid = [
        score_segmentation(probs, true, classes, t, a)
        for t in (0.3, 0.4, 0.5, 0.6)
        for a in (0.001, 0.002, 0.004)
    ]
    default = next(g for g in grid if g["threshold"] == 0.5 and g["min_area"] == 0.002)
    # Classifier on crops of predicted masks (the pipeline's train_masks: predicted).
    roi = RoiConfig()
    probs_tr = _probs(model, data[f"train_img_{trial.size}"])
    masks_tr = [clean_mask(p, roi) for p in probs_tr]
    masks_v = [clean_mask(p, roi) for p in probs]
    img_tr, img_v = data[f"train_img_{GRID}"], data[f"val_img_{GRID}"]
    y, yv = data["train_label"], data["val_label"]
    classifier = {}
    for variant, soft in (("mask", False), ("soft", True)):
        x = classifier_inputs(img_tr, probs_tr, masks_tr, soft=soft)
        xv = classifier_inputs(img_v, probs, masks_v, soft=soft)
        classifier[variant] = train_trial_classifier(x, y, xv, yv, trial.seed, clf_epochs)
    # both: crops of the true masks added to the predicted ones (train only).
    gt = [m.astype(bool) for m in data[f"train_mask_{GRID}"]]
    x = np.concatenate(
        [
            classifier_inputs(img_tr, probs_tr, masks_tr),
            classifier_inputs(img_tr, probs_tr, gt),
        ]
    )
    xv = classifier_inputs(img_v, probs, masks_v)
    classifier["both"] = train_trial_classifier(x, np.r_[y, y], xv, yv, trial.seed, clf_epochs)
    return {
        "trial": asdict(trial),
        "backend": keras.backend.backend(),
        "params": n_params,
        "train_images_per_epoch": n_train,
        "epochs_run": len(curve),
        "images_seen": n_train * len(curve),
        "val_dice_curve": curve,
        "unet_seconds": round(unet_s, 1),
        "total_seconds": round(time.time() - started, 1),
        "segmentation": default,
        "segmentation_grid": grid,
        "classifier": classifier,
    }


# ---------------------------------------------------------------- runner


def run_all(names: list[str], data: Path, out: Path, workers: int, deadline_s: float) -> None:
    """Each trial in its own process, at most ``workers`` at once; after ``deadline_s``
    nothing new starts and whatever still runs is stopped (its trial has no result)."""
    out.mkdir(parents=True, exist_ok=True)
    todo = [t for t in trials() if not names or t.name in names]
    start, running = time.time(), []
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false", PYTHONUNBUFFERED="1")
    while todo or running:
        running = [(t, p) for t, p in running if p.poll() is None]
        late = time.time() - start > deadline_s
        if late:
            for t, p in running:
                p.kill()
                print(f"stopped {t.name}: deadline", flush=True)
            break
        while todo and len(running) < workers:
            t = todo.pop(0)
            cmd = [sys.executable, __file__, "run-one", t.name, "--data", str(data)]
            cmd += ["--out", str(out)]
            log = open(out / f"{t.name}.log", "w")  # noqa: SIM115 - closed with the process
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
            running.append((t, proc))
            print(f"{time.time() - start:6.0f}s started {t.name}", flush=True)
        time.sleep(2)
    print(f"{time.time() - start:6.0f}s done: {len(list(out.glob('*.json')))} results", flush=True)


def cpu_cost(steps: int = 12) -> dict:
    """Seconds per training image of each (architecture, size) here, TensorFlow, batch 16,
    fed like train_unet (cached tf.data); measured after two warm-up steps."""
    import keras

    from bench.bench_unet_encoders import train_seconds_per_image
    from busi.model.unet_training import ARCHITECTURES, build_unet, compile_unet

    out = {}
    for arch, size in (("compact", 96), ("compact", 128), ("residual", 96), ("wide", 96)):
        model = compile_unet(build_unet(size, ARCHITECTURES[arch]), 1e-3)
        per_image = train_seconds_per_image(model, size, steps)
        out[f"{arch}_{size}"] = {
            "seconds_per_image": round(per_image, 5),
            "params": model.count_params(),
        }
        print(arch, size, out[f"{arch}_{size}"], flush=True)
        keras.backend.clear_session()
    return out


def _grid_score(g: dict) -> float:
    """Dice, less any false-lesion rate above the 10 % bar."""
    return g["dice"] - max(0.0, g["false_lesion_rate"] - 0.1)


def _clf(c: dict) -> str:
    return f"{c['accuracy']:.3f} / {c['macro_f1']:.3f} / {c['malignant_auc']:.3f}"


def report(results_dir: Path, cost_file: Path | None) -> str:
    cost = json.loads(cost_file.read_text()) if cost_file and cost_file.is_file() else {}
    rows = []
    for path in sorted(results_dir.glob("*.json")):
        r = json.loads(path.read_text())
        t = r["trial"]
        per_image = cost.get(f"{t['arch']}_{t['size']}", {}).get("seconds_per_image")
        cpu_min = per_image * r["images_seen"] / 60 if per_image else float("nan")
        s, c = r["segmentation"], r["classifier"]
        best = max(r["segmentation_grid"], key=_grid_score)
        fig = [
            f"{t['name']}",
            f"{t['arch']} {t['size']} px, {t['copies']} copies, {t['epochs']} ep "
            f"{t['schedule']} lr {t['lr']:g}, seed {t['seed']}",
            f"{r['epochs_run']}",
            f"{cpu_min:.0f}",
            f"{s['dice']:.3f}",
            f"{s['missed']}/{s['lesion_images']}",
            f"{s['false_lesion_rate']:.2f}",
            f"{best['dice']:.3f} @ {best['threshold']}/{best['min_area']} "
            f"({best['false_lesion_rate']:.2f})",
            *(_clf(c[k]) for k in ("mask", "soft", "both")),
        ]
        rows.append("| " + " | ".join(fig) + " |")
    head = (
        "| trial | setting | epochs run | est. CPU min (U-Net) | val Dice | missed | false lesion "
        "| best Dice @ threshold/min_area (false lesion) | classifier mask: acc / F1 / AUC "
        "| soft prob: acc / F1 / AUC | gt+pred crops: acc / F1 / AUC |\n"
        "|---|---|---:|---:|---:|---:|---:|---|---|---|---|"
    )
    return head + "\n" + "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("export")
    p.add_argument("--data-dir", type=Path, default=ROOT / "data/busi")
    p.add_argument("--manifest", type=Path, default=ROOT / "data/manifest.csv")
    p.add_argument("--splits", type=Path, default=ROOT / "data/splits.csv")
    p.add_argument("--out", type=Path, default=DEFAULT_DATA)
    p = sub.add_parser("cpu-cost")
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/sweep_cpu_cost.json")
    p = sub.add_parser("run")
    p.add_argument("names", nargs="*")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--deadline-s", type=float, default=480)
    p = sub.add_parser("run-one")
    p.add_argument("name")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--epochs", type=int, help="override (for a quick check of the code)")
    p = sub.add_parser("report")
    p.add_argument("results", type=Path)
    p.add_argument("--cpu-cost", type=Path, default=ROOT / "bench/results/sweep_cpu_cost.json")
    args = parser.parse_args(argv)
    if args.cmd == "export":
        print(json.dumps(export(args.data_dir, args.manifest, args.splits, args.out)))
    elif args.cmd == "cpu-cost":
        args.out.write_text(json.dumps(cpu_cost(), indent=2) + "\n")
    elif args.cmd == "run":
        run_all(args.names, args.data, args.out, args.workers, args.deadline_s)
    elif args.cmd == "run-one":
        trial = next(t for t in trials() if t.name == args.name)
        if args.epochs:
            trial = replace(trial, epochs=args.epochs)
        result = run_trial(trial, args.data, clf_epochs=args.epochs or 40)
        (args.out / f"{trial.name}.json").write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps({k: result[k] for k in ("segmentation", "classifier", "total_seconds")}))
    else:
        print(report(args.results, args.cpu_cost))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
