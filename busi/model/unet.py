"""The U-Net as the steps after training load it."""

from __future__ import annotations

from functools import cache
from pathlib import Path


def load_unet(path: Path):
    """A saved U-Net (or an average of U-Nets, gated or not) for inference (its training
    loss and metrics are not needed)."""
    import keras

    return keras.models.load_model(path, compile=False, custom_objects=custom_objects())


def unet_bottleneck(unet):
    """The encoder of a saved segmenter: the model from its image input to its bottleneck
    (the input of its first up-convolution), [S,S,1] -> [s,s,F], sharing ``unet``'s layers.
    For an average of U-Nets (``average_unets``), its first member's; None when no model in
    it has an up-convolution."""
    import keras

    core = _plain_unet(unet)
    if core is None:
        return None
    up = next(layer for layer in core.layers if isinstance(layer, keras.layers.Conv2DTranspose))
    return keras.Model(core.input, up.input, name=f"{core.name}_bottleneck")


def _plain_unet(model):
    """``model`` itself if it has an up-convolution of its own, else the first nested model
    that has (depth first), else None."""
    import keras

    if any(isinstance(layer, keras.layers.Conv2DTranspose) for layer in model.layers):
        return model
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found = _plain_unet(layer)
            if found is not None:
                return found
    return None


def custom_objects() -> dict:
    """The layers of this module a saved segmenter may hold (for ``load_model``)."""
    return {"LesionGate": lesion_gate_layer()}


@cache
def lesion_gate_layer():
    """The ``LesionGate`` layer class (built on first use: no Keras import at import time).
    Called on ``[prob, gate]`` it returns ``prob`` where at least ``min_area`` of ``gate``'s
    pixels (and at least one) reach ``threshold``, and zeros elsewhere: one model's
    "is there a lesion at all" decides whether another's map is kept. With ``fallback``,
    where ``gate`` finds a lesion but ``prob`` does not (by the same test), ``gate``'s own
    map is returned instead, so the gate's lesions are never lost."""
    import keras

    class LesionGate(keras.layers.Layer):
        def __init__(self, threshold: float, min_area: float, fallback: bool = False, **kwargs):
            super().__init__(**kwargs)
            self.threshold = float(threshold)
            self.min_area = float(min_area)
            self.fallback = bool(fallback)

        def found(self, prob):
            """1.0 per image whose map has a lesion by the test above, else 0.0 ([N,1,1,1])."""
            ops = keras.ops
            marked = ops.mean(
                ops.cast(ops.greater_equal(prob, self.threshold), prob.dtype),
                axis=(1, 2, 3),
                keepdims=True,
            )
            hit = ops.logical_and(
                ops.greater(marked, 0.0), ops.greater_equal(marked, self.min_area)
            )
            return ops.cast(hit, prob.dtype)

        def call(self, inputs):
            prob, gate = inputs
            if self.fallback:
                own = self.found(prob)
                prob = own * prob + (1.0 - own) * gate
            return prob * self.found(gate)

        def compute_output_shape(self, input_shape):
            return input_shape[0]

        def get_config(self):
            return {
                **super().get_config(),
                "threshold": self.threshold,
                "min_area": self.min_area,
                "fallback": self.fallback,
            }

    return LesionGate


def average_unets(members: list, gate=None, fallback: bool = False):
    """One segmenter whose lesion probability is the mean of the members' (a single member
    is returned as it is): saved, loaded, compiled to the serving copy and run as any U-Net.
    The members become its layers ``unet_0``, ``unet_1``, ...; they must take the same input
    size (each keeps its own input normalisation inside it).

    With ``gate`` (a ``LesionRule``, or anything with its ``threshold`` and ``min_area``) the
    first member decides whether there is a lesion: the mean is kept only where at least
    ``min_area`` of the first member's pixels reach ``threshold`` (all zeros otherwise), so
    the average may draw the lesion but never finds one the first member does not. With
    ``fallback`` too, where the first member finds a lesion and the mean none, the first
    member's map is kept: the average then only redraws lesions both find. The gate acts on
    each call, so on each pass of the chain's flip average, not on their mean: a lesion the
    first member finds in one pass only can still fall under the threshold after it
    (bench/results/unet_ensemble_folds_gated.md)."""
    import keras

    from busi.model.chain import average_models, member_outputs

    if gate is None or len(members) == 1:
        return average_models(members, "unet_average", "image", "lesion", "unet")
    inputs, outputs = member_outputs(members, "unet_average", "image", "unet")
    mean = keras.layers.Average(name="lesion_mean")(outputs)
    layer = lesion_gate_layer()(gate.threshold, gate.min_area, fallback, name="lesion")
    gated = layer([mean, outputs[0]])
    return keras.Model(inputs, gated, name=f"unet_gated_average_{len(members)}")
