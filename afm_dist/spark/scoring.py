"""Batch scoring and attention explanations on Spark executors (pure DataFrame -> DataFrame).

The trained model travels once per job as a broadcast (model.json content and safetensors
bytes) and is rebuilt once per executor Python process, then reused by every task that process
runs; each task scores its partition in Arrow batches with torch, so memory stays bounded by the
batch size whatever the size of the log.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from afm_dist.checkpoint import MODEL_INFO, MODEL_WEIGHTS, read_model_dir
from afm_dist.dataset import IDS, LABEL, MASK, ROW_ID, VALS

PREDICTION = "prediction"

# Executor-side cache: one rebuilt model per (model hash) per Python worker process.
_MODELS: dict[str, Any] = {}


class ModelPayload:
    """What executors need to rebuild a trained model: its model.json and its weights' bytes."""

    def __init__(self, model_dir: str | Path):
        read_model_dir(model_dir)  # refuses an unfinished model directory
        d = Path(model_dir)
        self.info_json = (d / MODEL_INFO).read_text(encoding="utf-8")
        self.weights = (d / MODEL_WEIGHTS).read_bytes()
        self.key = hashlib.sha256(self.weights).hexdigest()[:16]

    @property
    def info(self) -> dict[str, Any]:
        return json.loads(self.info_json)


def _model(payload: ModelPayload, threads: int):
    model = _MODELS.get(payload.key)
    if model is None:
        import torch
        from safetensors.torch import load as load_safetensors

        from afm_dist.checkpoint import model_from_parts

        torch.set_num_threads(threads)
        model = model_from_parts(json.loads(payload.info_json), load_safetensors(payload.weights))
        _MODELS.clear()  # one model per process: a new job's model replaces the last
        _MODELS[payload.key] = model
    return model


def _tensors(pdf: pd.DataFrame):
    import torch

    ids = torch.from_numpy(np.stack(pdf[IDS].to_numpy()).astype(np.int64, copy=False))
    vals = torch.from_numpy(np.stack(pdf[VALS].to_numpy()).astype(np.float32, copy=False))
    mask = torch.from_numpy(np.stack(pdf[MASK].to_numpy()).astype(bool, copy=False))
    return ids, vals, mask


def _fixed_width(batch, name: str, dtype) -> np.ndarray:
    """A fixed-width list column of an Arrow batch as a (rows, width) array, without per-row work."""
    col = batch.column(name)
    n = len(col)
    flat = col.flatten().to_numpy(zero_copy_only=False)
    width = flat.size // n if n else 0
    if n and (flat.size != n * width or col.null_count):
        raise ValueError(f"column {name!r} is not a fixed-width list (rows of different lengths or nulls): "
                         "score a split written by jobs/preprocess.py or raw logs of the model's schema")
    out = flat.reshape(n, width).astype(dtype, copy=False)
    return out if out.flags.writeable else out.copy()  # torch wants writable memory (Arrow's is not)


def _arrow_tensors(batch):
    """(ids int64, vals float32, mask bool) tensors (B, M) of an Arrow RecordBatch."""
    import torch

    return (torch.from_numpy(_fixed_width(batch, IDS, np.int64)),
            torch.from_numpy(_fixed_width(batch, VALS, np.float32)),
            torch.from_numpy(_fixed_width(batch, MASK, np.int8) != 0))


def _predict(model, batch, clip: tuple[float, float] | None) -> np.ndarray:
    """The model's predictions (float64, clipped to ``clip``) for an Arrow batch of encoded rows."""
    import torch

    with torch.inference_mode():
        pred = model(*_arrow_tensors(batch)).double().numpy()
    return pred if clip is None else np.clip(pred, *clip)


def score(spark: SparkSession, encoded: DataFrame, model_dir: str | Path, *, keep: list[str],
          clip: tuple[float, float] | None, batch_size: int = 8192, threads: int = 1) -> DataFrame:
    """Add ``prediction`` to an encoded DataFrame (ids, vals, mask [, label]); keep ``keep`` columns.

    Returns ``keep`` columns, ``label`` where the input has it, and ``prediction``
    (clipped to ``clip`` when given, as the paper's evaluation does).
    """
    payload = spark.sparkContext.broadcast(ModelPayload(model_dir))
    has_label = LABEL in encoded.columns
    in_cols = keep + [IDS, VALS, MASK] + ([LABEL] if has_label else [])
    out_cols = keep + ([LABEL] if has_label else [])
    out_schema = encoded.select(*out_cols).schema.add(PREDICTION, "double")

    def predict(batches):  # Iterator[pyarrow.RecordBatch] -> Iterator[pyarrow.RecordBatch]
        import pyarrow as pa

        model = _model(payload.value, threads)
        for batch in batches:
            for start in range(0, batch.num_rows, batch_size):
                part = batch.slice(start, batch_size)
                columns = [part.column(c) for c in out_cols] + [pa.array(_predict(model, part, clip))]
                yield pa.RecordBatch.from_arrays(columns, names=out_cols + [PREDICTION])

    # Arrow batches straight into torch (no pandas): the list columns become (B, M) arrays by a
    # reshape of their flat values instead of a per-row stack.
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_size))
    return encoded.select(*in_cols).mapInArrow(predict, schema=out_schema)


def score_split(spark: SparkSession, split_dir: str | Path, model_dir: str | Path, *,
                clip: tuple[float, float] | None, batch_size: int = 8192, threads: int = 1) -> DataFrame:
    """Score a split written by jobs/preprocess.py: ``row_id``, ``label`` and ``prediction``.

    Spark schedules the split's Parquet row groups as tasks and each Python worker reads its row
    groups itself with pyarrow, straight into torch: the fixed-width list columns never pass
    through the JVM row format, whose conversion to Arrow costs as much as the inference. The
    split directory must be readable at the same path from every executor (local or shared
    storage), as the preprocessing job's output is. Memory per task: one batch of one row group.
    """
    import pyarrow.parquet as pq

    split = Path(split_dir).resolve()
    files = sorted(str(f) for f in split.glob("*.parquet"))
    if not files:
        from afm_dist.dataset import DatasetError

        raise DatasetError(f"{split}: no Parquet files; pass a split directory written by jobs/preprocess.py")
    schema = pq.read_schema(files[0])
    has_label = LABEL in schema.names
    tasks = [(f, g) for f in files for g in range(pq.ParquetFile(f).metadata.num_row_groups)]  # footers only
    payload = spark.sparkContext.broadcast(ModelPayload(model_dir))
    cols = [ROW_ID, IDS, VALS, MASK] + ([LABEL] if has_label else [])
    out_cols = [ROW_ID] + ([LABEL] if has_label else [])

    def predict(index_batches):  # Iterator[RecordBatch of task indices] -> Iterator[RecordBatch]
        import pyarrow as pa

        model = _model(payload.value, threads)
        for ib in index_batches:
            for index in ib.column(0).to_pylist():
                path, group = tasks[index]
                for part in pq.ParquetFile(path).iter_batches(batch_size=batch_size, row_groups=[group], columns=cols):
                    yield pa.RecordBatch.from_arrays(
                        [part.column(ROW_ID).cast(pa.int64())]
                        + ([part.column(LABEL).cast(pa.float32())] if has_label else [])
                        + [pa.array(_predict(model, part, clip))],
                        names=out_cols + [PREDICTION])

    # Task i scores row group tasks[i]; spark.range makes the indices in the JVM (no Python RDD).
    slices = max(1, min(len(tasks), spark.sparkContext.defaultParallelism * 4))
    out_schema = f"{ROW_ID} long, " + (f"{LABEL} float, " if has_label else "") + f"{PREDICTION} double"
    return spark.range(0, len(tasks), numPartitions=slices).mapInArrow(predict, schema=out_schema)


def regression_metrics(scored: DataFrame) -> dict[str, float]:
    """Row count, RMSE and MAE of ``prediction`` against ``label``, computed by Spark."""
    err = F.col(PREDICTION) - F.col(LABEL)
    row = scored.agg(F.count(F.lit(1)).alias("rows"), F.sqrt(F.avg(err * err)).alias("rmse"),
                     F.avg(F.abs(err)).alias("mae")).first()
    return {"rows": int(row["rows"]), "rmse": float(row["rmse"] or 0.0), "mae": float(row["mae"] or 0.0)}


def binary_metrics(scored: DataFrame) -> dict[str, float]:
    """Log loss of sigmoid(prediction) and AUC, for targets where positive means label > 0."""
    from pyspark.ml.evaluation import BinaryClassificationEvaluator

    y = (F.col(LABEL) > 0).cast("double")
    z = F.when(F.col(LABEL) > 0, F.col(PREDICTION)).otherwise(-F.col(PREDICTION))
    softplus_neg = F.greatest(-z, F.lit(0.0)) + F.log1p(F.exp(-F.abs(z)))  # log(1 + e^-z), stable
    logloss = scored.agg(F.avg(softplus_neg)).first()[0]
    auc = BinaryClassificationEvaluator(rawPredictionCol=PREDICTION, labelCol="y01",
                                        metricName="areaUnderROC").evaluate(scored.withColumn("y01", y))
    return {"logloss": float(logloss), "auc": float(auc)}


def attention_sums(spark: SparkSession, encoded: DataFrame, model_dir: str | Path, *, slot_fields: list[int],
                   batch_size: int = 8192, threads: int = 1) -> DataFrame:
    """Per field pair (fi <= fj): total attention over rows, and rows where the pair occurs.

    ``slot_fields[s]`` is the field index of slot s; attention of slot pairs in the same field
    pair (multi-valued fields) is added within a row. Partial sums per batch are reduced by Spark.
    """
    payload = spark.sparkContext.broadcast(ModelPayload(model_dir))
    slot_fields_arr = np.asarray(slot_fields)
    num_fields = int(slot_fields_arr.max()) + 1

    def partial(batches):  # Iterator[pyarrow.RecordBatch] -> Iterator[pyarrow.RecordBatch]
        import pyarrow as pa
        import torch

        model = _model(payload.value, threads)
        pi, pj = (t.numpy() for t in model.pair_index())
        fa, fb = slot_fields_arr[pi], slot_fields_arr[pj]
        lo_f, hi_f = np.minimum(fa, fb), np.maximum(fa, fb)
        pair_field = lo_f * num_fields + hi_f  # (P,) field-pair code of every slot pair
        codes = np.unique(pair_field)
        onehot = (pair_field[:, None] == codes[None, :]).astype(np.float64)  # (P, C)
        for batch in batches:
            for start in range(0, batch.num_rows, batch_size):
                ids, vals, mask = _arrow_tensors(batch.slice(start, batch_size))
                with torch.inference_mode():
                    _, att = model(ids, vals, mask, return_attention=True)
                m = mask.numpy()
                present = (m[:, pi] & m[:, pj]).astype(np.float64) @ onehot > 0  # (B, C)
                per_row = att.double().numpy() @ onehot  # (B, C) attention of each field pair in each row
                yield pa.RecordBatch.from_pydict({
                    "field_a": (codes // num_fields).astype(np.int64), "field_b": (codes % num_fields).astype(np.int64),
                    "attention": per_row.sum(axis=0), "rows": present.sum(axis=0).astype(np.int64)})

    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_size))
    sums = encoded.select(IDS, VALS, MASK).mapInArrow(
        partial, schema="field_a long, field_b long, attention double, rows long")
    return sums.groupBy("field_a", "field_b").agg(F.sum("attention").alias("attention"),
                                                 F.sum("rows").alias("rows"))


def explain_rows(spark: SparkSession, encoded: DataFrame, model_dir: str | Path, *, threads: int = 1) -> DataFrame:
    """One output row per (input row, active slot pair): ids of both features, attention a_ij,
    interaction score pᵀ(v_i ⊙ v_j) x_i x_j and its weighted contribution a_ij · score, and the row's prediction.
    Meant for a sample of rows (the paper's Table 1)."""
    payload = spark.sparkContext.broadcast(ModelPayload(model_dir))
    has_label = LABEL in encoded.columns

    def explain(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import torch

        model = _model(payload.value, threads)
        pi, pj = model.pair_index()
        for pdf in batches:
            ids, vals, mask = _tensors(pdf)
            with torch.inference_mode():
                pred, att = model(ids, vals, mask, return_attention=True)
                xs = torch.where(mask, vals, torch.zeros_like(vals))
                e = model.embedding(ids, xs)  # (B, M, k)
                inter = (e[:, pi] * e[:, pj]) @ model.p  # (B, P)
            active = (mask[:, pi] & mask[:, pj]).numpy()
            r, c = np.nonzero(active)
            out = pd.DataFrame({
                ROW_ID: pdf[ROW_ID].to_numpy()[r],
                "slot_a": pi.numpy()[c], "slot_b": pj.numpy()[c],
                "id_a": ids.numpy()[r, pi.numpy()[c]], "id_b": ids.numpy()[r, pj.numpy()[c]],
                "attention": att.numpy()[r, c].astype(np.float64),
                "interaction": inter.numpy()[r, c].astype(np.float64),
                PREDICTION: pred.numpy()[r].astype(np.float64),
                LABEL: (pdf[LABEL].to_numpy()[r] if has_label else np.full(len(r), np.nan)).astype(np.float64),
            })
            out["contribution"] = out["attention"] * out["interaction"]
            yield out

    schema = (f"{ROW_ID} long, slot_a long, slot_b long, id_a long, id_b long, attention double, "
              f"interaction double, {PREDICTION} double, {LABEL} double, contribution double")
    cols = [ROW_ID, IDS, VALS, MASK] + ([LABEL] if has_label else [])
    return encoded.select(*cols).mapInPandas(explain, schema=schema)
