"""Training settings: a plain dataclass, cheap to import (the CLI reads its defaults)."""

from __future__ import annotations

import math
from dataclasses import dataclass

PROMOTE_CHOICES = ("if-better", "always", "never")
#: The KL weight a conditional model trains with after warm-up, unless --beta says otherwise: below 1 the
#: latent keeps more of each image's style, so decoded samples vary as real digits do (README
#: "Synthetic images"). A plain model, the anomaly detector, trains on the ELBO itself (beta 1).
CONDITIONAL_BETA = 0.25
#: The smallest image side, and the fewest training images, at which ``architecture="auto"`` gives a
#: conditional model convolutions (measured at 28x28 with 1,700 images; 8x8 digits keep dense layers,
#: and so do generators of 20-200 images, whose samples taught a classifier less with convolutions).
CONV_MIN_SIDE = 16
CONV_MIN_ROWS = 1000
#: Measured on digits and mnist5k at 10 % labels: q(y|x)'s accuracy rises up to about 2 per pixel, then flattens.
CLASSIFIER_WEIGHT_PER_PIXEL = 2.0


@dataclass
class TrainConfig:
    data: str | tuple[str, ...] = "digits"  # one input or several (read as one data set)
    model_name: str = "vae-digits"
    conditional: bool = False
    latent_dim: int = 16  # README "How the defaults were chosen"
    likelihood: str = "auto"  # chosen from the data: see training.fitting.choose_likelihood
    epochs: int = 60
    batch_size: int = 64
    learning_rate: float = 1e-3
    kl_warmup: int = 10
    beta: float | None = None  # the KL weight after warm-up; None: 1, or CONDITIONAL_BETA for a conditional model
    # semi-supervised conditional training: the weight of q(y|x)'s cross-entropy per labelled row; None:
    # CLASSIFIER_WEIGHT_PER_PIXEL times the pixels of an image (the ELBO grows with them)
    classifier_weight: float | None = None
    early_stopping: int = 10
    architecture: str = "auto"  # "dense", "conv", or auto: see model_architecture
    pixel_levels: int | None = None  # grey levels for the binned likelihood; None: from the data
    filters: int = 32
    hidden_units: int = 256
    seed: int = 0
    target_fpr: float = 0.01
    calibration_folds: int | None = None  # cross-fitted calibration (training.cross_fit); None: auto
    anomaly_score: str = "elbo_latent_knn_rarity_rate"  # scoring.anomaly.METHODS; docs/detection.md
    score_samples: int = 16
    promote: str = "if-better"
    shape: tuple[int, int, int] | None = None
    pixel_scale: float | None = None  # numeric pixels are divided by it (None: training.data.validate's rule)
    max_reject_rate: float = 0.01  # stop when a larger share of the input rows cannot be used
    memory_budget_mb: int | None = None  # images beyond it are read to a memory map on disk (None: half the RAM)
    mixed_precision: bool = False
    xla: bool = False
    work_dir: str | None = None

    def classifier_loss_weight(self, image_shape: tuple[int, ...]) -> float:
        if self.classifier_weight is not None:
            return float(self.classifier_weight)
        return CLASSIFIER_WEIGHT_PER_PIXEL * float(math.prod(image_shape))

    def model_architecture(self, image_shape: tuple[int, ...], rows: int) -> str:
        """``architecture`` with ``auto`` resolved: convolutions for a conditional model (the generator)
        of at least :data:`CONV_MIN_ROWS` training images (``rows``, labelled or not) at least
        :data:`CONV_MIN_SIDE` pixels on a side that halve at least twice, dense layers otherwise: conv
        generates 28x28 digits that are sharper, more varied and truer to their label
        (docs/synthetic.md); the detection scorecard is measured with dense detectors."""
        if self.architecture != "auto":
            return self.architecture
        if not self.conditional or min(image_shape[:2]) < CONV_MIN_SIDE or rows < CONV_MIN_ROWS:
            return "dense"
        from training.model import downsampling_steps  # Keras: only when a model is built

        return "conv" if downsampling_steps(tuple(image_shape)) >= 2 else "dense"  # 17x17 cannot be halved

    def kl_beta(self) -> float:
        """The KL weight after warm-up that this configuration trains with."""
        if self.beta is not None:
            return float(self.beta)
        return CONDITIONAL_BETA if self.conditional else 1.0
