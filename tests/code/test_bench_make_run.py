"""The `make run` benchmark's verdicts, step times and report (bench/bench_make_run.py)."""

from __future__ import annotations

from bench.bench_make_run import render, step_times, verdicts


def test_the_bars_are_45_minutes_and_8_gib():
    ok = verdicts(wall_s=44 * 60, tree_peak_mib=3 * 1024)
    assert ok["wall_min"] == {"value": 44.0, "bar": ("<=", 45.0), "met": True}
    assert ok["peak_memory_gib"]["met"]
    slow = verdicts(wall_s=46 * 60, tree_peak_mib=9 * 1024)
    assert not slow["wall_min"]["met"]
    assert not slow["peak_memory_gib"]["met"]


def test_step_times_come_from_the_step_runs(tmp_path):
    import mlflow

    db = tmp_path / "mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.create_experiment("busi-pipeline")
    for step, start, seconds in (("crop_rois", 2_000_000, 3.0), ("train_unet", 1_000_000, 90.5)):
        run = client.create_run(exp, start_time=start, tags={"step": step})
        client.set_terminated(run.info.run_id, end_time=start + int(seconds * 1000))
    parent = client.create_run(exp, start_time=1_000_000, tags={"kind": "pipeline"})
    client.set_terminated(parent.info.run_id, end_time=9_000_000)
    assert list(step_times(db).items()) == [("train_unet", 90.5), ("crop_rois", 3.0)]


def test_the_report_says_machine_bars_and_steps():
    result = {
        "machine": {
            "date_utc": "2026-12-02 22:00:00",
            "cpu_model": "AMD EPYC",
            "nproc": 2,
            "memory_gib": 23.5,
            "loadavg_before": [0.1, 0.2, 0.3],
        },
        "commit": "abc1234",
        "run": {"command": "python -m busi.cli run-training", "user_s": 600, "sys_s": 60},
        "bars": verdicts(wall_s=50 * 60, tree_peak_mib=2048),
        "steps": {"train_unet": 1500.0},
        "headline": {"lesion_dice": 0.7, "accuracy": 0.72},
    }
    text = render(result)
    assert "on AMD EPYC (2 cores)" in text
    assert "| wall_min | 50.0 | <= 45.0 | no |" in text
    assert "| peak_memory_gib | 2.0 | <= 8.0 | yes |" in text
    assert "| CPU time (user + sys), min | 11.0 | | |" in text
    assert "| train_unet | 1500.0 |" in text
    assert "- lesion_dice: 0.700" in text
