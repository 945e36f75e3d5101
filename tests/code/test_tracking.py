"""The code version recorded on every run: a commit, '-dirty' only for changed code."""

from __future__ import annotations

import subprocess

from busi.tracking import git_commit


def _git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def test_dirty_means_changed_code_not_pipeline_outputs(tmp_path):
    _git(tmp_path, "init", "-q")
    for name in ("dvc.lock", "code.py", "metrics/evaluation.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("v1\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "one")
    clean = git_commit(tmp_path)
    assert clean
    assert not clean.endswith("-dirty")
    # What a pipeline run rewrites does not make the code dirty ...
    (tmp_path / "dvc.lock").write_text("v2\n")
    (tmp_path / "metrics/evaluation.json").write_text("v2\n")
    assert git_commit(tmp_path) == clean
    # ... a code change does.
    (tmp_path / "code.py").write_text("v2\n")
    assert git_commit(tmp_path) == f"{clean}-dirty"


def test_outside_a_repository_there_is_no_commit(tmp_path):
    assert git_commit(tmp_path) is None


def test_a_retried_step_continues_its_run_instead_of_adding_one(tmp_path, monkeypatch):
    """An Airflow retry of a failed task: the step's run under the same parent resumes."""
    import mlflow
    import pytest

    from busi import tracking

    monkeypatch.setenv("BUSI_TRACKING", "on")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    with tracking.pipeline_run("pipeline-test") as parent:
        with pytest.raises(RuntimeError), tracking.step_run("train_unet", {"epochs": 2}):
            raise RuntimeError("killed by the first attempt")
        with tracking.step_run("train_unet", {"epochs": 2}) as second:
            tracking.log_metrics({"val_dice": 0.5})
        with tracking.step_run("train_classifier", {}) as other:
            pass
    children = mlflow.search_runs(
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'", output_format="list"
    )
    steps = sorted(r.data.tags["step"] for r in children)
    assert steps == ["train_classifier", "train_unet"]
    unet = next(r for r in children if r.data.tags["step"] == "train_unet")
    assert unet.info.run_id == second.info.run_id
    assert unet.info.status == "FINISHED"
    assert unet.data.metrics["val_dice"] == 0.5
    assert other.info.run_id != second.info.run_id


def test_the_pipeline_and_each_step_name_the_host_cpu_and_its_instruction_sets(
    tmp_path, monkeypatch
):
    """Two hosts of one named CPU type trained different chains from one seed: the runs say
    which CPU family and instruction sets they ran on, for reproduce to compare."""
    import mlflow

    from busi import tracking

    monkeypatch.setenv("BUSI_TRACKING", "on")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tracking, "host_isa", lambda: "family 25 model 1; avx avx2 fma")
    with tracking.pipeline_run("pipeline-test") as parent, tracking.step_run("train_unet", {}):
        pass
    (step,) = mlflow.search_runs(
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'", output_format="list"
    )
    pipeline = mlflow.get_run(parent.info.run_id)
    for run in (pipeline, step):
        assert run.data.tags["cpu_isa"] == "family 25 model 1; avx avx2 fma"
        assert run.data.tags["machine"] == tracking.machine()


def test_cpu_isa_reads_the_first_processor_s_family_and_tensorflow_s_flags():
    from busi.tracking import cpu_isa, host_isa

    cpuinfo = (
        "processor\t: 0\ncpu family\t: 6\nmodel\t\t: 143\nstepping\t: 8\n"
        "flags\t\t: fpu sse2 avx avx2 fma avx512f amx_tile\n\n"
        "processor\t: 1\ncpu family\t: 25\nflags\t\t: fpu\n"
    )
    assert cpu_isa(cpuinfo) == "family 6 model 143 stepping 8; avx avx2 fma avx512f amx_tile"
    assert cpu_isa("flags: sse2\n") == "none of avx/avx2/fma"
    assert host_isa()  # this machine's, never empty
