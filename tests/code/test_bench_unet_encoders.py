"""bench/bench_unet_encoders.py: what an encoder U-Net costs to train and to serve."""

from __future__ import annotations

import pytest

from bench.bench_unet_encoders import measure, render

pytest.importorskip("keras")


def test_the_cost_of_an_encoder_unet_is_measured_and_compared_with_the_compact_one():
    figures = {name: measure(name, 32, steps=1, calls=3) for name in ("compact", "mobilenet_v2")}
    for r in figures.values():
        assert r["train_seconds_per_image"] > 0
        assert r["serve_ms_p50"] > 0
        assert r["serve_ms_p95"] >= r["serve_ms_p50"]
        assert r["litert_disagreement"] <= 1e-4
    assert figures["mobilenet_v2"]["params"] > figures["compact"]["params"]

    machine = {"cpu_model": "Test CPU", "nproc": 2, "project_commit": "abc", "date_utc": "d"}
    result = {"machine": machine, "size": 32, "steps": 1, "calls": 3, "architectures": figures}
    table = render(result)
    assert "Test CPU, 2 cores, commit abc" in table
    rows = [line for line in table.splitlines() if line.startswith("| mobilenet_v2 ")]
    assert len(rows) == 1
    ratio = (
        figures["mobilenet_v2"]["train_seconds_per_image"]
        / figures["compact"]["train_seconds_per_image"]
    )
    assert f"| {ratio:.1f}x |" in rows[0]
    assert f"{figures['mobilenet_v2']['params']:,}" in rows[0]
