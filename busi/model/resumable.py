"""A training callback's state, saved in the training's backup folder after every epoch so
that a killed training resumes as an uninterrupted one would (the U-Net's early stopping
and weight average, which the U-Net and classifier trainings share).

Keras' BackupAndRestore saves the weights and the epoch after the callbacks listed before
it have saved theirs, so a training killed between the two writes resumes from the epoch
before the one a state already holds. Each state therefore records the epochs it has seen,
the previous epoch's state is kept beside it, and a resumed training takes the one that
matches the epoch it resumes at.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _paths(state_dir: Path, name: str) -> tuple[Path, Path]:
    """The latest state file and the one of the epoch before (``name`` ends in .npz)."""
    return state_dir / name, state_dir / name.replace(".npz", ".previous.npz")


def save_epoch_state(
    state_dir: Path, name: str, epochs: int, state: dict, arrays: list[np.ndarray]
) -> None:
    """Save ``state`` (JSON) and ``arrays`` as the state after ``epochs`` epochs; the state
    it replaces becomes the previous one. Each file is written whole or not at all."""
    latest, previous = _paths(state_dir, name)
    state_dir.mkdir(parents=True, exist_ok=True)
    partial = state_dir / name.replace(".npz", ".partial.npz")
    record = {**state, "epochs": int(epochs)}
    np.savez(
        partial,
        state=np.array(json.dumps(record)),
        **{f"array_{i}": a for i, a in enumerate(arrays)},
    )
    if latest.is_file():
        latest.replace(previous)
    partial.replace(latest)


def load_epoch_state(state_dir: Path, name: str, epochs: int) -> tuple[dict, list] | None:
    """The state saved after ``epochs`` epochs (the latest, or the one before it when the
    latest is ahead of the backup a training resumes from), or None when there is none,
    such as at the first epoch. A state behind the backup, or one that is ahead by more
    than an epoch, is an error: the folder mixes two trainings."""
    found = []
    for path in _paths(state_dir, name):
        if not path.is_file():
            continue
        with np.load(path) as saved:
            state = json.loads(str(saved["state"]))
            arrays = [saved[f"array_{i}"] for i in range(len(saved.files) - 1)]
        if state.get("epochs") == epochs:
            return state, arrays
        found.append(state.get("epochs"))
    if found and epochs > 0:
        raise ValueError(
            f"{state_dir / name} holds the state after epoch(s) {found}, not after {epochs}, "
            f"the epoch the training resumes at: delete {state_dir} to train afresh"
        )
    return None


class ResumableState:
    """What a Keras callback with a saved per-epoch state shares (mix it in before the Keras
    class): set ``state_dir`` (the backup folder, or None: nothing is saved or loaded) and
    ``state_name``, define ``restore_state(state, arrays)``, and call ``save_state`` at each
    epoch's end. At the first ``on_epoch_begin`` of a fit, the epoch Keras' backup resumed
    at, the state saved after that many epochs is loaded and handed to ``restore_state``."""

    state_dir: Path | None = None
    state_name: str = ""

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._resume_checked = self.state_dir is None

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        if self._resume_checked:
            return
        self._resume_checked = True
        found = load_epoch_state(self.state_dir, self.state_name, epoch)
        if found is not None:
            self.restore_state(*found)

    def restore_state(self, state: dict, arrays: list) -> None:
        raise NotImplementedError

    def save_state(self, epoch: int, state: dict, arrays: list) -> None:
        """Save the state after ``epoch`` (0-based, Keras' count), when there is a folder."""
        if self.state_dir is not None:
            save_epoch_state(self.state_dir, self.state_name, epoch + 1, state, arrays)
