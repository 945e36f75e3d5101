"""How well the drift check of `busi ingest-batch` works on the real data (issue 16): its
false-alarm rate on batches that come from BUSI itself and its power on batches shifted the
way another site's images differ.

    python bench/bench_drift.py [--workspace .] [--batches 20] [--sizes 10 30]

Needs a workspace after `make run` (data/busi, data/splits.csv, models/unet.keras). The
reference is what ingest-batch compares with: ``drift_reference_size`` images of the train
split. New batches are drawn from the val and test splits (images the reference does not
hold), so an unshifted batch is a true "no drift" case:
1. false alarms: ``--batches`` random unshifted batches per size; the share flagged is the
   false-alarm rate (two MMD tests at ``drift_alpha`` each: expected at most about 2 alpha);
2. power: the same random batches, each image shifted (flip, which must not count as drift;
   darker gamma, gain, half pixel size, blur, JPEG, speckle, a narrower field of view); the
   share flagged per shift and size, and which test caught it.
Nothing is merged and nothing in the workspace changes. Writes bench/results/drift.json
and drift.md.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _shifts() -> dict:
    from PIL import Image, ImageFilter

    def pil(x):
        return Image.fromarray(np.asarray(x, np.uint8))

    def same(p, m):
        return p, m

    def flip(p, m):
        return p[:, ::-1], (m[:, ::-1] if m is not None else None)

    def gamma(p, m):
        return (255 * (p / 255.0) ** 1.6).astype(np.uint8), m

    def gain(p, m):
        return np.clip(p.astype(int) + 40, 0, 255).astype(np.uint8), m

    def half_size(p, m):
        h, w = p.shape
        q = np.asarray(pil(p).resize((w // 2, h // 2), Image.BILINEAR))
        mm = None if m is None else np.asarray(pil(m * 255).resize((w // 2, h // 2))) > 127
        return q, mm

    def blur(p, m):
        return np.asarray(pil(p).filter(ImageFilter.GaussianBlur(2))), m

    def jpeg(p, m):
        buf = io.BytesIO()
        pil(p).save(buf, format="JPEG", quality=15)
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L")), m

    noise = np.random.default_rng(0)

    def speckle(p, m):
        noisy = p * noise.gamma(4.0, 1 / 4.0, p.shape)
        return np.clip(noisy, 0, 255).astype(np.uint8), m

    def narrow_view(p, m):
        h, w = p.shape
        dy, dx = int(h * 0.15), int(w * 0.15)
        keep = (slice(dy, h - dy), slice(dx, w - dx))
        return p[keep], (None if m is None else m[keep])

    return {
        "none": same,
        "flip": flip,
        "gamma_1.6": gamma,
        "gain_+40": gain,
        "half_pixel_size": half_size,
        "blur_sigma_2": blur,
        "jpeg_q15": jpeg,
        "speckle": speckle,
        "field_of_view_70pct": narrow_view,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workspace", type=Path, default=REPO)
    ap.add_argument("--params", type=Path, default=None)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 30])
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args(argv)

    import pandas as pd
    import yaml

    from busi.model.drift import (
        DriftConfig,
        compare,
        encoder,
        image_features,
        load_image_and_mask,
        reference_images,
    )

    ws = args.workspace.resolve()
    params = yaml.safe_load((args.params or ws / "params.yaml").read_text())["ingest_batch"]
    cfg = DriftConfig(
        mode="warn",
        alpha=params["drift_alpha"],
        permutations=params["drift_permutations"],
        reference_size=params["drift_reference_size"],
    )
    unet = ws / "models" / "unet.keras"
    if not unet.is_file():
        raise SystemExit(f"no trained U-Net at {unet}: run `make run` first")
    t0 = time.time()
    refs, source = reference_images(ws, cfg)
    embed = encoder(unet)
    ref_loaded = [load_image_and_mask(i, m) for i, m in refs]
    ref_x = np.stack([image_features(p, m) for p, m in ref_loaded])
    ref_e = embed([p for p, _ in ref_loaded])

    rows = pd.read_csv(ws / "data" / "splits.csv")
    pool_paths = [
        ws / "data" / "busi" / p for p in rows.loc[rows["split"].isin(["val", "test"]), "path"]
    ]
    pool = [
        load_image_and_mask(p, sorted(p.parent.glob(f"{p.stem}_mask*.png")))
        for p in pool_paths
        if p.is_file()
    ]
    shifts = _shifts()
    rng = np.random.default_rng(0)
    results: dict = {}
    for size in args.sizes:
        picks = [rng.choice(len(pool), size, replace=False) for _ in range(args.batches)]
        for name, shift in shifts.items():
            flagged = {"any": 0, "features": 0, "embedding": 0}
            p_feat, p_emb = [], []
            for pick in picks:
                shifted = [shift(*pool[i]) for i in pick]
                x = np.stack([image_features(p, m) for p, m in shifted])
                e = embed([p for p, _ in shifted])
                report = compare(ref_x, x, cfg, ref_e, e)
                flagged["any"] += report["drifted"]
                for test in ("features", "embedding"):
                    flagged[test] += bool(report["tests"][test].get("drifted"))
                p_feat.append(report["tests"]["features"]["p_value"])
                p_emb.append(report["tests"]["embedding"]["p_value"])
            results.setdefault(str(size), {})[name] = {
                "flagged_share": flagged["any"] / len(picks),
                "features_share": flagged["features"] / len(picks),
                "embedding_share": flagged["embedding"] / len(picks),
                "median_p_features": float(np.median(p_feat)),
                "median_p_embedding": float(np.median(p_emb)),
            }
            print(f"size {size:3d} {name:22s} flagged {flagged['any']}/{len(picks)}", flush=True)

    sys.path.insert(0, str(REPO))
    from bench.bench_models import machine

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ws, capture_output=True, text=True
    ).stdout.strip()
    m = machine()
    out = {
        "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{m['cpu']}, {m['cores']} cores, load {m['load_before'][0]:.1f} at the start",
        "workspace_commit": commit,
        "reference": f"{len(refs)} images: {source}",
        "pool": f"{len(pool)} val+test images",
        "alpha": cfg.alpha,
        "permutations": cfg.permutations,
        "batches_per_size": args.batches,
        "seconds": round(time.time() - t0, 1),
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "drift.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [
        "# Drift check on the real data",
        "",
        f"Generated by `bench/bench_drift.py` on {out['measured']}, {out['machine']}; "
        f"workspace at commit {commit} after `make run` on the real BUSI data. Reference: "
        f"{out['reference']}. New batches: random draws from the {out['pool']} (not in the "
        f"reference), {args.batches} per size, each shifted as named. Drift = either MMD test "
        f"(features, U-Net embedding) below alpha = {cfg.alpha} ({cfg.permutations} "
        "permutations). `none` and `flip` are not drift: their share flagged is the false-alarm "
        "rate; for the other rows it is the power.",
        "",
        "| batch size | shift | flagged | by features | by embedding | median p (features) "
        "| median p (embedding) |",
        "|---|---|---|---|---|---|---|",
    ]
    for size, by_shift in results.items():
        for name, r in by_shift.items():
            lines.append(
                f"| {size} | {name} | {r['flagged_share']:.0%} | {r['features_share']:.0%} | "
                f"{r['embedding_share']:.0%} | {r['median_p_features']:.3g} | "
                f"{r['median_p_embedding']:.3g} |"
            )
    (args.out / "drift.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / 'drift.md'} in {out['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
