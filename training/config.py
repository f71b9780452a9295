"""Training settings: a plain dataclass, cheap to import (the CLI reads its defaults)."""

from __future__ import annotations

from dataclasses import dataclass

PROMOTE_CHOICES = ("if-better", "always", "never")


@dataclass
class TrainConfig:
    data: str | tuple[str, ...] = "digits"  # one input or several (read as one data set)
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
    anomaly_score: str = "elbo_latent_knn_rarity"  # scoring.anomaly.METHODS; README "Evaluation"
    score_samples: int = 16
    promote: str = "if-better"
    shape: tuple[int, int, int] | None = None
    pixel_scale: float | None = None  # numeric pixels are divided by it (None: training.data.validate's rule)
    max_reject_rate: float = 0.01  # stop when a larger share of the input rows cannot be used
    memory_budget_mb: int | None = None  # images beyond it are read to a memory map on disk (None: half the RAM)
    mixed_precision: bool = False
    xla: bool = False
    work_dir: str | None = None
