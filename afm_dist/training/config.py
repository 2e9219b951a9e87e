"""Training settings: one dataclass, the defaults following the paper where it gives them."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from afm_dist.models import ModelConfig


@dataclass
class TrainConfig:
    """What ``python -m afm_dist.train`` runs; ``afm_dist.train.parse_args`` builds it from flags."""

    data: str
    model: str
    output: str
    init_from: str | None = None
    epochs: int = 20
    # Paper: Frappe 128, MovieLens 4096; a dataset schema may set its own (training.batch_size).
    batch_size: int | None = None
    optimizer: str = "adagrad"  # the paper's mini-batch Adagrad; adam as an option
    lr: float = 0.05
    loss: str = "squared"  # the paper's squared loss; "logistic" for binary log loss
    patience: int = 3  # early stopping on validation RMSE
    # lambda of the L2 penalty lambda * ||W||^2 on AFM's attention network (added to the mean loss).
    attention_l2: float = 0.0
    seed: int = 2017
    shuffle_buffer: int = 100_000
    clip_predictions: bool = True  # bound predictions to the training target range, as the paper's evaluation
    log_every: float = 10.0  # seconds between progress lines on rank 0
    threads: int | None = None
    resume: bool = False
    overwrite: bool = False
    model_config: ModelConfig = dataclasses.field(default_factory=ModelConfig)

    def to_dict(self) -> dict:
        """The settings without the model's hyperparameters (those are the model's own)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "model_config"}
