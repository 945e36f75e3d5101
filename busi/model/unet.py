"""The U-Net as the steps after training load it."""

from __future__ import annotations

from pathlib import Path


def load_unet(path: Path):
    """A saved U-Net for inference (its training loss and metrics are not needed)."""
    import keras

    return keras.models.load_model(path, compile=False)


def average_unets(members: list):
    """One segmenter whose lesion probability is the mean of the members' (a single member
    is returned as it is): saved, loaded, compiled to the serving copy and run as any U-Net.
    The members become its layers ``unet_0``, ``unet_1``, ...; they must take the same input
    size (each keeps its own input normalisation inside it)."""
    from busi.model.chain import average_models

    return average_models(members, "unet_average", "image", "lesion", "unet")
