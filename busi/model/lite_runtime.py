"""The serving runtime: the trained Keras models compiled to LiteRT (TensorFlow Lite)
flatbuffers and run with the LiteRT interpreter (XNNPACK on CPU).

Why: on 2 CPU cores a 96 px U-Net call costs ~15 ms through Keras' ``predict_on_batch`` and
~8 ms through LiteRT, and loading needs neither TensorFlow nor Keras. The weights are the
same; the arithmetic differs only in float rounding. ``register_model`` compiles both models
when it logs ``busi-pipeline`` and refuses to register if the compiled model's outputs differ
from the Keras model's by more than ``AGREEMENT_TOLERANCE`` on probe inputs; the serving
benchmark reports the agreement on the real test images.

Pure core: ``compile_model`` (Keras model -> bytes) and ``LiteModel`` (bytes -> predictions).
"""

from __future__ import annotations

import os
import threading

import numpy as np

# Largest allowed absolute difference between a Keras model's output and its compiled
# copy's (probabilities in [0, 1]); measured differences are ~1e-6.
AGREEMENT_TOLERANCE = 1e-4


class CompileError(RuntimeError):
    """The compiled model does not reproduce the Keras model; the message says by how much."""


def compile_model(model) -> bytes:
    """A Keras model as a LiteRT flatbuffer (float32, no quantisation)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    return converter.convert()


class LiteModel:
    """A compiled model behind the small interface the chain uses: ``input_shape`` and
    ``predict(x)``. Images run one at a time through an interpreter sized for one image
    (batching does not speed up these models on CPU and keeps latency predictable). The
    interpreter is not thread-safe, so calls are serialised with a lock. ``num_threads``
    defaults to the CPUs this process may use."""

    def __init__(self, content: bytes, num_threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        # The interpreter's own default is one thread: use the cores this process may run on.
        threads = num_threads or len(os.sched_getaffinity(0))
        self._interpreter = Interpreter(model_content=content, num_threads=threads)
        self._interpreter.allocate_tensors()
        inp = self._interpreter.get_input_details()
        out = self._interpreter.get_output_details()
        if len(inp) != 1 or len(out) != 1:
            raise ValueError(f"expected one input and one output, got {len(inp)} and {len(out)}")
        self._input = inp[0]["index"]
        self._output = out[0]["index"]
        self._sample_shape = tuple(int(d) for d in inp[0]["shape"][1:])
        self._output_shape = tuple(int(d) for d in out[0]["shape"][1:])
        self._lock = threading.Lock()

    @property
    def input_shape(self) -> tuple:
        return (None, *self._sample_shape)

    def predict(self, x, batch_size: int | None = None, verbose: int = 0) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.shape[1:] != self._sample_shape:
            raise ValueError(f"expected inputs of shape (N, {self._sample_shape}), got {x.shape}")
        outputs = []
        with self._lock:
            for sample in x:
                self._interpreter.set_tensor(self._input, np.ascontiguousarray(sample[None]))
                self._interpreter.invoke()
                outputs.append(self._interpreter.get_tensor(self._output)[0].copy())
        if not outputs:
            return np.zeros((0, *self._output_shape), dtype=np.float32)
        return np.stack(outputs)


def disagreement(keras_model, lite: LiteModel, probe: np.ndarray) -> float:
    """Largest absolute difference between the two models' outputs on ``probe``."""
    expected = np.asarray(keras_model.predict_on_batch(np.asarray(probe, dtype=np.float32)))
    return float(np.abs(expected - lite.predict(probe)).max())


def probe_inputs(shape: tuple, seed: int = 0, n: int = 4) -> np.ndarray:
    """Inputs to compare a model and its compiled copy on: uniform noise, a blank image and
    a bright disc on dark, all in the models' [0, 1] input range."""
    rng = np.random.default_rng(seed)
    height, width, channels = shape
    noise = rng.random((max(n - 2, 1), height, width, channels), dtype=np.float32)
    blank = np.zeros((1, height, width, channels), dtype=np.float32)
    yy, xx = np.mgrid[:height, :width]
    disc = (yy - height / 2) ** 2 + (xx - width / 2) ** 2 <= (min(height, width) / 4) ** 2
    bright = np.repeat(disc[None, ..., None].astype(np.float32), channels, axis=-1) * 0.8 + 0.1
    return np.concatenate([noise, blank, bright])


def compile_checked(keras_model, tolerance: float = AGREEMENT_TOLERANCE) -> tuple[bytes, float]:
    """Compile a model and check the copy against it on probe inputs; returns the flatbuffer
    and the measured disagreement, or raises CompileError."""
    content = compile_model(keras_model)
    lite = LiteModel(content)
    gap = disagreement(keras_model, lite, probe_inputs(tuple(keras_model.input_shape[1:])))
    if not gap <= tolerance:
        raise CompileError(
            f"the compiled {keras_model.name!r} differs from the Keras model by {gap:.3g} "
            f"(tolerance {tolerance:g}); serve the Keras model (BUSI_SERVING_RUNTIME=keras) "
            "and report the converter's output"
        )
    return content, gap
