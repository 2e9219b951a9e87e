"""The models: FM, AFM, HOFM, Wide&Deep, DeepCross, built by name from a ``ModelConfig``.

Every model maps a batch of the data contract (afm_dist/dataset.py) to raw scores::

    model = build_model("afm", meta.num_features, meta.num_slots, ModelConfig(), meta.slot_groups())
    scores = model(ids, vals, mask)  # ids (B, M) int64, vals (B, M) float32, mask (B, M) bool -> (B,)
    loss = F.mse_loss(scores, label) + lam * model.l2_penalty()  # in the trainer, not the model

B: batch size, M: slots, N: features, k: embedding size, t: attention factor. A pooled field (a
history bag, ``FieldLayout.pooled``) is one input of the pair layer, the sum of its slots' v_i x_i
(``layers.SlotPooling``): G inputs instead of M, from ``DatasetMetadata.slot_groups()``.

Modules: ``base`` (ScoringModel, what every model shares), ``layers`` (the small blocks),
``attention`` (AFM's attention-based pooling and its memory-efficient path), ``fm`` (FM, HOFM),
``afm`` (AFM), ``deep`` (WideDeep, DeepCross), ``registry`` (ModelConfig, build_model,
init_from_fm). This package re-exports the public names.
"""
from __future__ import annotations

from afm_dist.models.afm import AFM
from afm_dist.models.base import ScoringModel
from afm_dist.models.deep import DeepCross, WideDeep
from afm_dist.models.fm import FM, HOFM
from afm_dist.models.registry import MODEL_NAMES, ModelConfig, build_model, check_layout, init_from_fm

__all__ = ["AFM", "FM", "HOFM", "WideDeep", "DeepCross", "ScoringModel", "ModelConfig", "MODEL_NAMES",
           "build_model", "check_layout", "init_from_fm"]
