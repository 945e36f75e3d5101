"""busi_new_data and busi_training on the local cluster (`busi up --cluster`: CeleryExecutor,
two Celery workers with work trees of their own, Redis, Postgres, S3 on a moto server),
through the real scheduler and Airflow's REST API, on the quick profile (issue 15).

The cluster is brought up once for the module, and one chain of DAG runs carries every
scenario, to keep the module within a few minutes on two cores. Two complete batches land
at once in the S3 landing zone (all files, then both ``_READY`` markers back to back) and
busi_new_data is triggered twice at once: it runs one at a time (``max_active_runs=1``), so
the first run merges both batches into one new data version and the second finds nothing
(skipped); the merge's Asset event starts busi_training. That run carries two faults: the
worker running ``train_unet`` is killed (SIGKILL to its whole process session, as a
machine lost) and comes back only after the scheduler has retried the task; the MLflow
server is stopped while ``register_model`` runs and started again once that try has
failed. Each test below checks one consequence; the last one the new data: each batch
merged exactly once, one data version per merge (from the runs' XCom, the Asset events
and the .dir manifests in the S3 DVC remote), nothing in the landing zone lost, and the
training run on the newest version (its MLflow parent run, its run state's data.dvc and
the registered model say so), whichever worker merged and whichever ran each task.

Measured on 2 shared cores (AMD EPYC, load 3-4 from other runs, 2026-12-02): cluster up
39 s, landing to the Asset-triggered busi_training run 15 s, that run with both faults
458 s, the module 8.9 min (a second run: 524 s and 10.2 min; earlier, without the new-data
scenario and at load 5-6: 15 min)."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest

from busi.errors import BusiError
from busi.local import cluster as cl
from busi.local import cluster_run
from busi.local.processes import read_state, session_members, stop_services
from busi.local.services import HOST
from tests.code.test_platform import busi
from tests.conftest import free_port

pytestmark = [pytest.mark.slow, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
MODELS = ("busi-unet", "busi-classifier", "busi-pipeline")


@pytest.fixture(scope="module")
def cluster():
    for tool in ("redis-server", "setpriv"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} not found: `make setup` (as root) installs redis-server")
    try:
        cl.pg_bin()
    except BusiError as exc:
        pytest.skip(str(exc))
    # Not under pytest's tmp folder: the postgres user cannot enter root's private folders.
    base = Path(tempfile.mkdtemp(prefix="busi-cluster-"))
    base.chmod(0o755)
    env = {
        **os.environ,
        "BUSI_PLATFORM_DIR": str(base / "platform"),
        "BUSI_HEARTBEAT_TIMEOUT": "30",
        "BUSI_RETRY_DELAY": "5",  # Airflow waits 30 s before a retry otherwise
        "BUSI_CLUSTER_PROFILE": "quick",
        **{name: str(free_port()) for name in cl.PORT_SETTINGS},
    }
    for name in ("MLFLOW_TRACKING_URI", "BUSI_WORKSPACE", "BUSI_PARENT_RUN_ID", "BUSI_LANDING"):
        env.pop(name, None)
    began = time.monotonic()
    try:
        up = busi("up", "--cluster", "--project", str(REPO), env=env, timeout=420)
        assert up.returncode == 0, up.stdout + up.stderr
        print(f"cluster up in {time.monotonic() - began:.0f} s")
        yield cl.load(REPO, env), env
    finally:
        down = busi("down", "--project", str(REPO), env=env, timeout=180)
        shutil.rmtree(base, ignore_errors=True)
        assert down.returncode == 0, down.stdout + down.stderr


class Faults:
    """Injected from the follow loop: kill the worker that runs train_unet, restart it after
    the retry started; stop MLflow while register_model runs, restart it after that failed."""

    def __init__(self, cluster: cl.Cluster):
        self.cluster = cluster
        self.killed_worker: str | None = None
        self.worker_back = False
        self.mlflow_stopped = False
        self.mlflow_back = False

    def record(self, name: str) -> dict:
        return read_state(self.cluster.state_dir)["services"][name]

    def __call__(self, tis: list[dict]) -> None:
        by_task = {t["task_id"]: t for t in tis}
        unet, register = by_task["train_unet"], by_task["register_model"]
        if self.killed_worker is None and unet["state"] == "running" and unet["hostname"]:
            self.killed_worker = unet["hostname"]
            time.sleep(15)  # into the training itself, past the task's start-up
            members = session_members(self.record(f"airflow-{self.killed_worker}"))
            for pid in members:
                os.kill(pid, signal.SIGKILL)
            print(f"SIGKILL to {self.killed_worker}: pids {members}")
        if self.killed_worker and not self.worker_back and unet["try_number"] > 1:
            cl.restart(self.cluster, f"airflow-{self.killed_worker}")
            self.worker_back = True
        if not self.mlflow_stopped and register["state"] == "running":
            stop_services({"mlflow": self.record("mlflow")}, timeout=20)
            self.mlflow_stopped = True
            print("MLflow server stopped while register_model runs")
        if self.mlflow_stopped and not self.mlflow_back and register["state"] != "running":
            cl.restart(self.cluster, "mlflow")
            self.mlflow_back = True
            print(f"MLflow server back (register_model: {register['state']})")


NEW_DATA = "busi_new_data"
# Two complete batches: a benign, a malignant and a normal image with their masks, and one
# truncated PNG that the checks must quarantine.
BATCHES = {"clinic-a": 101, "clinic-b": 102}
BAD = "malignant/malignant (2).png"


def _make_batch(folder: Path, seed: int) -> None:
    from busi.data.synthetic import make_busi_like

    make_busi_like(folder, n_per_class=1, seed=seed, multi_mask=False)
    (folder / BAD).write_bytes(b"\x89PNG\r\n\x1a\ntruncated")


def _land_two_batches(cluster: cl.Cluster, folder: Path) -> dict[str, dict[str, str]]:
    """Both batches into the cluster's landing prefix, each file uploaded, then both
    ``_READY`` markers back to back: the two batches become ready at the same moment.
    Returns each batch's files (relative path -> md5) as landed."""
    import hashlib

    s3 = cl.s3_client(cluster)
    landed = {}
    for name, seed in BATCHES.items():
        _make_batch(folder / name, seed)
        files = sorted(p for p in (folder / name).rglob("*") if p.is_file())
        landed[name] = {
            p.relative_to(folder / name).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
            for p in files
        }
        for rel in landed[name]:
            s3.upload_file(str(folder / name / rel), cl.BUCKET, f"landing/{name}/{rel}")
    for name in BATCHES:
        s3.put_object(Bucket=cl.BUCKET, Key=f"landing/{name}/_READY", Body=b"")
    return landed


def _trigger_new_data(api: cluster_run.Api, profile: str) -> str:
    body = {"logical_date": None, "conf": {"profile": profile}}
    return api("POST", f"/dags/{NEW_DATA}/dagRuns", body)["dag_run_id"]


def _wait_runs(api: cluster_run.Api, dag_id: str, run_ids: list[str], timeout: float) -> list:
    deadline = time.monotonic() + timeout
    while True:
        runs = [api("GET", f"/dags/{dag_id}/dagRuns/{r}") for r in run_ids]
        if all(r["state"] in cluster_run.FINISHED for r in runs):
            return runs
        assert time.monotonic() < deadline, runs
        time.sleep(2)


def _merges(api: cluster_run.Api) -> tuple[dict, dict, list]:
    """Every busi_new_data run's ingest result (scheduled ones too), the workers the runs
    ran on, and the busi_data events they made."""
    runs = api("GET", f"/dags/{NEW_DATA}/dagRuns?limit=100")["dag_runs"]
    results = {r["dag_run_id"]: _ingest_result(api, r["dag_run_id"]) for r in runs}
    hosts = {
        r["dag_run_id"]: api(
            "GET", f"/dags/{NEW_DATA}/dagRuns/{r['dag_run_id']}/taskInstances/ingest_batch"
        ).get("hostname")
        for r in runs
    }
    events = api("GET", f"/assets/events?source_dag_id={NEW_DATA}&limit=100")["asset_events"]
    return results, hosts, events


def _ingest_result(api: cluster_run.Api, run_id: str) -> dict | None:
    import json
    import urllib.error

    path = f"/dags/{NEW_DATA}/dagRuns/{run_id}/taskInstances/ingest_batch/xcomEntries"
    try:
        value = api("GET", f"{path}/ingest_result")["value"]
    except urllib.error.HTTPError as exc:
        if exc.code == 404:  # a run that failed before it pushed its result
            return None
        raise
    return _plain(json.loads(value) if isinstance(value, str) else value)


def _plain(value):
    """An XCom value as stored (Airflow's serde wraps tuples) as plain JSON values."""
    if isinstance(value, dict):
        if value.get("__classname__") in ("builtins.tuple", "builtins.set"):
            return [_plain(v) for v in value["__data__"]]
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


@pytest.fixture(scope="module")
def new_data(cluster, tmp_path_factory):
    """Two batches land at once in the S3 landing zone and busi_new_data is triggered twice
    at once (one run at a time: the second waits for the first); returns as soon as the
    merge's Asset event has started busi_training, the run that ``faulty_run`` follows."""
    cluster, _ = cluster
    state = cluster_run.running_state(cluster)
    first_version = cluster_run.publish_data(cluster)
    api = cluster_run.Api(state)
    began = time.monotonic()
    landed = _land_two_batches(cluster, tmp_path_factory.mktemp("batches"))
    triggered = [_trigger_new_data(api, cluster.profile) for _ in range(2)]
    deadline = time.monotonic() + 600
    while not (training := api("GET", f"/dags/{cluster_run.DAG_ID}/dagRuns")["dag_runs"]):
        runs = [api("GET", f"/dags/{NEW_DATA}/dagRuns/{r}") for r in triggered]
        if all(r["state"] in cluster_run.FINISHED for r in runs):
            # The scheduler makes the Asset-triggered run within seconds of the event.
            deadline = min(deadline, time.monotonic() + 120)
        assert time.monotonic() < deadline, f"no busi_training run: {runs}"
        time.sleep(2)
    print(f"busi_training {training[0]['run_type']} {time.monotonic() - began:.0f} s after landing")
    return {
        "first_version": first_version,
        "landed": landed,
        "triggered": triggered,
        "training": training,
        "api": api,
    }


@pytest.fixture(scope="module")
def faulty_run(cluster, new_data):
    """The busi_training run that the merge's Asset event started, with both faults."""
    cluster, _ = cluster
    api = new_data["api"]
    assert len(new_data["training"]) == 1, new_data["training"]
    run_id = new_data["training"][0]["dag_run_id"]
    faults = Faults(cluster)
    result = cluster_run.follow(api, run_id, timeout=900, on_poll=faults)
    tries = {t["task_id"]: api.tries(run_id, t["task_id"]) for t in result["task_instances"]}
    print(f"DAG run {result['state']} in {result['wall_seconds']} s")
    return {"result": result, "tries": tries, "faults": faults, "api": api, "run_id": run_id}


def _mlflow(cluster: cl.Cluster):
    import mlflow

    return mlflow.MlflowClient(cluster.platform.tracking_uri)


def _pg_count(cluster: cl.Cluster, sql: str) -> int:
    import psycopg2

    conn = psycopg2.connect(
        host=HOST,
        port=cluster.pg_port,
        user=cl.PG_USER,
        password=cluster.password,
        dbname="mlflow",
    )
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchone()[0]
    finally:
        conn.close()


def test_the_dag_run_succeeds_with_tasks_on_both_workers(cluster, faulty_run):
    cluster, _ = cluster
    result = faulty_run["result"]
    assert result["state"] == "success", result["task_instances"]
    assert all(t["state"] == "success" for t in result["task_instances"])
    hosts = {t["hostname"] for tries in faulty_run["tries"].values() for t in tries}
    assert hosts == set(cl.WORKERS)
    # The runs are in Postgres, the artifacts and the DVC objects in the bucket.
    assert _pg_count(cluster, "SELECT count(*) FROM runs") >= 11
    s3 = cl.s3_client(cluster)
    assert s3.list_objects_v2(Bucket=cl.BUCKET, Prefix="mlflow/")["KeyCount"] > 10
    assert s3.list_objects_v2(Bucket=cl.BUCKET, Prefix="dvc/")["KeyCount"] > 10
    # The champion is registered once, from this DAG run.
    client = _mlflow(cluster)
    champion = client.get_model_version_by_alias("busi-pipeline", "champion")
    assert champion.version == "1"
    (parent,) = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.airflow_run_id = '{faulty_run['run_id']}' and tags.kind = 'pipeline'",
    )
    assert champion.tags["pipeline_run_id"] == parent.info.run_id
    assert parent.info.status == "FINISHED"


def test_a_killed_worker_s_train_unet_is_retried_and_one_set_of_models_registered(
    cluster, faulty_run
):
    cluster, _ = cluster
    faults, tries = faulty_run["faults"], faulty_run["tries"]["train_unet"]
    assert faults.killed_worker in cl.WORKERS
    assert faults.worker_back
    first, *_, last = sorted(tries, key=lambda t: t["try_number"])
    assert first["hostname"] == faults.killed_worker
    assert first["state"] == "failed"
    assert last["state"] == "success"
    assert last["try_number"] >= 2
    client = _mlflow(cluster)
    for name in MODELS:
        versions = client.search_model_versions(f"name = '{name}'")
        assert [v.version for v in versions] == ["1"], name


def test_mlflow_down_during_register_model_fails_loudly_then_retries_cleanly(cluster, faulty_run):
    cluster, _ = cluster
    faults, api = faulty_run["faults"], faulty_run["api"]
    assert faults.mlflow_stopped
    assert faults.mlflow_back
    tries = sorted(faulty_run["tries"]["register_model"], key=lambda t: t["try_number"])
    assert tries[0]["state"] == "failed"
    assert tries[-1]["state"] == "success"
    path = f"/dags/busi_training/dagRuns/{faulty_run['run_id']}/taskInstances/register_model"
    log = api("GET", f"{path}/logs/{tries[0]['try_number']}?full_content=true")
    text = str(log.get("content"))
    assert "Connection refused" in text or "Max retries exceeded" in text, text[-3000:]
    # No half-registered version: each model has one version, complete and READY.
    client = _mlflow(cluster)
    for name in MODELS:
        (version,) = client.search_model_versions(f"name = '{name}'")
        assert version.status == "READY"
        assert version.tags.get("pipeline_run_id"), (name, version.tags)
    card = client.get_model_version("busi-pipeline", "1")
    assert card.description.startswith("# busi-pipeline v1: model card")


def _objects(s3, prefix: str) -> dict[str, dict]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=cl.BUCKET, Prefix=prefix)
    return {o["Key"]: o for page in pages for o in page.get("Contents", [])}


def _manifest(s3, version: str) -> dict[str, str]:
    """A data version's file list (relpath -> md5) from its .dir object in the DVC remote."""
    import json

    key = f"dvc/files/md5/{version[:2]}/{version[2:]}"
    body = s3.get_object(Bucket=cl.BUCKET, Key=key)["Body"].read()
    return {entry["relpath"]: entry["md5"] for entry in json.loads(body)}


def test_two_batches_landing_at_once_are_merged_once_and_the_newest_version_trains(
    cluster, new_data, faulty_run
):
    import json

    cluster, _ = cluster
    api, landed = new_data["api"], new_data["landed"]
    # busi_new_data runs one at a time (max_active_runs=1): the second trigger waited for
    # the first run, and both ended well (merged, or skipped with nothing left to merge).
    runs = _wait_runs(api, NEW_DATA, new_data["triggered"], timeout=300)
    first, second = sorted(runs, key=lambda r: r["start_date"])
    assert first["state"] == second["state"] == "success", runs
    assert second["start_date"] >= first["end_date"]
    results, hosts, events = _merges(api)
    print(f"busi_new_data runs (run: worker): {hosts}")

    # Each batch merged exactly once; one data version per merge, each on the one before.
    merges = sorted(
        (r for r in results.values() if r and r["changed"]),
        key=lambda r: r["previous_version"] != new_data["first_version"],
    )
    assert merges, results
    merged = [b["name"] for m in merges for b in m["batches"]]
    assert sorted(merged) == sorted(BATCHES), merges
    assert merges[0]["previous_version"] == new_data["first_version"]
    for before, after in itertools.pairwise(merges):
        assert after["previous_version"] == before["new_version"]
    versions = [m["new_version"] for m in merges]
    newest = versions[-1]
    assert len(set(versions)) == len(versions)
    assert new_data["first_version"] not in versions
    good = {b: {rel for rel in files if rel != BAD} for b, files in landed.items()}
    for m in merges:
        for batch in m["batches"]:
            assert batch["accepted"] == 3, batch
            assert batch["quarantined"] == 1, batch
            assert set(batch["renamed"]) == good[batch["name"]]
    # One busi_data Asset event per merge, carrying its version and data.dvc.
    events = sorted(events, key=lambda e: e["timestamp"])
    assert [e["extra"]["data_version"] for e in events] == versions, events
    assert all(e["extra"]["data_dvc"].count(e["extra"]["data_version"]) == 1 for e in events)

    # The landing zone: nothing left, nothing lost, good files in _done, the bad one only in
    # _quarantine, each with its report naming the version it was merged into.
    s3 = cl.s3_client(cluster)
    keys = set(_objects(s3, "landing/"))
    expected = set()
    for batch in landed:
        expected |= {f"landing/_done/{batch}/{rel}" for rel in good[batch]}
        expected |= {f"landing/_done/{batch}/_READY", f"landing/_done/{batch}/report.json"}
        expected |= {
            f"landing/_quarantine/{batch}/{BAD}",
            f"landing/_quarantine/{batch}/report.json",
        }
    assert keys == expected, sorted(keys ^ expected)
    version_of = {b["name"]: m["new_version"] for m in merges for b in m["batches"]}
    for batch in landed:
        body = s3.get_object(Bucket=cl.BUCKET, Key=f"landing/_done/{batch}/report.json")["Body"]
        report = json.loads(body.read())
        assert report["data_version"] == version_of[batch]
        assert {q["path"] for q in report["quarantined"]} == {BAD}

    # The DVC remote: the newest version holds the first one's files unchanged and each
    # landed good file exactly once, under a new name.
    old, new = _manifest(s3, new_data["first_version"]), _manifest(s3, newest)
    assert {rel: new.get(rel) for rel in old} == old
    added = Counter(md5 for rel, md5 in new.items() if rel not in old)
    landed_good = Counter(files[rel] for b, files in landed.items() for rel in good[b])
    assert added == landed_good
    for version in versions:
        assert _manifest(s3, version)  # every merge's version was pushed

    # The training DAG ran for the newest version: its run was started by the Asset event
    # and its MLflow parent run, the data.dvc it carried and the model it registered all
    # name the newest version (whichever worker merged it and whichever ran each task).
    (training,) = new_data["training"]
    assert training["run_type"] == "asset_triggered"
    assert faulty_run["result"]["state"] == "success"
    run_id = training["dag_run_id"]
    path = f"/dags/{cluster_run.DAG_ID}/dagRuns/{run_id}/upstreamAssetEvents"
    consumed = api("GET", path)["asset_events"]
    assert events[-1]["id"] in {e["id"] for e in consumed}, consumed
    client = _mlflow(cluster)
    (parent,) = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.airflow_run_id = '{run_id}' and tags.kind = 'pipeline'",
    )
    assert parent.data.tags["data_version"] == newest
    state = Path(client.download_artifacts(parent.info.run_id, "run_state/data.dvc"))
    assert state.read_text() == events[-1]["extra"]["data_dvc"]
    assert client.get_model_version("busi-pipeline", "1").tags["data_version"] == newest
