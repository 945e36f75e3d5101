"""An exponential moving average of a model's weights, as a Keras callback that the U-Net
and the classifier trainings share (a step never imports another step)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from busi.model.resumable import ResumableState

# What the average keeps in a backup folder (beside Keras' BackupAndRestore files): the
# shadow weights and the number of batches averaged, in one file written whole (and the
# previous epoch's beside it: busi.model.resumable).
WEIGHT_AVERAGE_STATE = "busi_weight_average.npz"


def weight_average_callback(momentum: float, state_dir: Path | None = None):
    """A Keras callback that keeps an exponential moving average of the model's weights and
    puts it in the model for validation: swapped in at ``on_test_begin``, swapped back to the
    raw weights at ``on_epoch_end``. List it after EarlyStopping and every callback that
    scores the model at the end of an epoch (they then see the average, and EarlyStopping
    keeps, and at the end restores, the averaged weights of the best epoch), and before
    BackupAndRestore (which then saves the raw weights that training goes on from).

    The average starts at zero and is divided by ``1 - momentum ** step`` (Adam's bias
    correction): after ``step`` batches it is the weights after batches 1..step weighed
    ``momentum ** (step - k)``, normalised, so the untrained initial weights count for
    nothing. All weights are averaged, batch-norm statistics included.

    With ``state_dir`` (a training's backup folder) the average and its step count are saved
    after every epoch (``busi.model.resumable``) and the one of the epoch a resumed training
    starts at is loaded, so a killed training that resumes averages as an uninterrupted one
    would, also when it was killed between this save and Keras' backup.

    Not Keras' ``use_ema``: with ``ema_overwrite_frequency=None`` it puts the average in the
    model only when ``fit`` ends, so validation and early stopping never see it (and
    EarlyStopping's restore then overwrites it); it also starts at the first step's weights.
    """
    import keras

    class WeightAverage(ResumableState, keras.callbacks.Callback):
        state_name = WEIGHT_AVERAGE_STATE

        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            weights = self.model.get_weights()
            self.shadow = [np.zeros(np.shape(w), dtype=np.float64) for w in weights]
            self.steps = 0
            self.raw = None

        def restore_state(self, state, shadow):
            if state["momentum"] != momentum or len(shadow) != len(self.shadow):
                raise ValueError(
                    f"{state_dir / WEIGHT_AVERAGE_STATE} holds the average of another "
                    f"training (momentum {state['momentum']}, {len(shadow)} weights): "
                    f"delete {state_dir} to train afresh"
                )
            self.shadow, self.steps = shadow, int(state["steps"])

        def on_train_batch_end(self, batch, logs=None):
            self.steps += 1
            for shadow, weight in zip(self.shadow, self.model.get_weights(), strict=True):
                shadow *= momentum
                shadow += (1.0 - momentum) * weight

        def averaged(self):
            correction = 1.0 - momentum**self.steps
            return [s / correction for s in self.shadow]

        def on_test_begin(self, logs=None):
            if self.steps == 0 or self.raw is not None:
                return  # nothing averaged yet, or the average is already in place
            self.raw = self.model.get_weights()
            self.model.set_weights(
                [a.astype(r.dtype) for a, r in zip(self.averaged(), self.raw, strict=True)]
            )

        def on_epoch_end(self, epoch, logs=None):
            if self.raw is not None:
                self.model.set_weights(self.raw)
                self.raw = None
            self.save_state(epoch, {"momentum": momentum, "steps": self.steps}, self.shadow)

    callback = WeightAverage()
    callback.state_dir = state_dir
    return callback
