"""Benchmark of the orchestration (issue: Airflow DAGs and the registry).

1. Overhead of Airflow on the real data: the latest ``busi_training`` DAG run of the
   default profile (``make run``), read from the project's MLflow store: the DAG run's wall
   time (its parent run) against the sum of the steps' own wall times (each step's nested
   run), and against the last ``dvc repro``-only pipeline run when there is one
   (``make run-dvc``; parent runs named ``pipeline-default``).
2. A second DAG run with no new data and the same params (``busi run-training`` again):
   every stage cached, the same models found in the registry, the champion kept.
3. Time from a batch landing to the promotion decision, on the smoke profile (real data
   would retrain for about 30 minutes): a batch is dropped in a temp landing zone, then
   ``busi_new_data`` and the ``busi_training`` run it schedules run through Airflow
   (``airflow dags test``), against a fresh workspace and MLflow store.

    python bench/bench_orchestration.py [--skip-second-run] [--skip-landing]

Writes bench/results/orchestration.json and the generated part of orchestration.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _wall(run) -> float | None:
    if run.info.end_time is None:
        return None
    return (run.info.end_time - run.info.start_time) / 1000.0


def _children(c, parent) -> list:
    return c.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )


def dag_overhead(uri: str) -> dict:
    c = _client(uri)
    exps = [e.experiment_id for e in c.search_experiments()]
    dags = c.search_runs(
        exps,
        filter_string="tags.airflow_dag_id = 'busi_training' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
    )
    # The latest DAG run in which the models were trained (not a cached rerun).
    for parent in dags:
        steps = {r.data.tags.get("step"): r for r in _children(c, parent)}
        if "train_unet" in steps:
            break
    else:
        return {"error": "no finished busi_training run that trained: run `make run` first"}
    step_walls = {
        name: r.data.metrics.get("step_wall_seconds") for name, r in sorted(steps.items())
    }
    wall = _wall(parent)
    inside = sum(v for v in step_walls.values() if v)
    out = {
        "dag_run_mlflow_id": parent.info.run_id,
        "dag_wall_seconds": wall,
        "steps_wall_seconds": inside,
        "step_wall_seconds": step_walls,
        "overhead_seconds": wall - inside,
        "overhead_share": (wall - inside) / inside,
    }
    dvc_runs = c.search_runs(
        exps,
        filter_string="attributes.run_name = 'pipeline-default' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
    )
    for run in dvc_runs:
        children = {r.data.tags.get("step") for r in _children(c, run)}
        if "train_unet" in children:
            out["dvc_repro_wall_seconds"] = _wall(run)
            out["dag_vs_dvc_repro"] = wall / _wall(run)
            break
    return out


def timed(cmd: list[str], env: dict, cwd: Path = REPO) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    return time.perf_counter() - started, proc


def second_run(source: str) -> dict:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    seconds, proc = timed(
        [sys.executable, "-m", "components", "run-training", "--source", source], env
    )
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:]}
    return {"seconds": seconds}


def landing_to_decision() -> dict:
    """On the smoke profile, in a temp workspace, Airflow home and MLflow store."""
    from busi.data.importer import ingest
    from busi.orchestration.workspace import prepare_workspace, synthetic_source
    from tests.dags.test_dags_end_to_end import land_batch

    base = Path(tempfile.mkdtemp(prefix="busi-bench-landing-"))
    ws = prepare_workspace(REPO, "smoke", base / "workspace")
    ingest(synthetic_source(REPO, "smoke", ws), ws, str(base / "dvc-remote"))
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(base / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "MLFLOW_TRACKING_URI": f"sqlite:///{base / 'mlflow.db'}",
        "BUSI_PROJECT_DIR": str(REPO),
        "BUSI_PROFILE": "smoke",
        "BUSI_WORKSPACE": str(ws),
        "BUSI_LANDING": str(base / "landing"),
        "DVC_NO_ANALYTICS": "1",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    airflow = str(Path(sys.executable).parent / "airflow")
    for args in (["db", "migrate"], ["dags", "reserialize"]):
        subprocess.run([airflow, *args], env=env, check=True, capture_output=True)
    land_batch(base / "landing", "batch-001")
    t_new, p1 = timed([airflow, "dags", "test", "busi_new_data"], env)
    t_train, p2 = timed([airflow, "dags", "test", "busi_training"], env)
    if p1.returncode or p2.returncode:
        return {"error": (p1.stderr + p2.stderr)[-3000:]}
    decision = _client(env["MLFLOW_TRACKING_URI"]).get_model_version_by_alias(
        "busi-pipeline", "champion"
    )
    return {
        "new_data_dag_seconds": t_new,
        "training_dag_seconds": t_train,
        "landing_to_decision_seconds": t_new + t_train,
        "champion_version": decision.version,
        "workspace": str(base),
    }


def render(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"Run: {result['time']} on {m['cores']} cores ({m['cpu']}), no GPU; commit "
        f"{m['commit']}; load average before {m['load_before']}.",
        "",
    ]
    o = result.get("overhead", {})
    if "dag_wall_seconds" in o:
        lines += [
            "### Airflow overhead, real data (default profile, `make run`)",
            "",
            "| | seconds |",
            "|---|---:|",
            f"| busi_training DAG run, wall (MLflow parent run) | {o['dag_wall_seconds']:.0f} |",
            f"| sum of the steps' own wall times ({len(o['step_wall_seconds'])} steps ran; "
            f"DVC skipped the others, unchanged) | {o['steps_wall_seconds']:.0f} |",
            f"| orchestration overhead (Airflow + DVC + process start) | "
            f"{o['overhead_seconds']:.0f} ({o['overhead_share']:.1%}; goal <= 10 %) |",
        ]
        if "dvc_repro_wall_seconds" in o:
            lines.append(
                f"| the same stages by `dvc repro` alone (latest `make run-dvc`) | "
                f"{o['dvc_repro_wall_seconds']:.0f} |"
            )
        lines += ["", "| step | wall (s) |", "|---|---:|"]
        lines += [f"| {k} | {v:.0f} |" for k, v in o["step_wall_seconds"].items() if v is not None]
        lines.append("")
    s = result.get("second_run", {})
    if "seconds" in s:
        lines += [
            f"Second DAG run, no new data, same params (`busi run-training`, whole command): "
            f"{s['seconds']:.0f} s (goal <= 60 s).",
            "",
        ]
    land = result.get("landing", {})
    if "landing_to_decision_seconds" in land:
        lines += [
            "Batch landing to promotion decision (smoke profile, synthetic data): "
            f"busi_new_data {land['new_data_dag_seconds']:.0f} s + busi_training "
            f"{land['training_dag_seconds']:.0f} s = {land['landing_to_decision_seconds']:.0f} s.",
            "",
        ]
    return "\n".join(lines)


def main() -> int:
    from bench.bench_models import machine
    from bench.results_files import write_results  # the same machine record as the model bench

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tracking-uri", default=f"sqlite:///{REPO / 'mlflow.db'}")
    parser.add_argument(
        "--source", default=os.environ.get("BUSI_SOURCE", "../shared/datasets/busi")
    )
    parser.add_argument("--skip-second-run", action="store_true")
    parser.add_argument("--skip-landing", action="store_true")
    args = parser.parse_args()
    # Parts skipped this time keep their figures from the previous run of this script.
    previous = REPO / "bench" / "results" / "orchestration.json"
    result = json.loads(previous.read_text()) if previous.is_file() else {}
    result |= {
        "time": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "overhead": dag_overhead(args.tracking_uri),
    }
    if not args.skip_second_run:
        result["second_run"] = second_run(args.source)
    if not args.skip_landing:
        result["landing"] = landing_to_decision()
    write_results("orchestration", "Orchestration benchmark", result, render(result))
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
