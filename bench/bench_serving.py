"""Benchmark of serving the champion (issue: serving): single-image latency of the
``busi-pipeline`` pyfunc (seg + crop + classify) on ~500x500 images, batch throughput, the
REST round trip through ``busi serve``, and the naive notebook path (load the two Keras
models, call ``model.predict`` per image) in the same run.

Run after `make run` (a champion in the project's MLflow store):

    python bench/bench_serving.py [--images 40] [--skip-rest]

Writes bench/results/serving.json and the generated part of bench/results/serving.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
MODEL_URI = "models:/busi-pipeline@champion"


def test_images(n: int, source: Path) -> list[bytes]:
    """PNG bytes of real test-split images (~500x500 as BUSI is), or synthetic ones."""
    import pandas as pd

    splits = REPO / "data" / "splits.csv"
    busi = REPO / "data" / "busi"
    out = []
    if splits.is_file() and busi.is_dir():
        rows = pd.read_csv(splits)
        for rel in rows.loc[rows["split"] == "test", "path"].astype(str)[:n]:
            path = busi / rel
            if path.is_file():
                out.append(path.read_bytes())
    if len(out) < n:
        from PIL import Image

        from busi.data.synthetic import synth_pair

        rng = np.random.default_rng(0)
        while len(out) < n:
            pixels = synth_pair(rng, "benign", 500, 500)[0]
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="PNG")
            out.append(buf.getvalue())
    return out


def percentiles(samples: list[float]) -> dict:
    ms = np.asarray(samples) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "n": len(samples)}  # fmt: skip


PROB_COLUMNS = ["prob_benign", "prob_malignant", "prob_normal"]


def bench_pyfunc(images: list[bytes], runtime: str = "auto") -> dict:
    """The pyfunc as served; ``runtime`` "keras" forces the Keras models instead of the
    LiteRT copies. Also returns the batch call's output frame (key ``frame``)."""
    import mlflow.pyfunc
    import pandas as pd

    started = time.perf_counter()
    model = mlflow.pyfunc.load_model(MODEL_URI, model_config={"runtime": runtime})
    load_s = time.perf_counter() - started
    for data in images[:5]:  # warm-up: first calls allocate and fill caches
        model.predict(pd.DataFrame({"image": [data]}))
    single = []
    for data in images:
        t = time.perf_counter()
        model.predict(pd.DataFrame({"image": [data]}))
        single.append(time.perf_counter() - t)
    t = time.perf_counter()
    frame = model.predict(pd.DataFrame({"image": images}))
    batch_s = time.perf_counter() - t
    return {
        "runtime": model.unwrap_python_model().runtime,
        "frame": frame,
        "load_seconds": load_s,
        "single": percentiles(single),
        "batch_images_per_second": len(images) / batch_s,
        "batch_size": len(images),
    }


def agreement(lite, keras_frame) -> dict:
    """How far the served (LiteRT) answers are from the Keras models' on the same images."""
    a, b = lite.pop("frame"), keras_frame
    return {
        "same_class": float((a["class"] == b["class"]).mean()),
        "max_prob_difference": float(np.abs(a[PROB_COLUMNS].values - b[PROB_COLUMNS].values).max()),
        "identical_masks": float((a["mask_png"] == b["mask_png"]).mean()),
    }


def bench_naive(images: list[bytes]) -> dict:
    """The notebook way: the Keras models, ``model.predict`` per image, same chain code."""
    import keras

    from busi.model.chain import predict_chain
    from busi.model.loading import chain_settings
    from busi.model.pipeline_model import decode_upload
    from busi.model.unet import load_unet

    unet = load_unet(REPO / "models/unet.keras")
    classifier = keras.models.load_model(REPO / "models/classifier.keras")
    crop = chain_settings(REPO / "data/rois/summary.json")
    pixels = [decode_upload(d) for d in images]
    predict_chain(pixels[:1], unet, classifier, crop.roi, crop.tta_flip)  # warm-up
    single = []
    for p in pixels:
        t = time.perf_counter()
        predict_chain([p], unet, classifier, crop.roi, crop.tta_flip)
        single.append(time.perf_counter() - t)
    return {"single": percentiles(single)}


def bench_rest(images: list[bytes], port: int = 5099) -> dict:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "components", "serve", "--port", str(port)],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(1)
        else:
            return {"error": "busi serve did not become healthy in 180 s"}

        def post(data: bytes) -> None:
            req = urllib.request.Request(
                f"{url}/predict", data=data, headers={"Content-Type": "image/png"}
            )
            with urllib.request.urlopen(req, timeout=60) as r:
                json.loads(r.read())

        post(images[0])
        samples = []
        for data in images:
            t = time.perf_counter()
            post(data)
            samples.append(time.perf_counter() - t)
        return {"round_trip": percentiles(samples)}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def render(r: dict) -> str:
    from bench.results_files import isa_note

    m = r["machine"]
    p, n, k, a = r["pyfunc"], r["naive"], r["pyfunc_keras"], r["agreement"]
    lines = [
        f"Run: {r['time']} on {m['cores']} cores ({m['cpu']}{isa_note(m)}), no GPU; "
        f"commit {m['commit']}; "
        f"load average before {m['load_before']}. Champion: {r['champion']}; "
        f"{p['batch_size']} test images (BUSI test split, ~500x500).",
        "",
        "| path | p50 (ms) | p95 (ms) | bar |",
        "|---|---:|---:|---|",
        f"| pyfunc ({p['runtime']}), one image (seg + crop + classify) | "
        f"{p['single']['p50_ms']:.0f} | {p['single']['p95_ms']:.0f} | p50 <= 40, p95 <= 80 |",
        f"| pyfunc ({k['runtime']}: Keras `predict_on_batch`), one image | "
        f"{k['single']['p50_ms']:.0f} | {k['single']['p95_ms']:.0f} | |",
        f"| naive: Keras `model.predict` per image | {n['single']['p50_ms']:.0f} | "
        f"{n['single']['p95_ms']:.0f} | |",
    ]
    if "round_trip" in r.get("rest", {}):
        rt = r["rest"]["round_trip"]
        lines.append(
            f"| REST round trip (`busi serve`, PNG body) | {rt['p50_ms']:.0f} | "
            f"{rt['p95_ms']:.0f} | p50 <= 60 |"
        )
    lines += [
        "",
        f"Batch throughput (one pyfunc call, {p['batch_size']} images): "
        f"{p['batch_images_per_second']:.1f} images/s with {p['runtime']} (bar >= 50), "
        f"{k['batch_images_per_second']:.1f} with {k['runtime']}. "
        f"Naive / pyfunc single-image p50: {n['single']['p50_ms'] / p['single']['p50_ms']:.2f}x. "
        f"Loading the pyfunc: {p['load_seconds']:.1f} s ({p['runtime']}), "
        f"{k['load_seconds']:.1f} s ({k['runtime']}).",
        "",
        f"{p['runtime']} versus {k['runtime']} on these images: same class for "
        f"{a['same_class']:.0%}, largest class-probability difference "
        f"{a['max_prob_difference']:.1g}, identical masks for {a['identical_masks']:.0%}.",
    ]
    return "\n".join(lines)


def main() -> int:
    from bench.bench_models import machine
    from bench.results_files import write_results

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--skip-rest", action="store_true")
    parser.add_argument("--source", type=Path, default=REPO / "data" / "busi")
    parser.add_argument(
        "--name",
        help="write serving_<name>.{json,md} instead of serving (another host's figures "
        "beside the committed ones)",
    )
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{REPO / 'mlflow.db'}")
    from mlflow import MlflowClient

    champion = MlflowClient().get_model_version_by_alias("busi-pipeline", "champion")
    images = test_images(args.images, args.source)
    result = {
        "time": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "champion": f"busi-pipeline v{champion.version}",
        "pyfunc": bench_pyfunc(images),
        "pyfunc_keras": bench_pyfunc(images, runtime="keras"),
        "naive": bench_naive(images),
    }
    result["agreement"] = agreement(result["pyfunc"], result["pyfunc_keras"].pop("frame"))
    if not args.skip_rest:
        result["rest"] = bench_rest(images)
    name = f"serving_{args.name}" if args.name else "serving"
    write_results(
        name, "Serving benchmark", result, render(result), script="bench/bench_serving.py"
    )
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
