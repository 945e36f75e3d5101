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
