"""Training settings: a plain dataclass, cheap to import (the CLI reads its defaults)."""

from __future__ import annotations

from dataclasses import dataclass

PROMOTE_CHOICES = ("if-better", "always", "never")


@dataclass
class TrainConfig:
    data: str = "digits"
    model_name: str = "vae-digits"
    conditional: bool = False
    latent_dim: int = 16  # README "How the defaults were chosen"
    likelihood: str = "auto"  # chosen from the data: see training.train.choose_likelihood
    epochs: int = 60
    batch_size: int = 64
    learning_rate: float = 1e-3
    kl_warmup: int = 10
    early_stopping: int = 10
    architecture: str = "dense"  # as good as conv at a tenth of the CPU time (README)
    pixel_levels: int | None = None  # grey levels for the binned likelihood; None: from the data
    filters: int = 32
    hidden_units: int = 256
    seed: int = 0
    target_fpr: float = 0.01
    anomaly_score: str = "elbo_latent_knn"  # scoring.anomaly.METHODS; README "Evaluation"
    score_samples: int = 16
    promote: str = "if-better"
    shape: tuple[int, int, int] | None = None
    mixed_precision: bool = False
    xla: bool = False
    work_dir: str | None = None
