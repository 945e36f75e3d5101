"""The data stages through DVC on synthetic data in a scratch project, through the real CLI.
(The whole chain, with training, runs on the smoke profile in test_smoke_chain.py.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from busi.data.synthetic import make_busi_like
from tests.conftest import REPO_ROOT, run_dvc


def _busi(repo: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        [sys.executable, "-m", "components", *args],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
    )


@pytest.mark.slow
def test_dvc_repro_runs_the_data_stages_then_skips_them(dvc_project, tmp_path):
    for package in ("components", "busi"):  # stage deps
        shutil.copytree(REPO_ROOT / package, dvc_project / package)
    source = tmp_path / "source"
    make_busi_like(source, n_per_class=12, seed=11)
    proc = _busi(dvc_project, "ingest-data", str(source), "--remote", str(tmp_path / "remote"))
    assert proc.returncode == 0, proc.stderr
    env_path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    os.environ["PATH"], old_path = env_path, os.environ["PATH"]
    try:
        first = run_dvc(dvc_project, "repro", "split_data")
        assert "Running stage 'validate_data'" in first.stdout
        assert "Running stage 'split_data'" in first.stdout
        second = run_dvc(dvc_project, "repro", "split_data")
        assert "Running stage" not in second.stdout
        assert "didn't change" in second.stdout or "up to date" in second.stdout.lower()
        splits = pd.read_csv(dvc_project / "data" / "splits.csv")
        report = json.loads((dvc_project / "reports" / "validation.json").read_text())
        assert len(splits) == report["counts"]["accepted"] == 36
        assert set(splits["split"]) == {"train", "val", "test"}
        # A params change reruns only what depends on it; the test set stays frozen.
        params = (dvc_project / "params.yaml").read_text().replace("seed: 42", "seed: 43")
        (dvc_project / "params.yaml").write_text(params)
        third = run_dvc(dvc_project, "repro", "split_data")
        assert "Running stage 'split_data'" in third.stdout
        assert "Running stage 'validate_data'" not in third.stdout
        again = pd.read_csv(dvc_project / "data" / "splits.csv")
        assert again["split"].equals(splits["split"])
    finally:
        os.environ["PATH"] = old_path


def test_cli_lists_commands_and_rejects_unknown_ones():
    proc = _busi(REPO_ROOT, "--help")
    assert proc.returncode == 0
    for command in ("ingest-data", "validate-data", "split-data"):
        assert command in proc.stdout
    bad = _busi(REPO_ROOT, "train-everything")
    assert bad.returncode == 2
    assert "unknown command" in bad.stderr


def test_step_names_agree_across_components_cli_and_dvc():
    import yaml

    from busi.cli import COMMANDS

    stages = set(yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"])
    for stage in stages:
        assert stage.replace("_", "-") in COMMANDS
        assert (REPO_ROOT / "components" / f"{stage}.py").is_file()
        params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
        assert stage in params, f"params.yaml has no section for stage {stage}"
