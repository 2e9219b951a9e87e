"""Models by name: ``ModelConfig``, ``MODEL_NAMES``, ``build_model`` and ``init_from_fm``.

N: features, M: slots, k: embedding size, t: attention factor (see afm_dist/models/__init__.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from afm_dist.models.afm import AFM
from afm_dist.models.base import ScoringModel
from afm_dist.models.deep import DeepCross, WideDeep
from afm_dist.models.fm import FM, HOFM


@dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of every model; each one reads the fields it needs."""

    # k = 256: the AFM paper compares every method at embedding size 256 (Frappe and MovieLens).
    embedding_dim: int = 256
    # t: the reference code's released commands use t = 8 (MovieLens) and t = 16; the paper reports
    # AFM robust to t. Taken equal to k here, which costs the attention one k x k matmul: measured
    # at k = 256, t = 32 makes an epoch 3.5-3.9x faster on CPU but is 0.5% and 1.6% worse on validation on two
    # of four Frappe splits (docs/results/quality.md, issue 24's twelfth step).
    attention_factor: int = 256
    # Dropout on the pair-wise interaction layer (AFM: pooled vector before p; FM/HOFM: the
    # bi-interaction vector). 0.5 is the reference AFM command's keep probability of that layer;
    # its FM command uses keep 0.7, i.e. dropout 0.3.
    interaction_dropout: float = 0.5
    # Dropout on the attention weights a_ij: the reference code's keep[0], 1.0 in its commands.
    attention_dropout: float = 0.0
    # AFM's pair weights: "pairs" (|R_x| a_ij, summing to the row's number of pairs, h starting at 0)
    # starts an AFM initialised from an FM exactly as that FM; "one" is eq. 5 as printed (afm.py).
    attention_scale: str = "pairs"
    # AFM: the attention's logits read the pair products as constants, so the embeddings learn only
    # through the attention-weighted pair sum (AttentionPooling's stop_gradient).
    attention_stop_gradient: bool = False
    # Wide&Deep's tower, as in the AFM paper's comparison.
    mlp_sizes: tuple[int, ...] = (1024, 512, 256)
    # DeepCross's five residual units and their inner widths, as in the AFM paper's comparison.
    residual_sizes: tuple[int, ...] = (512, 512, 256, 128, 64)
    # Dropout after each hidden layer or residual unit of the deep models: off unless tuned.
    deep_dropout: float = 0.0
    # N(0, 0.01) embeddings: the reference implementation's initialisation.
    init_std: float = 0.01
    # AFM: the memory-efficient attention (same numbers, a fraction of the memory); True keeps the
    # naive path that materialises all pair products, for comparison.
    naive_attention: bool = False
    # Elements of one (B C, max(k, t)) chunk of the efficient attention: 4 Mi floats = 16 MiB, small
    # next to a (B, P, k) tensor at the paper's batch 4096, large enough that matmuls stay efficient.
    attention_chunk_elements: int = 1 << 22
    # Sparse gradients for the feature tables (embeddings and linear weights): a step costs the same
    # whatever the number of features, and Horovod exchanges only the batch's rows. Dense ones are
    # needed by optimizers without sparse support (Adam); the trainer picks dense for those.
    sparse_embeddings: bool = True


MODEL_NAMES = ("fm", "afm", "hofm", "wide_deep", "deep_cross")


# Slots a model needs at least: AFM's attention is a softmax over feature pairs, so it needs two.
MIN_SLOTS = {"fm": 1, "afm": 2, "hofm": 1, "wide_deep": 1, "deep_cross": 1}


def check_layout(name: str, num_features: int, num_slots: int, slot_groups: tuple[int, ...] | None = None) -> None:
    """Refuse a model that cannot work on a data set's feature layout, before it is built.

    Raises:
        ValueError: an unknown model, no features, or fewer slots than the model needs (saying
            which model to use instead).
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; expected one of {MODEL_NAMES}")
    if num_features < 1 or num_slots < 1:
        raise ValueError(f"the data set has {num_features} features and {num_slots} slots: nothing to learn from")
    if num_slots < MIN_SLOTS[name]:
        raise ValueError(f"{name.upper()} needs at least {MIN_SLOTS[name]} slots (its attention weighs pairs of "
                         f"features) and this data set has {num_slots}: use --model fm, or add fields to the schema")
    if slot_groups and sum(slot_groups) != num_slots:
        raise ValueError(f"slot groups {tuple(slot_groups)} do not cover the data set's {num_slots} slots")
    if slot_groups and len(slot_groups) < MIN_SLOTS[name]:
        raise ValueError(f"{name.upper()} needs at least {MIN_SLOTS[name]} inputs to its pair layer and this data "
                         f"set's {num_slots} slots pool into {len(slot_groups)}: use --model fm, or add fields")


def build_model(name: str, num_features: int, num_slots: int, config: ModelConfig,
                slot_groups: tuple[int, ...] | None = None) -> ScoringModel:
    """The model called ``name`` for N = ``num_features`` features and M = ``num_slots`` slots.

    ``slot_groups``: the widths of the pair layer's inputs in slot order, a pooled field's width or
    1 (``DatasetMetadata.slot_groups()``); None: every slot is an input.

    Raises:
        ValueError: see ``check_layout``.
    """
    check_layout(name, num_features, num_slots, slot_groups)
    c = config
    groups = tuple(slot_groups) if slot_groups and any(w > 1 for w in slot_groups) else None
    if name == "fm":
        return FM(num_features, c.embedding_dim, c.interaction_dropout, c.init_std, c.sparse_embeddings, groups)
    if name == "afm":
        return AFM(num_features, num_slots, c.embedding_dim, c.attention_factor, c.interaction_dropout,
                   c.attention_dropout, c.init_std, c.naive_attention, c.attention_chunk_elements,
                   c.sparse_embeddings, c.attention_scale, groups, c.attention_stop_gradient)
    if name == "hofm":
        return HOFM(num_features, c.embedding_dim, c.interaction_dropout, c.init_std, c.sparse_embeddings, groups)
    if name == "wide_deep":
        return WideDeep(num_features, num_slots, c.embedding_dim, c.mlp_sizes, c.deep_dropout, c.init_std,
                        c.sparse_embeddings, groups)
    if name == "deep_cross":
        return DeepCross(num_features, num_slots, c.embedding_dim, c.residual_sizes, c.deep_dropout, c.init_std,
                         c.sparse_embeddings, groups)
    raise AssertionError(name)  # check_layout knows every name


@torch.no_grad()
def init_from_fm(model: nn.Module, fm: FM) -> nn.Module:
    """Copy a trained FM's embeddings v, linear weights w and bias w0 into ``model``; returns it.

    The AFM paper pre-trains AFM, Wide&Deep and DeepCross this way. The other parameters of
    ``model`` (attention network, MLP, residual units) keep their initialisation.
    """
    if not isinstance(fm, FM):
        raise TypeError(f"init_from_fm: the source must be an FM, got {type(fm).__name__}")
    if not isinstance(model, (FM, AFM, WideDeep, DeepCross)):
        raise TypeError(f"init_from_fm: cannot initialise a {type(model).__name__} from an FM; "
                        "supported: FM, AFM, WideDeep, DeepCross")
    src, dst = fm.embedding.weight, model.embedding.weight
    if src.shape[0] != dst.shape[0]:
        raise ValueError(f"init_from_fm: the FM has num_features={src.shape[0]}, the {type(model).__name__} "
                         f"{dst.shape[0]}; pre-train the FM on the same data set (metadata.json num_features)")
    if src.shape[1] != dst.shape[1]:
        raise ValueError(f"init_from_fm: the FM has embedding_dim={src.shape[1]}, the {type(model).__name__} "
                         f"{dst.shape[1]}; use the same ModelConfig.embedding_dim for both")
    dst.copy_(src)
    model.linear.weight.weight.copy_(fm.linear.weight.weight)
    model.linear.bias.copy_(fm.linear.bias)
    return model
