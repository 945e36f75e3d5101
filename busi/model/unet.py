"""The U-Net as the steps after training load it."""

from __future__ import annotations

from functools import cache
from pathlib import Path


def load_unet(path: Path):
    """A saved U-Net (or an average of U-Nets, gated or not) for inference (its training
    loss and metrics are not needed)."""
    import keras

    return keras.models.load_model(path, compile=False, custom_objects=custom_objects())


def custom_objects() -> dict:
    """The layers of this module a saved segmenter may hold (for ``load_model``)."""
    return {"LesionGate": lesion_gate_layer()}


@cache
def lesion_gate_layer():
    """The ``LesionGate`` layer class (built on first use: no Keras import at import time).
    Called on ``[prob, gate]`` it returns ``prob`` where at least ``min_area`` of ``gate``'s
    pixels (and at least one) reach ``threshold``, and zeros elsewhere: one model's
    "is there a lesion at all" decides whether another's map is kept."""
    import keras

    class LesionGate(keras.layers.Layer):
        def __init__(self, threshold: float, min_area: float, **kwargs):
            super().__init__(**kwargs)
            self.threshold = float(threshold)
            self.min_area = float(min_area)

        def call(self, inputs):
            prob, gate = inputs
            ops = keras.ops
            marked = ops.mean(
                ops.cast(ops.greater_equal(gate, self.threshold), prob.dtype),
                axis=(1, 2, 3),
                keepdims=True,
            )
            found = ops.logical_and(
                ops.greater(marked, 0.0), ops.greater_equal(marked, self.min_area)
            )
            return prob * ops.cast(found, prob.dtype)

        def compute_output_shape(self, input_shape):
            return input_shape[0]

        def get_config(self):
            return {**super().get_config(), "threshold": self.threshold, "min_area": self.min_area}

    return LesionGate


def average_unets(members: list, gate=None):
    """One segmenter whose lesion probability is the mean of the members' (a single member
    is returned as it is): saved, loaded, compiled to the serving copy and run as any U-Net.
    The members become its layers ``unet_0``, ``unet_1``, ...; they must take the same input
    size (each keeps its own input normalisation inside it).

    With ``gate`` (a ``LesionRule``, or anything with its ``threshold`` and ``min_area``) the
    first member decides whether there is a lesion: the mean is kept only where at least
    ``min_area`` of the first member's pixels reach ``threshold`` (all zeros otherwise), so
    the average may draw the lesion but never finds one the first member does not."""
    import keras

    from busi.model.chain import average_models, member_outputs

    if gate is None or len(members) == 1:
        return average_models(members, "unet_average", "image", "lesion", "unet")
    inputs, outputs = member_outputs(members, "unet_average", "image", "unet")
    mean = keras.layers.Average(name="lesion_mean")(outputs)
    gated = lesion_gate_layer()(gate.threshold, gate.min_area, name="lesion")([mean, outputs[0]])
    return keras.Model(inputs, gated, name=f"unet_gated_average_{len(members)}")
