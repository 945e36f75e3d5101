"""A pipeline model version logged before the library moved from components/ to busi/
still loads and predicts: one is logged by the code of the last commit before the move (a
git worktree, in its own process), then loaded by today's code in a fresh process, both the
way the project loads versions (``busi.serving.server.load_pyfunc``) and the way MLflow
alone does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

# The last commit whose components/ held the library (pipeline_model included).
BEFORE_THE_MOVE = "772e73a2c3a4c42d523ebe32b1e38f308d38fc0e"

LOG_OLD_VERSION = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import components
    import mlflow
    from components.crop_rois import CropConfig
    from components.pipeline_model import log_pipeline_model
    from components.train_classifier import ClassifierConfig, build_classifier
    from busi.model.unet_training import ARCHITECTURES, build_unet

    tree, out = Path(sys.argv[1]), Path(sys.argv[2])
    assert Path(components.__file__).is_relative_to(tree), components.__file__
    unet = build_unet(32, ARCHITECTURES["compact"])
    classifier = build_classifier(ClassifierConfig(base_filters=4), 32)
    unet.save(out / "unet.keras")
    classifier.save(out / "classifier.keras")
    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    with mlflow.start_run():
        info = log_pipeline_model(
            out / "unet.keras", out / "classifier.keras", CropConfig(crop_size=32),
            (unet, classifier),
        )
    mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(out / "model"))
    """
)

# argv: model folder, how to load it ("busi": load_pyfunc, "mlflow": MLflow alone).
LOAD_AND_PREDICT = textwrap.dedent(
    """
    import io
    import json
    import sys

    import numpy as np
    import pandas as pd
    from PIL import Image

    model_dir, how = sys.argv[1], sys.argv[2]
    if how == "busi":
        from busi.serving.server import load_pyfunc

        model = load_pyfunc(model_dir)
    else:
        import mlflow.pyfunc

        model = mlflow.pyfunc.load_model(model_dir)
    pixels = np.zeros((96, 80), np.uint8)
    pixels[20:60, 24:56] = 200
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    out = model.predict(pd.DataFrame({"image": [buf.getvalue()]}))
    import components

    print(json.dumps({
        "class_module": type(model.unwrap_python_model()).__module__,
        "components": components.__file__,
        "columns": list(out.columns),
        "row": {k: str(v) for k, v in out.iloc[0].items() if k != "mask_png"},
    }))
    """
)


def _env(**extra: str) -> dict[str, str]:
    # No MLFLOW_* from earlier tests in this process (mlflow.set_experiment leaves
    # MLFLOW_EXPERIMENT_ID behind: an id that the fresh store below does not have).
    env = {
        k: v
        for k, v in os.environ.items()
        if k != "PYTHONPATH" and not k.startswith(("MLFLOW_", "BUSI_"))
    }
    return {**env, "BUSI_TRACKING": "off", "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


@pytest.fixture(scope="module")
def old_version(tmp_path_factory) -> Path:
    """The folder of a pyfunc logged by the code before the move."""
    known = subprocess.run(
        ["git", "cat-file", "-e", f"{BEFORE_THE_MOVE}^{{commit}}"], cwd=REPO_ROOT, check=False
    )
    if known.returncode != 0:
        pytest.skip(f"commit {BEFORE_THE_MOVE[:7]} is not in this clone (a shallow clone?)")
    tmp = tmp_path_factory.mktemp("old-version")
    tree, out = tmp / "tree", tmp / "out"
    out.mkdir()
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(tree), BEFORE_THE_MOVE],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", LOG_OLD_VERSION, str(tree), str(out)],
            cwd=tmp,
            env=_env(PYTHONPATH=str(tree)),
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(tree)], cwd=REPO_ROOT, check=False
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "model"


def _load_and_predict(model: Path, how: str, cwd: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_AND_PREDICT, str(model), how],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_the_old_version_names_the_old_class_and_carries_the_old_code(old_version):
    pickled = (old_version / "python_model.pkl").read_bytes()
    assert b"components.pipeline_model" in pickled
    assert b"busi.model" not in pickled
    assert (old_version / "code" / "components" / "pipeline_model.py").is_file()
    assert not (old_version / "code" / "busi").exists()


@pytest.mark.slow
def test_the_project_loads_an_old_version_with_todays_code(old_version, tmp_path):
    result = _load_and_predict(old_version, "busi", tmp_path)
    assert result["class_module"] == "busi.model.pipeline_model"
    assert Path(result["components"]).resolve() == (REPO_ROOT / "components/__init__.py")
    assert result["row"]["class"] in ("benign", "malignant", "normal")
    assert {"prob_benign", "lesion_found", "box", "mask_png"} <= set(result["columns"])


@pytest.mark.slow
def test_mlflow_alone_loads_an_old_version_with_its_own_code(old_version, tmp_path):
    # A process that has not imported components (mlflow models serve, a notebook) finds
    # the logged copy first on sys.path, as MLflow intends: the old code runs whole.
    result = _load_and_predict(old_version, "mlflow", tmp_path)
    assert result["class_module"] == "components.pipeline_model"
    assert Path(result["components"]).is_relative_to(old_version / "code")
    assert result["row"]["class"] in ("benign", "malignant", "normal")
