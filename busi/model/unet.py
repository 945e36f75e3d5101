"""The U-Net as the steps after training load it."""

from __future__ import annotations

from pathlib import Path


def load_unet(path: Path):
    """A saved U-Net for inference (its training loss and metrics are not needed)."""
    import keras

    return keras.models.load_model(path, compile=False)
