"""What a U-Net with a keras.applications encoder (train_unet.architecture: mobilenet_v2 |
resnet50) costs on this machine, beside the default compact U-Net: parameters, training
seconds per image (batch 16, fed like train_unet: cached tf.data, after two warm-up
steps), and one image's segmentation in serving (the LiteRT copy register_model compiles,
median and 95th percentile over repeated calls, against the serving bar of 40 ms p50).

    python bench/bench_unet_encoders.py [--size 96] [--steps 12] [--calls 200]

The weights are random (``encoder_weights: none``): cost does not depend on them, and no
machine of this project reaches ImageNet's. What pretrained weights give is not measured.
Writes bench/results/unet_encoders.{json,md} (the .md's generated part).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
ARCHITECTURES = ("compact", "mobilenet_v2", "resnet50")
SERVING_P50_MS = 40.0


def train_seconds_per_image(model, size: int, steps: int) -> float:
    """Seconds per training image of a compiled U-Net here, batch 16, fed like train_unet
    (cached tf.data), measured after two warm-up steps."""
    import tensorflow as tf

    x = np.random.default_rng(0).random((16 * steps, size, size, 1), dtype=np.float32)
    y = (x > 0.7).astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).cache().batch(16).prefetch(2)
    model.fit(ds.take(2), epochs=1, verbose=0)
    started = time.perf_counter()
    model.fit(ds, epochs=1, verbose=0)
    return (time.perf_counter() - started) / len(x)


def measure(architecture: str, size: int, steps: int, calls: int) -> dict:
    import keras

    from busi.model.lite_runtime import LiteModel, compile_checked
    from busi.model.unet_training import ARCHITECTURES as ARCHS
    from busi.model.unet_training import build_unet, compile_unet

    keras.utils.set_random_seed(0)
    model = compile_unet(build_unet(size, ARCHS[architecture]), 1e-3)
    per_image = train_seconds_per_image(model, size, steps)

    content, gap = compile_checked(model)
    lite = LiteModel(content)
    one = np.random.default_rng(1).random((1, size, size, 1), dtype=np.float32)
    for _ in range(10):
        lite.predict(one)
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        lite.predict(one)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    keras.backend.clear_session()
    return {
        "params": int(model.count_params()),
        "train_seconds_per_image": round(per_image, 5),
        "train_images_per_second": round(1 / per_image, 1),
        "serve_ms_p50": round(statistics.median(times), 2),
        "serve_ms_p95": round(times[int(0.95 * (len(times) - 1))], 2),
        "litert_disagreement": float(gap),
    }


def render(result: dict) -> str:
    m = result["machine"]
    from bench.results_files import measured_on

    lines = [
        f"Measured on {measured_on(m, m['date_utc'] + ' UTC')}: {result['size']} px, batch 16 "
        f"over {result['steps']} steps for training, {result['calls']} one-image calls of "
        "the LiteRT copy for serving (the U-Net alone; the classifier and the chain's "
        "post-processing come on top). Random weights.",
        "",
        "| architecture | parameters | training s / image | training images / s "
        "| serving U-Net p50 / p95 (ms) | vs compact, training "
        f"| p50 under {SERVING_P50_MS:g} ms |",
        "|---|---:|---:|---:|---|---:|---|",
    ]
    base = result["architectures"]["compact"]["train_seconds_per_image"]
    for name, r in result["architectures"].items():
        lines.append(
            f"| {name} | {r['params']:,} | {r['train_seconds_per_image']:.4f} "
            f"| {r['train_images_per_second']:.1f} | {r['serve_ms_p50']:.1f} / "
            f"{r['serve_ms_p95']:.1f} | {r['train_seconds_per_image'] / base:.1f}x "
            f"| {r['serve_ms_p50'] <= SERVING_P50_MS} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=96, help="image side (default: 96)")
    parser.add_argument("--steps", type=int, default=12, help="timed training batches")
    parser.add_argument("--calls", type=int, default=200, help="timed serving calls")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from bench.bench_data import machine_info
    from bench.results_files import write_results

    machine = machine_info()
    out = {}
    for name in ARCHITECTURES:
        out[name] = measure(name, args.size, args.steps, args.calls)
        print(name, out[name], flush=True)
    result = {
        "machine": machine,
        "size": args.size,
        "steps": args.steps,
        "calls": args.calls,
        "architectures": out,
    }
    write_results(
        "unet_encoders", "What a pretrained-encoder U-Net costs on CPU", result, render(result)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
