"""Training settings: one dataclass, the defaults following the paper where it gives them."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from afm_dist.models import ModelConfig
from afm_dist.training.optimizers import OPTIMIZERS, SPARSE_OPTIMIZERS

INIT_FROM_FM = ("fm", "afm", "wide_deep", "deep_cross")  # the models init_from_fm accepts


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
    optimizer: str = "adagrad"  # the paper's mini-batch Adagrad; rowwise_adagrad, adam as options
    lr: float = 0.05
    loss: str = "squared"  # the paper's squared loss; "logistic" for binary log loss
    patience: int = 3  # early stopping on validation RMSE
    # lambda of the L2 penalty lambda * ||W||^2 on AFM's attention network (added to the mean loss).
    attention_l2: float = 0.0
    # libFM's -regular '0,r1,r2' for SGD: L2 on the linear weights w_i and the embeddings v_i of the
    # batch's features (each as often as it occurs), added to the mean loss.
    embedding_l2: float = 0.0
    linear_l2: float = 0.0
    seed: int = 2017
    shuffle_buffer: int = 100_000
    clip_predictions: bool = True  # bound predictions to the training target range, as the paper's evaluation
    log_every: float = 10.0  # seconds between progress lines on rank 0
    threads: int | None = None
    resume: bool = False
    overwrite: bool = False
    model_config: ModelConfig = dataclasses.field(default_factory=ModelConfig)

    def check(self) -> None:
        """Refuse settings and combinations of settings that cannot work, before any work.

        Raises:
            ValueError: naming the flags and what works instead.
        """
        c = self.model_config
        positive = {"--epochs": self.epochs, "--lr": self.lr, "--patience": self.patience,
                    "--shuffle-buffer": self.shuffle_buffer, "--log-every": self.log_every,
                    "--embedding-dim": c.embedding_dim, "--attention-factor": c.attention_factor,
                    "--attention-chunk-elements": c.attention_chunk_elements, "--init-std": c.init_std}
        if self.batch_size is not None:
            positive["--batch-size"] = self.batch_size
        if self.threads is not None:
            positive["--threads"] = self.threads
        for flag, value in positive.items():
            if not value > 0:
                raise ValueError(f"{flag} must be positive, got {value}")
        if any(size < 1 for size in (*c.mlp_sizes, *c.residual_sizes)):
            raise ValueError("--mlp-sizes and --residual-sizes take positive widths")
        for flag, p in {"--interaction-dropout": c.interaction_dropout, "--attention-dropout": c.attention_dropout,
                        "--deep-dropout": c.deep_dropout}.items():
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{flag} is a probability in [0, 1), got {p}")
        for flag, value in {"--attention-l2": self.attention_l2, "--embedding-l2": self.embedding_l2,
                            "--linear-l2": self.linear_l2}.items():
            if value < 0:
                raise ValueError(f"{flag} must be 0 or more, got {value}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"--optimizer {self.optimizer}: expected one of {', '.join(OPTIMIZERS)}")
        if c.sparse_embeddings and self.optimizer not in SPARSE_OPTIMIZERS:
            raise ValueError(f"--sparse-embeddings true works with --optimizer {' or '.join(SPARSE_OPTIMIZERS)} "
                             f"(torch's {self.optimizer} takes no sparse gradients); use one of those, or "
                             "--sparse-embeddings false")
        if self.resume and self.overwrite:
            raise ValueError("--resume continues the run in --output and --overwrite would delete it: pass one of them")
        if self.resume and self.init_from:
            raise ValueError("--init-from initialises a new run; --resume continues from the run's own checkpoint: "
                             "drop --init-from")
        if self.init_from and self.model not in INIT_FROM_FM:
            raise ValueError(f"--init-from (a trained FM) initialises --model {', '.join(INIT_FROM_FM)}, "
                             f"not {self.model}")

    def to_dict(self) -> dict:
        """The settings without the model's hyperparameters (those are the model's own)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "model_config"}
