"""Training settings: one dataclass, the defaults following the paper where it gives them."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from afm_dist.models import ModelConfig
from afm_dist.training.optimizers import OPTIMIZERS, SPARSE_OPTIMIZERS

INIT_FROM_FM = ("fm", "afm", "wide_deep", "deep_cross")  # the models init_from_fm accepts
# Adagrad's learning rate (the paper's optimizer; the rate measured on Frappe in issue 15).
LR = 0.05
# The rate of an AFM fine-tuned from a trained FM (--init-from). At 0.05 the tables' first steps
# under fresh Adagrad accumulators undo part of the FM: the AFM's first epoch raised validation RMSE
# (Frappe logs 0.5645 -> 0.5922) before 45 epochs of slow descent. At 0.02 that rise is gone and the
# AFM ends lower (docs/results/quality.md, seventh step; measured on validation, k = 256: Frappe logs
# -3.9% -> -4.4% and -5.1% -> -5.6% against its FM, equal on the Frappe file and MovieLens), as
# pre-trained weights are commonly fine-tuned at a lower rate than they were trained at.
AFM_FINE_TUNE_LR = 0.02
# Sweeps of the Gibbs sampler after an FM's SGD, by default. The mean of the samples still improves
# at 300, slowly: on MovieLens (ml1) the 32 kept samples' mean is 0.8247 on validation at sweep 196
# and 0.8237 at 300 (docs/results/quality.md, fifteenth step). A sweep took a tenth of an SGD
# epoch's time there, so 300 cost about what the SGD FM's epochs did.
MCMC_SWEEPS = 300


@dataclass
class TrainConfig:
    """What ``python -m afm_dist.train`` runs; ``afm_dist.train.parse_args`` builds it from flags."""

    data: str
    model: str
    output: str
    init_from: str | None = None
    # where w0 starts in a run not started from an FM: the training split's mean target, or 0
    w0_init: str = "mean"
    # An upper bound: early stopping ends a run (each plateau first moves to the next L2 strength).
    epochs: int = 50
    # Paper: Frappe 128, MovieLens 4096; a dataset schema may set its own (training.batch_size).
    batch_size: int | None = None
    optimizer: str = "adagrad"  # the paper's mini-batch Adagrad; rowwise_adagrad, adam as options
    # None: LR, or AFM_FINE_TUNE_LR for an AFM with init_from (resolved when the config is made).
    lr: float | None = None
    loss: str = "squared"  # the paper's squared loss; "logistic" for binary log loss
    patience: int = 3  # early stopping on validation RMSE
    # lambda of the L2 penalty lambda * ||W||^2 on AFM's attention network (added to the mean loss).
    attention_l2: float = 0.0
    # libFM's -regular '0,r1,r2' for SGD: L2 on the linear weights w_i and the embeddings v_i of the
    # batch's features (each as often as it occurs), added to the mean loss. None for both (the
    # default): the strength of both follows l2_schedule; a number for either fixes both (the
    # other at 0 unless given).
    embedding_l2: float | None = None
    linear_l2: float | None = None
    # A regularisation path, chosen on validation: training starts with the first strength (of both
    # tables); after l2_patience epochs whose validation RMSE does not improve it goes back to the
    # best epoch's weights and goes on with the next strength; patience counts only at the last. From
    # strong to none, warm-started, as glmnet's path (Friedman, Hastie and Tibshirani, JSS 2010):
    # the tables first learn what generalises, then each weaker strength lets them fit more while
    # validation says it helps. Measured (docs/results/quality.md, FM k = 256): MovieLens ratings
    # validation RMSE 0.8819 without L2 -> 0.842, Frappe 0.4865 -> 0.481; a fixed 0.1 helps the first
    # (0.8436) and hurts the second (0.4993), and the path from 0 upwards helps less (0.8605, 0.4869).
    l2_schedule: tuple[float, ...] = (0.1, 0.03, 0.01, 0.0)
    l2_patience: int = 2  # epochs without improvement before the next strength
    # Tail averaging (afm_dist/training/averaging.py): from the first epoch at the path's last
    # strength that does not improve, the running mean of the epochs' weights is scored on
    # validation too, and kept as the best weights where it is better than the model's.
    average_tail: bool = True
    # Gibbs sampling after SGD (afm_dist/training/gibbs.py; libFM's MCMC), --model fm only: this many
    # sweeps of an FM of mcmc_dim factors, mcmc_samples of its samples kept evenly over the chain as one
    # FM of mcmc_dim * mcmc_samples, blended with the SGD FM at the weight validation chooses (one FM
    # of embedding_dim + mcmc_dim * mcmc_samples where the blend wins). 0: SGD alone; None (the
    # default): MCMC_SWEEPS where the sampler applies (``sampling_sweeps``), else 0.
    mcmc_sweeps: int | None = None
    mcmc_dim: int = 8
    mcmc_samples: int = 32
    # Elastic training (horovodrun --min-np/--max-np/--host-discovery-script; afm_dist/training/elastic.py):
    # steps between in-memory commits within an epoch (and one at every epoch's end). A lost rank
    # costs at most this many steps again; each commit copies the model and optimizer state.
    commit_every: int = 100
    seed: int = 2017
    shuffle_buffer: int = 100_000
    clip_predictions: bool = True  # bound predictions to the training target range, as the paper's evaluation
    log_every: float = 10.0  # seconds between progress lines on rank 0
    threads: int | None = None
    resume: bool = False
    overwrite: bool = False
    model_config: ModelConfig = dataclasses.field(default_factory=ModelConfig)

    def __post_init__(self) -> None:
        if self.lr is None:
            self.lr = AFM_FINE_TUNE_LR if self.init_from and self.model == "afm" else LR

    def check(self) -> None:
        """Refuse settings and combinations of settings that cannot work, before any work.

        Raises:
            ValueError: naming the flags and what works instead.
        """
        c = self.model_config
        positive = {"--epochs": self.epochs, "--lr": self.lr, "--patience": self.patience,
                    "--l2-patience": self.l2_patience, "--commit-every": self.commit_every,
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
        if (self.mcmc_sweeps or 0) < 0 or self.mcmc_dim < 1 or self.mcmc_samples < 1:
            raise ValueError(f"--mcmc-sweeps takes 0 (off) or more, --mcmc-dim and --mcmc-samples 1 or more; got "
                             f"{self.mcmc_sweeps}, {self.mcmc_dim}, {self.mcmc_samples}")
        if self.mcmc_sweeps:
            if self.model != "fm":
                raise ValueError(f"--mcmc-sweeps samples an FM: it works with --model fm, not {self.model} (an AFM "
                                 "starts from a sampled FM with --init-from)")
            if self.loss != "squared":
                raise ValueError("--mcmc-sweeps samples under a Gaussian likelihood: it works with --loss squared")
        sweeps = MCMC_SWEEPS if self.mcmc_sweeps is None else self.mcmc_sweeps
        if self.model == "fm" and self.loss == "squared" and sweeps and self.mcmc_samples > sweeps:
            raise ValueError(f"--mcmc-samples {self.mcmc_samples} keeps more samples than the {sweeps} sweeps drawn "
                             "(--mcmc-sweeps): keep at most one a sweep")
        for flag, value in {"--attention-l2": self.attention_l2, "--embedding-l2": self.embedding_l2 or 0.0,
                            "--linear-l2": self.linear_l2 or 0.0}.items():
            if value < 0:
                raise ValueError(f"{flag} must be 0 or more, got {value}")
        s = self.l2_schedule
        if not s or any(x < 0 for x in s) or len(set(s)) != len(s):
            raise ValueError(f"--l2-schedule takes distinct strengths of 0 or more, got {','.join(map(str, s))}")
        if not self.scheduled_l2 and (s != TrainConfig.l2_schedule or self.l2_patience != TrainConfig.l2_patience):
            raise ValueError("--embedding-l2 / --linear-l2 fix the L2 strengths, --l2-schedule and --l2-patience set "
                             "the path that chooses them: pass one or the other")
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

    def sampling_sweeps(self, elastic: bool) -> int:
        """The Gibbs sweeps this run makes after SGD: ``mcmc_sweeps`` where given, else MCMC_SWEEPS for an
        FM under the squared loss in a static run (the chain cannot lose a rank), and 0 otherwise."""
        if self.mcmc_sweeps is not None:
            return self.mcmc_sweeps
        if self.model == "fm" and self.loss == "squared" and not elastic:
            return MCMC_SWEEPS
        return 0

    @property
    def scheduled_l2(self) -> bool:
        """The feature tables' L2 strength follows ``l2_schedule`` (neither --embedding-l2 nor --linear-l2 given)."""
        return self.embedding_l2 is None and self.linear_l2 is None

    def l2_path_goes_on(self, step: int) -> bool:
        """A strength of the path follows step ``step`` (the run moves on at a plateau rather than stop)."""
        return self.scheduled_l2 and step + 1 < len(self.l2_schedule)

    def l2_at(self, step: int) -> tuple[float, float]:
        """(embedding, linear) L2 strengths at step ``step`` of the schedule, or the fixed ones."""
        if self.scheduled_l2:
            return self.l2_schedule[step], self.l2_schedule[step]
        return self.embedding_l2 or 0.0, self.linear_l2 or 0.0

    def input_paths(self) -> dict[str, list[str]]:
        """The run's input paths by flag (``--data``, ``--init-from``), which ``--output`` keeps apart from."""
        return {"--data": [self.data], "--init-from": [self.init_from] if self.init_from else []}

    def to_dict(self) -> dict:
        """The settings without the model's hyperparameters (those are the model's own)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "model_config"}
