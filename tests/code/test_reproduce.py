"""busi reproduce: the pure core (plan, parent resolution, comparison, verdict) on fakes; the
shell on a tiny git + DVC project with a one-stage pipeline (default profile: worktree, DVC
cache, data checkout, params); and the whole smoke pipeline reproduced from its MLflow run."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from busi.errors import BusiError
from components.reproduce import (
    DEFAULT_TOLERANCE,
    NONDETERMINISM,
    LineageRow,
    RunRecord,
    code_drift,
    compare_lineage,
    compare_metrics,
    dirty_warning,
    format_report,
    judge,
    main,
    make_plan,
    pipeline_run_of,
    split_commit,
)

COMMIT = "a" * 40
TAGS = {
    "kind": "pipeline",
    "git_commit": COMMIT,
    "data_version": "d" * 32 + ".dir",
    "profile": "smoke",
    "params_md5": "p" * 32,
    "dvc_lock_md5": "l" * 32,
}


def record(run_id="r1", tags=None, metrics=None, name="pipeline-smoke") -> RunRecord:
    return RunRecord(
        run_id=run_id,
        name=name,
        experiment_id="1",
        status="FINISHED",
        tags=dict(TAGS if tags is None else tags),
        metrics=dict({"accuracy": 0.8, "lesion_dice": 0.6} if metrics is None else metrics),
    )


def fetcher(*runs: RunRecord):
    by_id = {run.run_id: run for run in runs}
    return by_id.get


# --- core ---------------------------------------------------------------------------------


def test_a_step_run_resolves_to_its_pipeline_run():
    parent = record("parent")
    step = record("step", tags={**TAGS, "kind": "", "mlflow.parentRunId": "parent"})
    assert pipeline_run_of("step", fetcher(parent, step)).run_id == "parent"
    assert pipeline_run_of("parent", fetcher(parent, step)).run_id == "parent"


def test_unknown_ids_and_a_lost_parent_are_named():
    with pytest.raises(BusiError, match=r"no MLflow run nope in sqlite:///x.db.*--tracking-uri"):
        pipeline_run_of("nope", fetcher(record()), "sqlite:///x.db")
    orphan = record("step", tags={**TAGS, "mlflow.parentRunId": "gone"})
    with pytest.raises(BusiError, match="nested in run gone, which is not in"):
        pipeline_run_of("step", fetcher(orphan))


def test_plan_reads_the_lineage_and_splits_a_dirty_commit():
    plan = make_plan(record(tags={**TAGS, "git_commit": f"{COMMIT}-dirty"}), "step")
    assert (plan.commit, plan.dirty, plan.profile) == (COMMIT, True, "smoke")
    assert plan.run_id == "r1"
    assert plan.requested_id == "step"
    assert plan.data_version == TAGS["data_version"]
    assert plan.params_md5 == TAGS["params_md5"]
    assert split_commit(COMMIT) == (COMMIT, False)


@pytest.mark.parametrize(
    ("tags", "metrics", "message"),
    [
        ({}, None, r"no lineage tag git_commit, data_version, profile.*busi run-pipeline"),
        ({"kind": "pipeline", "profile": "smoke"}, None, "no lineage tag git_commit, data_ver"),
        ({**TAGS, "kind": "step"}, None, "step run outside any pipeline run"),
        (TAGS, {}, "logged no headline metrics"),
    ],
)
def test_runs_that_cannot_be_rebuilt_are_refused(tags, metrics, message):
    with pytest.raises(BusiError, match=message):
        make_plan(record(tags=tags, metrics=metrics), "r1")


def test_dirty_warning_says_the_changes_are_lost_and_where_they_were():
    clean = make_plan(record(), "r1")
    dirty = make_plan(record(tags={**TAGS, "git_commit": f"{COMMIT}-dirty"}), "r1")
    assert dirty_warning(clean, ["components/x.py"]) is None
    assert "cannot be recovered" in dirty_warning(dirty, None)
    assert "no dvc.lock" in dirty_warning(dirty, None)
    assert "components/train_unet.py" in dirty_warning(dirty, ["components/train_unet.py"])
    assert "match the commit" in dirty_warning(dirty, [])


def test_code_drift_lists_the_stage_code_that_differs_from_the_commit():
    lock = {
        "stages": {
            "a": {"deps": [{"path": "components/a.py", "md5": "1"}, {"path": "data/busi"}]},
            "b": {"deps": [{"path": "components/b.py", "md5": "2"}]},
            "c": {"deps": [{"path": "components/gone.py", "md5": "3"}]},
        }
    }
    now = {"components/a.py": "1", "components/b.py": "changed"}
    assert code_drift(lock, now.get) == ["components/b.py", "components/gone.py"]
    assert code_drift({}, now.get) == []


def test_metrics_compare_with_an_absolute_tolerance():
    rows = compare_metrics(
        {"a": 0.50, "b": 0.50, "c": 0.5, "gone": 1.0},
        {"a": 0.52, "b": 0.53, "c": 0.5, "x": 1},
        0.02,
    )
    by_name = {row.name: row for row in rows}
    assert by_name["a"].ok  # exactly the tolerance, whatever the float noise
    assert not by_name["b"].ok
    assert by_name["b"].diff == pytest.approx(0.03)
    assert by_name["c"].ok
    assert by_name["c"].diff == 0
    assert by_name["gone"].new is None
    assert not by_name["gone"].ok
    assert by_name["x"].logged is None
    assert not by_name["x"].ok


def test_lineage_compares_base_commits_and_only_code_data_params_decide():
    new = {**TAGS, "git_commit": COMMIT, "dvc_lock_md5": "other"}
    rows = {
        row.name: row for row in compare_lineage({**TAGS, "git_commit": f"{COMMIT}-dirty"}, new)
    }
    assert rows["git_commit"].same
    assert rows["data_version"].same
    assert not rows["dvc_lock_md5"].same
    assert not rows["dvc_lock_md5"].decisive
    assert not compare_lineage(TAGS, {**TAGS, "params_md5": "x"})[2].same
    older = {row.name: row for row in compare_lineage({"git_commit": COMMIT}, TAGS)}
    assert not older["params_md5"].decisive  # not logged by the original: cannot decide


def test_the_stage_params_in_dvc_lock_decide_over_the_params_md5():
    lock = {"stages": {"a": {"params": {"params.yaml": {"a": {"x": 1}}}}, "b": {}}}
    other = {"stages": {"a": {"params": {"params.yaml": {"a": {"x": 2}}}}, "b": {}}}
    # A section no stage reads changes the md5 of params.yaml, not what the stages ran with.
    rows = compare_lineage(
        TAGS, {**TAGS, "params_md5": "changed"}, lock, json.loads(json.dumps(lock))
    )
    by_name = {row.name: row for row in rows}
    assert not by_name["params_md5"].same
    assert not by_name["params_md5"].decisive
    assert by_name["stage_params"].same
    assert by_name["stage_params"].decisive
    plan = make_plan(record(), "r1")
    metrics = compare_metrics({"accuracy": 0.8}, {"accuracy": 0.8}, 0.02)
    assert judge(metrics, rows, plan, None, 0.02).reproduced
    changed = compare_lineage(TAGS, TAGS, lock, other)
    verdict = judge(metrics, changed, plan, None, 0.02)
    assert not verdict.reproduced
    assert "the stage_params differs" in verdict.sentence
    assert "params differ" in verdict.sentence


def _verdict(logged, new, tags=TAGS, new_tags=None, drift=None):
    plan = make_plan(record(tags=tags, metrics=logged), "r1")
    rows = compare_metrics(logged, new, DEFAULT_TOLERANCE)
    lineage = compare_lineage(tags, new_tags or {**tags, "git_commit": COMMIT})
    return judge(rows, lineage, plan, drift, DEFAULT_TOLERANCE), plan, rows, lineage


def test_verdict_reproduced_within_tolerance():
    verdict, *_ = _verdict(
        {"accuracy": 0.8, "lesion_dice": 0.6}, {"accuracy": 0.81, "lesion_dice": 0.6}
    )
    assert verdict.reproduced
    assert "all 2 headline metrics are within ±0.02" in verdict.sentence
    assert "largest gap 0.0100" in verdict.sentence
    assert "uncommitted" not in verdict.sentence
    dirty = {**TAGS, "git_commit": f"{COMMIT}-dirty"}
    verdict, *_ = _verdict({"accuracy": 0.8}, {"accuracy": 0.8}, dirty, drift=["components/a.py"])
    assert verdict.reproduced
    assert "not the original's uncommitted changes" in verdict.sentence


def test_verdict_explains_a_gap_with_the_same_code_data_and_params_as_numerical():
    verdict, plan, rows, lineage = _verdict({"accuracy": 0.8}, {"accuracy": 0.7})
    assert not verdict.reproduced
    assert "accuracy differs by 0.1000 (more than 0.02)" in verdict.sentence
    assert NONDETERMINISM in verdict.sentence
    report = format_report(plan, "new1", rows, lineage, verdict, ["a note"])
    assert "NOTE: a note" in report
    assert "new1" in report
    assert "accuracy" in report
    assert "0.8000" in report
    assert "0.7000" in report
    assert report.splitlines()[-1] == verdict.sentence


def test_verdict_names_the_likeliest_cause():
    dirty = {**TAGS, "git_commit": f"{COMMIT}-dirty"}
    lost = _verdict({"accuracy": 0.8}, {"accuracy": 0.7}, dirty, drift=["components/a.py"])[0]
    assert "uncommitted changes to components/a.py, which cannot be recovered" in lost.sentence
    elsewhere = _verdict({"accuracy": 0.8}, {"accuracy": 0.7}, dirty, drift=[])[0]
    assert "work tree was dirty" in elsewhere.sentence
    other_data = _verdict(
        {"accuracy": 0.8}, {"accuracy": 0.8}, new_tags={**TAGS, "data_version": "x"}
    )
    assert not other_data[0].reproduced
    assert "other data" in other_data[0].sentence
    other_params = _verdict(
        {"accuracy": 0.8}, {"accuracy": 0.8}, new_tags={**TAGS, "params_md5": "x"}
    )
    assert not other_params[0].reproduced
    assert "params differ" in other_params[0].sentence
    missing = _verdict({"accuracy": 0.8, "ece": 0.1}, {"accuracy": 0.8})[0]
    assert "ece was logged by the original run but not by the new one" in missing.sentence


def test_lineage_rows_keep_informative_tags_out_of_the_verdict():
    row = LineageRow("dvc_lock_md5", "a", "b", same=False, decisive=False)
    plan = make_plan(record(), "r1")
    assert judge([], [row], plan, None, 0.02).reproduced


def test_a_negative_tolerance_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["some-run", "--tolerance", "-1"])
    assert "--tolerance must be 0 or more" in capsys.readouterr().err


# --- shell: a tiny git + DVC project, default profile ----------------------------------------

EVALUATE = """\
import json, pathlib, yaml, components
score = yaml.safe_load(open("params.yaml"))["evaluate"]["score"]
files = sum(1 for p in pathlib.Path("data/busi").rglob("*") if p.is_file())
pathlib.Path("metrics").mkdir(exist_ok=True)
headline = {"accuracy": score, "files": files}
summary = {"headline": headline, "code": components.__file__}
pathlib.Path("metrics/evaluation.json").write_text(json.dumps(summary))
"""
# -P: the current folder is not on the path, so only PYTHONPATH can bring the worktree's code.
DVC_YAML = """\
stages:
  evaluate:
    cmd: python -P -m components.evaluate
    deps: [data/busi, components/evaluate.py]
    params: [evaluate]
    metrics:
      - metrics/evaluation.json:
          cache: false
"""


def _git(repo: Path, *args: str) -> str:
    cmd = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args]
    return subprocess.run(cmd, cwd=repo, check=True, capture_output=True, text=True).stdout


def _worktrees(repo: Path) -> list[str]:
    lines = _git(repo, "worktree", "list", "--porcelain").splitlines()
    return [line.removeprefix("worktree ") for line in lines if line.startswith("worktree ")]


class FakeProject:
    """A committed project whose pipeline is one stage, and an MLflow store to log 'original'
    runs in by hand."""

    def __init__(self, base: Path):
        from mlflow import MlflowClient

        from busi.data.importer import ingest
        from busi.data.synthetic import make_busi_like
        from busi.data.versions import recorded_version
        from tests.conftest import run_dvc

        self.repo = base / "project"
        (self.repo / "components").mkdir(parents=True)
        _git(self.repo, "init", "-q")
        run_dvc(self.repo, "init", "-q")
        (self.repo / "components" / "__init__.py").write_text("")
        (self.repo / "components" / "evaluate.py").write_text(EVALUATE)
        (self.repo / "dvc.yaml").write_text(DVC_YAML)
        (self.repo / "params.yaml").write_text("evaluate:\n  score: 0.5\n")
        (self.repo / ".gitignore").write_text("/data/busi\n/metrics\n__pycache__/\n")
        make_busi_like(base / "source", n_per_class=2, seed=3)
        ingest(base / "source", self.repo, str(base / "dvc-remote"))
        _git(self.repo, "add", ".")
        _git(self.repo, "commit", "-q", "-m", "one-stage pipeline")
        self.commit = _git(self.repo, "rev-parse", "HEAD").strip()
        self.data_version = recorded_version(self.repo / "data.dvc")
        self.files = sum(1 for p in (self.repo / "data" / "busi").rglob("*") if p.is_file())
        self.uri = f"sqlite:///{base / 'mlflow.db'}"
        self.client = MlflowClient(self.uri)
        self.experiment = self.client.create_experiment(
            "busi-pipeline", artifact_location=(base / "mlartifacts").as_uri()
        )
        self.base = base

    def original(self, tags=None, metrics=None, params: str | None = None, lock=False) -> str:
        """An 'original' pipeline run; with ``lock`` it logs a dvc.lock as run_pipeline does
        (the stage's code dep and params, from the commit)."""
        params = params or (self.repo / "params.yaml").read_text()
        default_tags = {
            "kind": "pipeline",
            "git_commit": self.commit,
            "data_version": self.data_version,
            "profile": "default",
            "params_md5": hashlib.md5(params.encode()).hexdigest(),
        }
        run = self.client.create_run(
            self.experiment,
            run_name="pipeline-default",
            tags=default_tags if tags is None else tags,
        )
        run_id = run.info.run_id
        for name, value in (metrics or {"accuracy": 0.5, "files": self.files}).items():
            self.client.log_metric(run_id, name, value)
        logged = self.base / "logged" / run_id
        logged.mkdir(parents=True)
        (logged / "params.yaml").write_text(params)
        if lock:
            code = self.repo / "components" / "evaluate.py"
            dep = {
                "path": "components/evaluate.py",
                "md5": hashlib.md5(code.read_bytes()).hexdigest(),
            }
            stage = {"deps": [dep], "params": {"params.yaml": yaml.safe_load(params)}}
            (logged / "dvc.lock").write_text(yaml.safe_dump({"stages": {"evaluate": stage}}))
        for path in logged.iterdir():
            self.client.log_artifact(run_id, str(path))
        self.client.set_terminated(run_id)
        return run_id


@pytest.fixture(scope="module")
def fake(tmp_path_factory) -> FakeProject:
    return FakeProject(tmp_path_factory.mktemp("reproduce"))


def _reproduce(fake: FakeProject, run_id: str, out: Path) -> dict:
    from components.reproduce import reproduce

    try:
        return reproduce(run_id, out, tracking_uri=fake.uri, project=fake.repo)
    finally:
        assert _worktrees(fake.repo) == [str(fake.repo)], "a worktree was left behind"
        assert not (out / "code").exists()


@pytest.mark.slow
def test_default_profile_reruns_the_commit_on_the_projects_data(fake, tmp_path):
    original = fake.original(lock=True)
    # The worktree of an interrupted reproduction is replaced.
    _git(fake.repo, "worktree", "add", "--detach", str(tmp_path / "r" / "code"), "HEAD")
    result = _reproduce(fake, original, tmp_path / "r")
    assert result["reproduced"], result["report"]
    assert [row["name"] for row in result["metrics"]] == ["accuracy", "files"]
    assert result["code_drift"] == []  # the stage's code in the logged dvc.lock is the commit's
    lineage = {row["name"]: row for row in result["lineage"]}
    assert lineage["stage_params"]["same"]
    assert lineage["stage_params"]["decisive"]
    new = fake.client.get_run(result["new_run_id"])
    assert new.data.tags["reproduces"] == original
    assert new.data.tags["reproduced"] == "true"
    assert new.data.tags["git_commit"] == fake.commit
    assert new.data.tags["data_version"] == fake.data_version
    # The stage imported the worktree's components (with -P only PYTHONPATH could give it).
    evaluation = json.loads((tmp_path / "r" / "new" / "evaluation.json").read_text())
    assert Path(evaluation["code"]).is_relative_to(tmp_path / "r" / "code")
    assert Path(new.data.tags["reproduce_code_dir"]) == tmp_path / "r" / "code" / "components"
    saved = json.loads((tmp_path / "r" / "comparison.json").read_text())
    assert saved["verdict"] == result["verdict"]
    assert saved["new_run_id"] == new.info.run_id
    # The project itself was not touched: its data and dvc.lock are as they were.
    assert not (fake.repo / "metrics").exists()
    assert not (fake.repo / "dvc.lock").exists()


@pytest.mark.slow
def test_a_step_run_with_params_other_than_the_commits_uses_the_logged_params(fake, tmp_path):
    params = "evaluate:\n  score: 0.75\n"
    parent = fake.original(params=params, metrics={"accuracy": 0.75, "files": fake.files})
    step = fake.client.create_run(
        fake.experiment, run_name="evaluate", tags={"mlflow.parentRunId": parent, "step": "x"}
    ).info.run_id
    result = _reproduce(fake, step, tmp_path / "r")
    assert result["run_id"] == parent
    assert result["requested_run_id"] == step
    assert result["reproduced"], result["report"]
    assert any("using the params.yaml logged with the run" in note for note in result["notes"])


@pytest.mark.slow
def test_a_gap_beyond_the_tolerance_exits_1_with_the_reason(fake, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("busi.tracking.PROJECT_ROOT", fake.repo)
    original = fake.original(metrics={"accuracy": 0.9, "files": fake.files})
    argv = [original, "--workspace", str(tmp_path / "r"), "--tracking-uri", fake.uri]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "not reproduced: accuracy differs by 0.4000 (more than 0.02)" in out
    assert "not bit-exact across machines" in out
    assert main([*argv, "--tolerance", "0.5"]) == 0


@pytest.mark.slow
def test_a_data_version_in_neither_cache_nor_remote_is_refused(fake, tmp_path):
    tags = {
        "kind": "pipeline",
        "git_commit": fake.commit,
        "data_version": "0" * 32 + ".dir",
        "profile": "default",
    }
    with pytest.raises(BusiError, match=r"data version 0+\.dir is in neither.*busi ingest-data"):
        _reproduce(fake, fake.original(tags=tags), tmp_path / "r")


@pytest.mark.slow
def test_unknown_runs_commits_and_runs_without_lineage_are_refused(fake, tmp_path, capsys):
    from busi.cli import main as busi
    from components.reproduce import reproduce

    assert busi(["reproduce", "0" * 32, "--tracking-uri", fake.uri]) == 2
    assert f"no MLflow run {'0' * 32} in {fake.uri}" in capsys.readouterr().err
    absent = f"sqlite:///{tmp_path / 'absent.db'}"
    assert busi(["reproduce", "0" * 32, "--tracking-uri", absent]) == 2
    assert "no MLflow store at" in capsys.readouterr().err
    assert not (tmp_path / "absent.db").exists()
    bare = fake.original(tags={"purpose": "not a pipeline"})
    with pytest.raises(BusiError, match="no lineage tag git_commit, data_version, profile"):
        _reproduce(fake, bare, tmp_path / "r")
    lost = fake.original(
        tags={"kind": "pipeline", "git_commit": "f" * 40, "data_version": "x", "profile": "default"}
    )
    with pytest.raises(BusiError, match=f"commit {'f' * 40} is not in the repository"):
        _reproduce(fake, lost, tmp_path / "r")
    mine = tmp_path / "mine" / "code"
    mine.mkdir(parents=True)
    (mine / "keep.txt").write_text("not reproduce's")
    with pytest.raises(BusiError, match="exists and is not a worktree of"):
        reproduce(fake.original(), mine.parent, tracking_uri=fake.uri, project=fake.repo)
    assert (mine / "keep.txt").is_file()
    assert _worktrees(fake.repo) == [str(fake.repo)]


# --- the smoke pipeline, reproduced from its MLflow run --------------------------------------


def _copy_store(uri: str, dest: Path) -> str:
    """The smoke run's store, copied so that the new runs do not change what the other smoke
    tests read; new artifacts go beside the copy (old ones are read where they are)."""
    db = dest / "mlflow.db"
    shutil.copyfile(uri.removeprefix("sqlite:///"), db)
    with sqlite3.connect(db) as con:
        con.execute("UPDATE experiments SET artifact_location = ?", ((dest / "art").as_uri(),))
    return f"sqlite:///{db}"


@pytest.mark.slow
def test_the_smoke_run_is_reproduced_from_its_commit_in_a_worktree(smoke_run, tmp_path):
    from mlflow import MlflowClient

    from tests.conftest import REPO_ROOT

    uri = _copy_store(smoke_run["tracking_uri"], tmp_path)
    client = MlflowClient(uri)
    [parent] = client.search_runs(
        [client.get_experiment_by_name("busi-pipeline").experiment_id], "tags.kind = 'pipeline'"
    )
    out = tmp_path / "r"
    env = {**smoke_run["env"], "MLFLOW_TRACKING_URI": "sqlite:////nowhere/else.db"}
    cmd = [sys.executable, "-m", "components", "reproduce", parent.info.run_id]
    cmd += ["--workspace", str(out), "--tracking-uri", uri]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-5000:]
    result = json.loads((out / "comparison.json").read_text())
    assert result["verdict"] in proc.stdout

    # The verdict follows from the table, and the exit code from the verdict.
    decisive_same = all(row["same"] for row in result["lineage"] if row["decisive"])
    assert result["reproduced"] == (all(r["ok"] for r in result["metrics"]) and decisive_same)
    assert proc.returncode == (0 if result["reproduced"] else 1)
    assert {row["name"] for row in result["metrics"]} >= {"lesion_dice", "accuracy", "macro_f1"}
    commit, dirty = split_commit(parent.data.tags["git_commit"])
    if dirty:
        # Uncommitted changes of this checkout ran in the original, not in the reproduction:
        # it must say so; the metrics may or may not match.
        assert "cannot be recovered" in proc.stdout + proc.stderr
    else:
        # Same commit, same synthetic data, same params, same machine: the same numbers.
        assert result["reproduced"], proc.stdout
        assert max(row["diff"] for row in result["metrics"]) <= DEFAULT_TOLERANCE

    # The new runs: tagged, in the same store, and their code came from the worktree.
    new = client.get_run(result["new_run_id"])
    assert new.data.tags["reproduces"] == parent.info.run_id
    assert new.data.tags["kind"] == "pipeline"
    assert new.data.tags["profile"] == "smoke"
    assert Path(new.data.tags["reproduce_code_dir"]) == out / "code" / "components"
    steps = client.search_runs(
        [new.info.experiment_id], f"tags.mlflow.parentRunId = '{new.info.run_id}'"
    )
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    assert len(steps) == len(stages)  # one run per DVC stage
    for run in (new, *steps):
        # Computed by the running code from its own location: the clean worktree at the commit
        # (this checkout's code would add -dirty, or name another HEAD).
        assert run.data.tags["git_commit"] == commit
        assert run.data.tags["reproduces"] == parent.info.run_id
    assert (out / "workspace" / "metrics" / "evaluation.json").is_file()
    assert str(out / "code") not in _worktrees(REPO_ROOT)


def test_a_commit_from_before_busi_existed_gets_its_own_dispatcher(tmp_path):
    from busi.reproduction.rerun import code_env, old_layout_launcher

    old = tmp_path / "old"
    (old / "components").mkdir(parents=True)
    (old / "components" / "__init__.py").write_text("")
    (old / "components" / "cli.py").write_text("def main():\n    print('old dispatcher')\n")
    launcher = old_layout_launcher(old, tmp_path / "bin")
    assert launcher == tmp_path / "bin"
    env = {**os.environ, **code_env(old, "sqlite:///x.db", "e", "smoke", launcher)}
    assert env["PATH"].split(os.pathsep)[0] == str(launcher)
    proc = subprocess.run(["busi"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert proc.stdout.strip() == "old dispatcher", proc.stderr
    new = tmp_path / "new"
    (new / "busi").mkdir(parents=True)
    (new / "busi" / "cli.py").write_text("")
    assert old_layout_launcher(new, tmp_path / "bin2") is None
    assert old_layout_launcher(Path(__file__).resolve().parents[2], tmp_path / "b3") is None


def test_a_numerical_gap_names_the_two_hosts_when_their_instruction_sets_differ():
    here = {**TAGS, "machine": "AMD EPYC, 2 cores", "cpu_isa": "family 25 model 1; avx avx2 fma"}
    there = {**here, "git_commit": COMMIT, "cpu_isa": "family 25 model 17; avx avx2 avx512f"}
    verdict, plan, rows, lineage = _verdict({"accuracy": 0.8}, {"accuracy": 0.7}, here, there)
    assert not verdict.reproduced
    assert (
        "the original ran on AMD EPYC, 2 cores (family 25 model 1; avx avx2 fma), this run on "
        "AMD EPYC, 2 cores (family 25 model 17; avx avx2 avx512f)" in verdict.sentence
    )
    by_name = {row.name: row for row in lineage}
    assert not by_name["cpu_isa"].same
    assert not by_name["cpu_isa"].decisive  # the host explains a gap, it never decides one
    assert by_name["machine"].same
    assert "cpu_isa" in format_report(plan, "new1", rows, lineage, verdict, [])
    same_host = _verdict({"accuracy": 0.8}, {"accuracy": 0.7}, here)[0]
    assert "same family and instruction sets (family 25 model 1; avx avx2 fma)" in (
        same_host.sentence
    )
    assert "nondeterministic step" in same_host.sentence
    unknown = {**here, "cpu_isa": "unknown"}
    neither = _verdict({"accuracy": 0.8}, {"accuracy": 0.7}, unknown)[0]
    assert NONDETERMINISM in neither.sentence
    assert "same family" not in neither.sentence
    # within tolerance another host changes nothing
    assert _verdict({"accuracy": 0.8}, {"accuracy": 0.8}, here, there)[0].reproduced
