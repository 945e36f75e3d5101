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
    import keras

    if not members:
        raise ValueError("a segmenter needs at least one U-Net")
    if len(members) == 1:
        return members[0]
    shapes = {tuple(m.input_shape[1:]) for m in members}
    if len(shapes) != 1:
        raise ValueError(f"the U-Nets take different inputs {sorted(shapes)}; they must agree")
    for k, member in enumerate(members):
        member.name = f"unet_{k}"
    inputs = keras.Input(shapes.pop(), name="image")
    outputs = keras.layers.Average(name="lesion")([member(inputs) for member in members])
    return keras.Model(inputs, outputs, name=f"unet_average_{len(members)}")
