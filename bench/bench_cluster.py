"""Benchmark of the local cluster (issue 15): the quick-profile busi_training DAG run on
`busi up --cluster` (CeleryExecutor, two workers, Redis, Postgres, S3 on moto, DVC sync per
task) against the same run in `make run`'s single process (`busi run-training --profile
quick`: `airflow dags test`, one workspace, local stores).

For each task: its time in the Celery worker (task instance duration), the step's own wall
time (its nested MLflow run) and the gap before it (from the previous task's end to its
start: the scheduler noticing, queueing through Redis, the worker picking it up). The rest of
a task's time in the worker is the task's start-up and the DVC pull/push and run-state
transfer of DVC sync.

    python bench/bench_cluster.py

Writes bench/results/cluster.json and the generated part of bench/results/cluster.md.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.results_files import write_results  # noqa: E402

PROFILE = "quick"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _seconds(a: str | None, b: str | None) -> float | None:
    if not a or not b:
        return None
    return round((datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds(), 1)


def step_walls(uri: str, airflow_run_id: str | None = None) -> dict[str, float]:
    """The steps' own wall times: the nested runs of the DAG run's parent MLflow run (the
    latest busi_training parent run when no run id is given)."""
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    exps = [e.experiment_id for e in c.search_experiments()]
    where = "tags.kind = 'pipeline'"
    if airflow_run_id:
        where += f" and tags.airflow_run_id = '{airflow_run_id}'"
    parent = c.search_runs(exps, filter_string=where, order_by=["start_time DESC"])[0]
    children = c.search_runs(
        exps, filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    walls = {}
    for run in children:
        if run.info.end_time:
            walls[run.info.run_name] = round((run.info.end_time - run.info.start_time) / 1e3, 1)
    return walls


def cluster_run(base: Path) -> dict:
    from busi.local import cluster as cl
    from busi.local import cluster_run as cr
    from busi.local.up import down

    env = {
        **os.environ,
        "BUSI_PLATFORM_DIR": str(base / "platform"),
        "BUSI_CLUSTER_PROFILE": PROFILE,
        **{name: str(_free_port()) for name in cl.PORT_SETTINGS},
    }
    for name in ("MLFLOW_TRACKING_URI", "BUSI_WORKSPACE", "BUSI_LANDING"):
        env.pop(name, None)
    began = time.monotonic()
    up = subprocess.run(
        [sys.executable, "-m", "components", "up", "--cluster", "--project", str(REPO)],
        env=env,
        capture_output=True,
        text=True,
    )
    up_seconds = round(time.monotonic() - began, 1)
    try:
        if up.returncode != 0:
            raise RuntimeError(up.stdout + up.stderr)
        cluster = cl.load(REPO, env)
        state = cr.running_state(cluster)
        began = time.monotonic()
        cr.publish_data(cluster)
        publish_seconds = round(time.monotonic() - began, 1)
        api = cr.Api(state)
        result = cr.follow(api, cr.trigger(api, cluster.profile), timeout=1800)
        walls = step_walls(cluster.platform.tracking_uri, result["run_id"])
    finally:
        down(base / "platform", out=print)
    tis = sorted(result["task_instances"], key=lambda t: t["start_date"] or "~")
    tasks, previous_end = [], result["start_date"]
    for ti in tis:
        tasks.append(
            {
                "task": ti["task_id"],
                "worker": ti["hostname"],
                "gap_before": _seconds(previous_end, ti["start_date"]),
                "in_worker": round(ti["duration"], 1),
                "step": walls.get(ti["task_id"]),
            }
        )
        previous_end = ti["end_date"]
    return {
        "state": result["state"],
        "up_seconds": up_seconds,
        "publish_data_seconds": publish_seconds,
        "dag_run_seconds": _seconds(result["start_date"], result["end_date"]),
        "tasks": tasks,
    }


def single_process(base: Path) -> dict:
    ws = base / "workspace"
    env = {
        **os.environ,
        "BUSI_PLATFORM_DIR": str(base / "platform-single"),
        "BUSI_WORKSPACE": str(ws),
        "BUSI_AIRFLOW_PORT": str(_free_port()),
        "BUSI_MLFLOW_PORT": str(_free_port()),
    }
    for name in ("MLFLOW_TRACKING_URI", "BUSI_DVC_SYNC", "BUSI_DVC_REMOTE", "BUSI_LANDING"):
        env.pop(name, None)
    began = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "components", "run-training", "--profile", PROFILE],
        env=env,
        capture_output=True,
        text=True,
    )
    wall = round(time.monotonic() - began, 1)
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout[-3000:] + proc.stderr[-3000:])
    return {"command_seconds": wall, "steps": step_walls(f"sqlite:///{ws / 'mlflow.db'}")}


def summarize(cluster: dict, single: dict) -> dict:
    tasks = cluster["tasks"]
    n = len(tasks)
    in_worker = sum(t["in_worker"] for t in tasks)
    steps = sum(t["step"] or 0 for t in tasks)
    gaps = sum(t["gap_before"] or 0 for t in tasks)
    return {
        "tasks": n,
        "cluster_dag_run": cluster["dag_run_seconds"],
        "single_command": single["command_seconds"],
        "single_steps": round(sum(single["steps"].values()), 1),
        "cluster_steps": round(steps, 1),
        "scheduling_gap_per_task": round(gaps / n, 1),
        "in_worker_overhead_per_task": round((in_worker - steps) / n, 1),
        "overhead_per_task": round((cluster["dag_run_seconds"] - steps) / n, 1),
    }


def render(result: dict) -> str:
    s, c, single = result["summary"], result["cluster"], result["single"]
    lines = [
        f"Run: {result['date']} on {result['machine']} ({result['cores']} cores), "
        f"load average before {result['load_before']}; commit {result['commit']}.",
        "",
        "| quick profile, busi_training | seconds |",
        "|---|---:|",
        f"| single process (`busi run-training --profile quick`), whole command | "
        f"{s['single_command']} |",
        f"| single process, sum of the steps' own wall times | {s['single_steps']} |",
        f"| cluster: `busi up --cluster` | {c['up_seconds']} |",
        f"| cluster: data version published (import, push to S3) | {c['publish_data_seconds']} |",
        f"| cluster: DAG run (REST trigger to end) | {s['cluster_dag_run']} |",
        f"| cluster: sum of the steps' own wall times | {s['cluster_steps']} |",
        f"| cluster: overhead per task (DAG run - steps) / {s['tasks']} | "
        f"{s['overhead_per_task']} |",
        f"| of which scheduling gap per task (previous end to start) | "
        f"{s['scheduling_gap_per_task']} |",
        f"| of which in the worker, outside the step (start-up, DVC sync) | "
        f"{s['in_worker_overhead_per_task']} |",
        "",
        "| task | worker | gap before (s) | in worker (s) | step (s) | single-process step (s) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for t in c["tasks"]:
        lines.append(
            f"| {t['task']} | {t['worker']} | {t['gap_before']} | {t['in_worker']} | "
            f"{t['step']} | {single['steps'].get(t['task'])} |"
        )
    return "\n".join(lines)


def machine() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main() -> int:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    result = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "cores": os.cpu_count(),
        "load_before": [round(x, 2) for x in os.getloadavg()],
        "commit": commit,
    }
    base = Path(tempfile.mkdtemp(prefix="busi-bench-cluster-"))
    base.chmod(0o755)  # the postgres user enters it when run as root
    try:
        result["cluster"] = cluster_run(base)
        result["single"] = single_process(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    result["summary"] = summarize(result["cluster"], result["single"])
    write_results("cluster", "Cluster benchmark", result, render(result))
    print(render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
