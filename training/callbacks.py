"""Training callbacks: KL warm-up, a NaN guard with a clear message, and per-epoch reporting."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import keras

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class KLWarmup(keras.callbacks.Callback):
    """Raises the KL weight linearly from 1/(epochs+1) to 1 over the first ``epochs`` epochs."""

    def __init__(self, epochs: int) -> None:
        super().__init__()
        self.epochs = epochs

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        weight = 1.0 if self.epochs <= 0 else min(1.0, (epoch + 1) / (self.epochs + 1))
        self.model.kl_weight.assign(weight)


class NaNGuard(keras.callbacks.Callback):
    """Stops at the first non-finite loss and remembers where, so ``fit``'s caller can raise."""

    def __init__(self) -> None:
        super().__init__()
        self.failure: str | None = None
        self._epoch = 0

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self._epoch = epoch

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.failure = f"the loss became {float(loss)} at epoch {self._epoch + 1}, batch {batch + 1}"
            self.model.stop_training = True

    def raise_if_failed(self) -> None:
        if self.failure:
            raise TrainingDiverged(
                f"training stopped: {self.failure}. Try a lower --learning-rate, a longer --kl-warmup, "
                "or check the input for extreme values"
            )


class EpochReporter(keras.callbacks.Callback):
    """Reports each epoch's metrics to a sink (MLflow) and a one-line progress message."""

    def __init__(self, epochs: int, sink: Callable[[dict[str, float], int], None] | None = None) -> None:
        super().__init__()
        self.epochs = epochs
        self.sink = sink

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        logs = {k: float(v) for k, v in (logs or {}).items()}
        logs["kl_weight"] = float(keras.ops.convert_to_numpy(self.model.kl_weight))
        if self.sink:
            self.sink(logs, epoch)
        log.info(
            "epoch %d/%d  neg_elbo %.3f  val_neg_elbo %.3f  (reconstruction %.3f, kl %.3f, kl weight %.2f)",
            epoch + 1,
            self.epochs,
            logs.get("neg_elbo", math.nan),
            logs.get("val_neg_elbo", math.nan),
            logs.get("val_reconstruction", math.nan),
            logs.get("val_kl", math.nan),
            logs["kl_weight"],
        )
