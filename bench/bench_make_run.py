"""`make run` on the real data as a newcomer runs it, timed as one run: a fresh clone of the
project's last commit (no DVC cache, no MLflow store, nothing trained), then its main job,
`busi run-training --profile default --source $BUSI_SOURCE` (what `make run` runs once the
venv exists). Reports the wall and CPU time, the peak memory (the summed RSS of the whole
process tree, sampled every 50 ms, and the largest single process), each step's own time
from its MLflow run, and the run's headline figures; against issue 13's bars (45 min on the
slowest machine type, 8 GiB).

    python bench/bench_make_run.py [--source ../shared/datasets/busi] [--keep]

Takes the machine for about 40 min on the slow type (AMD EPYC, 2 cores): run it when nothing
else trains. The venv is this interpreter's (the clone's code comes first on the path); the
venv's own set-up is not timed. Writes bench/results/make_run.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere
sys.path.insert(0, str(REPO / "bench"))

from bench_data import machine_info, measure  # noqa: E402
from results_files import write_results  # noqa: E402

# issue 13: `make run` within 45 min on the slowest machine type measured, peak memory <= 8 GiB
BARS = {"wall_min": ("<=", 45.0), "peak_memory_gib": ("<=", 8.0)}


def verdicts(wall_s: float, tree_peak_mib: float) -> dict:
    """Each bar's figure and whether it is met."""
    figures = {"wall_min": wall_s / 60, "peak_memory_gib": tree_peak_mib / 1024}
    return {
        name: {"value": round(value, 2), "bar": BARS[name], "met": value <= BARS[name][1]}
        for name, value in figures.items()
    }


def step_times(tracking_db: Path) -> dict[str, float]:
    """Wall seconds of each step's MLflow run (tag ``step``) in the clone's store, in the
    order they ran."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tracking_db}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, "tags.step != ''", order_by=["attributes.start_time"])
    return {
        run.data.tags["step"]: round((run.info.end_time - run.info.start_time) / 1e3, 1)
        for run in runs
        if run.info.end_time
    }


def render(result: dict) -> str:
    m = result["machine"]
    run = result["run"]
    lines = [
        f"Run: {m['date_utc']} UTC on {m['cpu_model']} ({m['nproc']} cores), "
        f"{m['memory_gib']} GiB, load average before {m['loadavg_before']}; "
        f"commit {result['commit']}.",
        "",
        f"Command (in a fresh clone, cwd the clone): `{run['command']}`",
        "",
        "| figure | value | bar | met |",
        "|---|---:|---:|---|",
    ]
    for name, v in result["bars"].items():
        op, bar = v["bar"]
        lines.append(f"| {name} | {v['value']} | {op} {bar} | {'yes' if v['met'] else 'no'} |")
    lines += [
        f"| CPU time (user + sys), min | {(run['user_s'] + run['sys_s']) / 60:.1f} | | |",
        f"| largest single process, GiB | {(run.get('max_rss_mib') or 0) / 1024:.2f} | | |",
        "",
        "| step (its own MLflow run) | seconds |",
        "|---|---:|",
    ]
    lines += [f"| {step} | {secs} |" for step, secs in result["steps"].items()]
    lines += [
        "",
        "Headline figures of this run: the test split, one draw with params.yaml's seeds (the",
        "spread over seeds is in chain_seeds.md).",
        "",
    ]
    lines += [f"- {k}: {v:.3f}" for k, v in result["headline"].items() if isinstance(v, float)]
    return "\n".join(lines)


def main() -> int:
    import json

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--source",
        type=Path,
        default=Path(os.environ.get("BUSI_SOURCE", REPO.parent / "shared/datasets/busi")),
        help="the BUSI dataset (default: $BUSI_SOURCE or ../shared/datasets/busi)",
    )
    parser.add_argument(
        "--clone",
        type=Path,
        default=REPO / "scratch" / "make-run" / "clone",
        help="where the fresh clone goes; replaced if it exists (default: %(default)s)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the clone afterwards")
    args = parser.parse_args()
    if not args.source.exists():
        raise SystemExit(f"{args.source} not found: set --source or BUSI_SOURCE to the BUSI set")
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "components", "busi", "dags", "dvc.yaml", "params.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if dirty:
        print(f"note: uncommitted changes are not in the clone:\n{dirty}", file=sys.stderr)
    shutil.rmtree(args.clone, ignore_errors=True)
    args.clone.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "clone", "-q", str(REPO), str(args.clone)], check=True)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=args.clone, capture_output=True, text=True
    ).stdout.strip()
    env = {
        **os.environ,
        "PYTHONPATH": str(args.clone),
        "DVC_NO_ANALYTICS": "1",
        "BUSI_PLATFORM_DIR": str(args.clone / ".platform"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    for name in ("MLFLOW_TRACKING_URI", "BUSI_WORKSPACE", "BUSI_PARENT_RUN_ID", "BUSI_PROFILE"):
        env.pop(name, None)
    machine = machine_info()
    cmd = [sys.executable, "-m", "busi.cli", "run-training", "--profile", "default"]
    cmd += ["--source", str(args.source.resolve())]
    run = measure("make_run", cmd, args.clone, env, args.clone.parent)
    evaluation = json.loads((args.clone / "metrics" / "evaluation.json").read_text())
    result = {
        "machine": machine,
        "commit": commit,
        "run": run,
        "bars": verdicts(run["wall_s"], run["tree_peak_rss_mib"]),
        "steps": step_times(args.clone / "mlflow.db"),
        "headline": evaluation["headline"],
    }
    write_results("make_run", "`make run` from a fresh clone", result, render(result))
    print(render(result))
    if not args.keep:
        shutil.rmtree(args.clone, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
