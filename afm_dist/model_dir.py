"""A trained model directory (``--output`` of afm_dist.train) as one typed object: ``TrainedModel``.

The directory holds::

    model.safetensors  the best epoch's weights, or with tail averaging the mean of the weights of
                       the tail's epochs up to it, or an FM's blend with its Gibbs samples
                       (safetensors: loading runs no code)
    sgd.safetensors    where the model is not the run's trained weights (an FM's Gibbs blend, or
                       the --init-from FM an AFM did not beat): the best epoch's weights (what
                       --resume goes on from, and an FM's what --init-from starts from)
    model.json         TrainedModel.to_json(): model name and ModelConfig, feature layout, the data
                       set's metadata, training configuration and best validation metrics
    vocabulary/        the training data set's vocabulary, for encoding raw logs at scoring time
    history/           with a history field: the data set's training bags, for raw logs' bags
    metrics.jsonl      one JSON line per epoch
    curves.png         train and validation RMSE per epoch
    checkpoint.pt      the last epoch's training state, for --resume (afm_dist.training.checkpoint)
    _AFM_COMPLETE      written last, when training finished

The trainer saves it, and scoring, explanation and ``--init-from`` load it; nobody else reads
``model.json`` by hand.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from afm_dist.dataset import COMPLETE_MARKER, HISTORY, VOCABULARY, DatasetError, DatasetMetadata
from afm_dist.io import atomic_path, strip_file_scheme, write_text_atomic
from afm_dist.metrics import is_binary
from afm_dist.models import ModelConfig, ScoringModel, build_model
from afm_dist.schema import schema_from_dict

MODEL_WEIGHTS = "model.safetensors"
SGD_WEIGHTS = "sgd.safetensors"
MODEL_INFO = "model.json"
METRICS = "metrics.jsonl"
CURVES = "curves.png"
COPY_ADVICE = "copy the whole model directory"  # what a directory with a file missing or cut short usually is


@dataclass
class TrainedModel:
    """What a trained model directory says about its model (the content of ``model.json``).

    Attributes:
        name: model name, one of ``afm_dist.models.MODEL_NAMES``.
        config: the model's hyperparameters.
        dataset: metadata of the data set it was trained on (feature layout, target, schema).
        num_parameters: trainable parameters.
        train_config: the training settings (``afm_dist.training.TrainConfig`` as a dict, plus
            ``global_batch``).
        best: the best epoch: ``{"epoch", "val_rmse", "metrics"}``.
        finished: training ended (the last epoch ran or early stopping triggered).
        path: the directory it was loaded from or saved to (not written to model.json).
    """

    name: str
    config: ModelConfig
    dataset: DatasetMetadata
    num_parameters: int = 0
    train_config: dict[str, Any] = field(default_factory=dict)
    best: dict[str, Any] = field(default_factory=dict)
    finished: bool = False
    path: Path | None = None

    @property
    def num_features(self) -> int:
        """N, rows of the embedding tables."""
        return self.dataset.num_features

    @property
    def num_slots(self) -> int:
        """M, columns of ids / vals / mask."""
        return self.dataset.num_slots

    @property
    def clip_range(self) -> tuple[float, float] | None:
        """(min, max) of the training target that predictions are clipped to for RMSE and MAE."""
        return self.dataset.target_range()

    @property
    def binary_target(self) -> bool:
        """Log loss and AUC apply: implicit feedback, or a model trained with the logistic loss."""
        return is_binary(self.dataset.target, self.train_config.get("loss", "squared"))

    @property
    def field_names(self) -> list[str]:
        """The data set's fields, in slot order."""
        return [f.name for f in self.dataset.fields]

    @property
    def slot_fields(self) -> list[int]:
        """Index (into ``field_names``) of the field of each of the M slots."""
        return [i for i, f in enumerate(self.dataset.fields) for _ in range(f.width)]

    @property
    def pair_inputs(self) -> list[tuple[int, int, bool]]:
        """(first slot, field index, pooled) of each input of the pair layer, in order: every slot of
        a field that is not pooled, one input for a pooled field (``DatasetMetadata.slot_groups``)."""
        out = []
        for i, f in enumerate(self.dataset.fields):
            out += [(f.slot, i, True)] if f.pooled else [(f.slot + s, i, False) for s in range(f.width)]
        return out

    @property
    def vocabulary_path(self) -> Path | None:
        """The model directory's ``vocabulary/``, or None (a libFM data set has no vocabulary)."""
        if self.path is None or not (self.path / VOCABULARY).is_dir():
            return None
        return self.path / VOCABULARY

    @property
    def history_path(self) -> Path | None:
        """The model directory's ``history/`` (each owner's training bag of every history field), or
        None (no history field, or a model trained before raw logs got bags)."""
        if self.path is None or not (self.path / HISTORY).is_dir():
            return None
        return self.path / HISTORY

    @property
    def needs_vocabulary(self) -> bool:
        """Raw logs are encoded with ``vocabulary/``: a field whose ids come from the data, or
        libFM ids numbered by the data set (``ids: remap``)."""
        schema = schema_from_dict(self.dataset.schema)
        if schema.format.type == "libfm":
            return schema.format.ids == "remap"
        return any(f.indexed for f in schema.fields)

    def check_raw_input(self) -> None:
        """Refuse, before any work, to encode raw logs without the vocabulary they need.

        Raises:
            DatasetError: the model needs ``vocabulary/`` (``needs_vocabulary``) and its directory lacks it.
        """
        if self.needs_vocabulary and self.vocabulary_path is None:
            raise DatasetError(f"{self.path}: no {VOCABULARY}/ to encode raw logs with: the directory is most likely an "
                               f"incomplete copy ({COPY_ADVICE}); a model trained by an afm-dist that kept no "
                               "vocabulary must be retrained")

    @property
    def sgd_embedding_dim(self) -> int | None:
        """The embedding size of ``sgd.safetensors`` (the best epoch's weights, where the model is
        not them: an FM's Gibbs blend, an AFM's --init-from FM), read from the file's header; None
        without the file.

        Raises:
            DatasetError: the file is cut short or not a safetensors file (``check_weights``).
        """
        if self.path is None or not (self.path / SGD_WEIGHTS).exists():
            return None
        check_weights(self.path, COPY_ADVICE, SGD_WEIGHTS)
        with safe_open(str(self.path / SGD_WEIGHTS), framework="pt") as f:
            return int(f.get_slice("embedding.embedding.weight").get_shape()[1])

    def build_sgd(self) -> ScoringModel:
        """The model of ``sgd.safetensors`` (this directory's model name, at the embedding size
        ``sgd_embedding_dim``: an FM's SGD FM, an AFM's own best epoch) in eval mode.

        Raises:
            DatasetError: the directory has no ``sgd.safetensors``, or it is cut short.
        """
        dim = self.sgd_embedding_dim
        if dim is None:
            raise DatasetError(f"{self.path}: no {SGD_WEIGHTS} (the model is its own trained weights)")
        model = build_model(self.name, self.num_features, self.num_slots,
                            dataclasses.replace(self.config, embedding_dim=dim), self.dataset.slot_groups())
        model.load_state_dict(load_file(str(self.path / SGD_WEIGHTS)), assign=True)
        return model.eval()

    @property
    def weights_path(self) -> Path:
        if self.path is None:
            raise DatasetError(f"the {self.name} model was not loaded from a directory: no {MODEL_WEIGHTS}")
        return self.path / MODEL_WEIGHTS

    # -- model.json -----------------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps({
            "model": self.name,
            "model_config": dataclasses.asdict(self.config),
            "num_features": self.num_features,
            "num_slots": self.num_slots,
            "num_parameters": self.num_parameters,
            "dataset": dataclasses.asdict(self.dataset),
            "train_config": self.train_config,
            "best": self.best,
            "finished": self.finished,
        }, indent=2, sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str, path: Path | None = None) -> "TrainedModel":
        """Parse ``model.json`` content.

        Raises:
            DatasetError: not the JSON of a trained model, naming ``path``.
        """
        try:
            d = json.loads(text)
            config = {k: tuple(v) if isinstance(v, list) else v for k, v in d["model_config"].items()}
            config.setdefault("attention_scale", "one")  # written before the option: eq. 5 as printed
            config.setdefault("attention_stop_gradient", False)  # written before the option: trained without it
            return cls(name=d["model"], config=ModelConfig(**config), dataset=DatasetMetadata.from_dict(d["dataset"]),
                       num_parameters=int(d.get("num_parameters", 0)), train_config=d.get("train_config", {}),
                       best=d.get("best", {}), finished=bool(d.get("finished", False)), path=path)
        except (ValueError, TypeError, KeyError) as e:
            raise DatasetError(f"{path / MODEL_INFO if path else MODEL_INFO}: not a model description ({e}); "
                               "train the model again with afm_dist.train") from e

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "TrainedModel":
        """The description of a finished training run (its weights are read by ``build``).

        Scoring, explanation and ``--init-from`` read the weights, so a directory without them
        (an incomplete copy) is refused here, before any work; raw logs also need ``vocabulary/``
        (``check_raw_input``).

        Raises:
            DatasetError: no such directory, training did not finish (no completion marker),
                ``model.json`` is unreadable, or ``model.safetensors`` is missing or cut short
                (``check_weights``).
        """
        d = Path(strip_file_scheme(str(directory))).expanduser().resolve()
        if not (d / COMPLETE_MARKER).exists():
            raise DatasetError(
                f"{d}: not a finished model directory (no {COMPLETE_MARKER}); train with afm_dist.train, "
                f"finish the run with --resume, or, for a copy, {COPY_ADVICE}."
            )
        try:
            text = (d / MODEL_INFO).read_text(encoding="utf-8")
        except OSError as e:
            raise DatasetError(f"{d}: no readable {MODEL_INFO} ({e.strerror}); {COPY_ADVICE}, or train the model "
                               "again") from e
        model = cls.from_json(text, path=d)
        check_weights(d, COPY_ADVICE)
        return model

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``model.json`` into ``directory`` atomically."""
        write_text_atomic(Path(directory) / MODEL_INFO, self.to_json())

    # -- weights --------------------------------------------------------------------------------

    def new_model(self) -> ScoringModel:
        """A freshly initialised model of this name, configuration and feature layout."""
        return build_model(self.name, self.num_features, self.num_slots, self.config, self.dataset.slot_groups())

    def build(self) -> ScoringModel:
        """The trained model in eval mode, its weights read from the directory's safetensors file
        (loading runs no code). The file's tensors become the model's parameters (``assign``): no
        second copy of a large table."""
        model = self.new_model()
        model.load_state_dict(load_file(str(self.weights_path)), assign=True)
        return model.eval()


def check_weights(directory: Path, advice: str, name: str = MODEL_WEIGHTS) -> None:
    """Refuse a model directory whose ``name`` (``model.safetensors``) is missing, or cut short or
    not a safetensors file (its header read and checked against the file's size; no tensor is read).

    Raises:
        DatasetError: naming the file and ``advice`` (what to do).
    """
    path = directory / name
    if not path.is_file():
        raise DatasetError(f"{directory}: {name} is missing; {advice}")
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except (SafetensorError, OSError) as e:
        raise DatasetError(f"{path} is truncated or not a safetensors file ({path.stat().st_size} bytes); "
                           f"{advice}") from e


def save_weights(model: torch.nn.Module, directory: str | os.PathLike) -> None:
    """Write ``model``'s parameters and buffers as ``directory/model.safetensors`` atomically."""
    with atomic_path(Path(directory) / MODEL_WEIGHTS) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
