"""`busi run-training --cluster`: a busi_training DAG run on the local cluster (`busi up
--cluster`), triggered through Airflow's REST API and followed to its end, printing each
task's state and the worker it ran on.

The data version comes the way a checkout would bring it: the synthetic data of the
cluster's profile is imported into the first worker's work tree with the S3 DVC remote, and
its ``data.dvc`` (what git carries) is copied into the other workers' work trees; the data
itself reaches them only through the remote.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

from busi.errors import BusiError
from busi.local import cluster as cl
from busi.local.processes import airflow_api, airflow_token, is_ours, read_state
from busi.local.services import running_services

logger = logging.getLogger(__name__)

DAG_ID = "busi_training"
FINISHED = ("success", "failed")


class Api:
    """Airflow's REST API of the cluster, as its admin (a new token when one expires)."""

    def __init__(self, state: dict):
        self.url = state["urls"]["airflow"]
        self.password = json.loads(Path(state["password_file"]).read_text())["admin"]
        self.token = airflow_token(self.url, self.password)

    def __call__(self, method: str, path: str, body: dict | None = None) -> dict:
        import urllib.error

        try:
            return airflow_api(self.url, self.token, method, path, body)
        except urllib.error.HTTPError as exc:
            if exc.code != 401:
                raise
            self.token = airflow_token(self.url, self.password)
            return airflow_api(self.url, self.token, method, path, body)

    def task_instances(self, run_id: str) -> list[dict]:
        path = f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?limit=100"
        return self("GET", path)["task_instances"]

    def tries(self, run_id: str, task_id: str) -> list[dict]:
        path = f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/tries"
        return self("GET", path)["task_instances"]


def running_state(cluster: cl.Cluster) -> dict:
    """The state of a running cluster, or a message that says how to start one."""
    state = read_state(cluster.state_dir)
    services = running_services(state)
    if not state or state.get("kind") != "cluster" or not services:
        raise BusiError(
            f"no cluster runs from {cluster.state_dir}: start one with `busi up --cluster` "
            "(make up-cluster)"
        )
    dead = sorted(name for name, rec in services.items() if not is_ours(rec))
    if dead:
        raise BusiError(f"the cluster's {', '.join(dead)} stopped: `busi down`, then up again")
    return state


def publish_data(cluster: cl.Cluster) -> str:
    """Import the profile's synthetic data into the first worker's work tree (pushed to the
    S3 remote) and hand its data.dvc to the others; returns the data version."""
    from busi.data.importer import ingest
    from busi.orchestration.workspace import synthetic_source

    first, *others = [cl.prepare_worker(cluster, w) for w in cl.WORKERS]
    source = synthetic_source(cluster.platform.project, cluster.profile, first)
    if source is None:
        raise BusiError(f"profile {cluster.profile!r} makes no synthetic data to run on")
    env = cl.shared_env(cluster, os.environ)
    keys = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    with mock.patch.dict(os.environ, {k: env[k] for k in keys}):  # the DVC push reads them
        result = ingest(source, first, env["BUSI_DVC_REMOTE"], cluster.s3_endpoint)
    for ws in others:
        shutil.copy(first / "data.dvc", ws / "data.dvc")
    return result.version


def trigger(api: Api, profile: str) -> str:
    """A manual busi_training DAG run through the REST API; returns its run_id."""
    body = {"logical_date": None, "conf": {"profile": profile}}
    return api("POST", f"/dags/{DAG_ID}/dagRuns", body)["dag_run_id"]


def follow(
    api: Api,
    run_id: str,
    timeout: float,
    out=print,
    on_poll: Callable[[list[dict]], None] | None = None,
    poll: float = 2.0,
) -> dict:
    """Poll the DAG run until it ends, printing each change of a task's state with the
    worker (hostname) and try; ``on_poll`` sees every poll's task instances (the tests
    inject faults from it). Returns the run's state and its task instances."""
    began = time.monotonic()
    seen: dict[str, tuple] = {}
    while True:
        run = api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}")
        tis = api.task_instances(run_id)
        for ti in sorted(tis, key=lambda t: t.get("start_date") or "~"):
            key = (ti["state"], ti.get("hostname"), ti.get("try_number"))
            if seen.get(ti["task_id"]) != key:
                seen[ti["task_id"]] = key
                out(
                    f"{time.monotonic() - began:6.0f} s  {ti['task_id']:<20} "
                    f"{ti['state'] or 'none':<14} try {ti.get('try_number')}  "
                    f"on {ti.get('hostname') or '-'}"
                )
        if on_poll is not None:
            on_poll(tis)
        if run["state"] in FINISHED:
            return {
                "run_id": run_id,
                "state": run["state"],
                "wall_seconds": round(time.monotonic() - began, 1),
                "start_date": run.get("start_date"),
                "end_date": run.get("end_date"),
                "task_instances": tis,
            }
        if time.monotonic() - began > timeout:
            raise BusiError(f"DAG run {run_id} still {run['state']} after {timeout:.0f} s")
        time.sleep(poll)


def run_training_cluster(
    project: Path, profile: str | None = None, timeout: float = 1800.0, out=print
) -> dict:
    """Publish the data version, trigger busi_training on the cluster and follow it."""
    from dataclasses import replace

    cluster = cl.load(project)
    if profile:
        cluster = replace(cluster, profile=profile)
    state = running_state(cluster)
    version = publish_data(cluster)
    out(f"data version {version} in {cluster.workspace(cl.WORKERS[0])} (DVC remote on S3)")
    api = Api(state)
    run_id = trigger(api, cluster.profile)
    out(f"triggered {DAG_ID} run {run_id} through {api.url}/api/v2")
    result = follow(api, run_id, timeout, out)
    result["data_version"] = version
    hosts = sorted({t.get("hostname") or "-" for t in result["task_instances"]})
    out(f"DAG run {run_id}: {result['state']} in {result['wall_seconds']} s on {', '.join(hosts)}")
    return result
