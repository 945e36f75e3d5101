"""An interrupted U-Net training resumes where it stopped: kill it mid-run, rerun, it goes on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.slow


def _epochs(history: Path) -> list[int]:
    if not history.is_file() or not history.read_text().strip():
        return []
    return pd.read_csv(history)["epoch"].astype(int).to_list()


def test_killed_training_resumes_from_its_last_epoch(smoke_run, tmp_path):
    params = yaml.safe_load((smoke_run["workspace"] / "params.yaml").read_text())
    params["train_unet"].update(epochs=8, patience=100)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    history, backup = tmp_path / "history.csv", tmp_path / "unet.backup"
    cmd = [
        sys.executable,
        "-m",
        "components",
        "train-unet",
        "--data",
        str(smoke_run["workspace"] / "data" / "prepared"),
        "--model",
        str(tmp_path / "unet.keras"),
        "--backup-dir",
        str(backup),
        "--history",
        str(history),
        "--metrics",
        str(tmp_path / "m.json"),
        "--params",
        str(tmp_path / "params.yaml"),
    ]
    env = {**os.environ, "BUSI_TRACKING": "off"}
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    deadline = time.monotonic() + 480  # a ceiling, for a loaded machine
    while len(_epochs(history)) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert proc.poll() is None, "training ended before it could be interrupted"
    time.sleep(0.3)  # into the next epoch
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = _epochs(history)
    assert 3 <= len(done_before) < 8
    assert backup.is_dir(), "no backup was left to resume from"
    assert any(backup.iterdir()), "no backup was left to resume from"

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    after = _epochs(history)
    # The first run's epochs are kept and the rerun goes on from the backup: no epoch 0 again,
    # and together they cover all 8 epochs.
    assert after[: len(done_before)] == done_before
    assert after[len(done_before) :][0] >= len(done_before) - 1
    assert after.count(0) == 1
    assert max(after) == 7
    assert (tmp_path / "unet.keras").is_file()
    assert not backup.exists() or not any(backup.iterdir())  # removed after a normal end


def test_a_backup_of_another_training_is_not_resumed(tmp_path):
    from busi.model.unet_training import _claim_backup

    backup = tmp_path / "unet.backup"
    assert _claim_backup(backup, "config A") is False  # nothing to resume, folder claimed
    (backup / "latest.weights.h5").write_bytes(b"weights of A")
    assert _claim_backup(backup, "config A") is True  # same training: resume
    assert _claim_backup(backup, "config B") is False  # other params or data: start over
    assert not (backup / "latest.weights.h5").exists()
    assert (backup / "busi_fingerprint.txt").read_text() == "config B"


def test_a_backup_killed_while_being_written_leaves_the_last_one_whole(tmp_path):
    """A kill while the backup's weights are written (the truncated file made the rerun crash
    in h5py instead of resuming): the previous backup stays whole and is the one resumed."""
    import json

    import keras
    import numpy as np

    from busi.model.unet_training import backup_and_restore

    def model():
        m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        m.compile(optimizer="adam", loss="mse")
        return m

    saved = model()
    callback = backup_and_restore(tmp_path / "backup")
    callback.set_model(saved)
    callback.on_epoch_end(2)  # epoch 2 done: the backup says resume at 3
    weights = tmp_path / "backup" / "latest.weights.h5"
    before = weights.read_bytes()

    def killed(filepath, overwrite=True):
        Path(filepath).write_bytes(before[: len(before) // 3])  # half written, then the kill
        raise KeyboardInterrupt

    saved.save_weights = killed
    with pytest.raises(KeyboardInterrupt):
        callback.on_epoch_end(3)
    assert weights.read_bytes() == before
    metadata = json.loads((tmp_path / "backup" / "training_metadata.json").read_text())
    assert metadata["epoch"] == 3

    resumed = model()
    again = backup_and_restore(tmp_path / "backup")
    again.set_model(resumed)
    again.on_train_begin()  # reads the backup: no error from the half-written file
    assert resumed._initial_epoch == 3
    for a, b in zip(resumed.get_weights(), saved.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
