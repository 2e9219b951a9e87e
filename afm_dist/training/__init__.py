"""Distributed training (the Horovod recipe): ``train`` runs on every rank; ``train_epoch`` and
``evaluate`` are its steps; ``artifacts`` writes the model directory and ``checkpoint`` the state
that ``--resume`` reads. The launcher is ``python -m afm_dist.train`` (afm_dist/train.py)."""
from afm_dist.training.config import TrainConfig
from afm_dist.training.loop import check_run, evaluate, train, train_epoch

__all__ = ["TrainConfig", "check_run", "evaluate", "train", "train_epoch"]
