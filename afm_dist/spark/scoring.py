"""Batch scoring on Spark executors (pure DataFrame -> DataFrame), and the scoring job's steps.

The trained model travels once per job as a broadcast of its description (``ModelPayload``:
model.json content and the weights' path) and is rebuilt once per executor Python process from
the model directory's safetensors file, then reused by
every task that process runs; each task scores its partition in Arrow batches with torch, so
memory stays bounded by the batch size whatever the size of the log.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from pyspark import Broadcast
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from afm_dist import metrics as M
from afm_dist.batch import to_batch
from afm_dist.dataset import IDS, LABEL, MASK, ROW_ID, VALS, BagColumn, DatasetError, split_bag_columns
from afm_dist.io import write_json_atomic
from afm_dist.model_dir import TrainedModel
from afm_dist.spark import readers
from afm_dist.spark.model_input import check_encoded_split, is_encoded_split, load_encoded

SCORE = "score"  # the model's raw output: log loss and AUC read it (sigmoid(score) for implicit targets)
PREDICTION = "prediction"  # the score clipped to the training target's range: RMSE and MAE read it
PREDICTIONS, METRICS_FILE = "predictions", "metrics.json"  # what a scoring output directory holds

# Executor-side cache: one rebuilt model per (model hash) per Python worker process.
_MODELS: dict[str, Any] = {}


class ModelPayload:
    """What executors need to rebuild a trained model: its model.json and where its weights are.

    The weights are not shipped: each executor process reads the safetensors file from the model
    directory (which, like the inputs, must be at the same path on every node), so that a table of
    millions of rows is never pickled, broadcast or copied on the driver.
    """

    def __init__(self, model: TrainedModel):
        self.info_json = model.to_json()
        self.directory = str(model.path)
        stat = model.weights_path.stat()
        self.key = f"{self.directory}:{stat.st_size}:{stat.st_mtime_ns}"  # a retrained model is another key


def broadcast_model(spark: SparkSession, model: TrainedModel) -> Broadcast:
    """The model's description as a broadcast ``ModelPayload`` (a few kilobytes)."""
    return spark.sparkContext.broadcast(ModelPayload(model))


def executor_model(payload: Broadcast, threads: int):
    """The broadcast model, rebuilt once per executor process (eval mode) from its directory."""
    p: ModelPayload = payload.value
    model = _MODELS.get(p.key)
    if model is None:
        import torch

        torch.set_num_threads(threads)
        _MODELS.clear()  # one model per process: a new job's model replaces the last (and frees it first)
        model = TrainedModel.from_json(p.info_json, path=Path(p.directory)).build()
        _MODELS[p.key] = model
    return model


def _predict(model, batch, clip: tuple[float, float] | None, bags: Sequence[BagColumn] = ()) -> list:
    """[score, prediction] Arrow arrays (float64) for an Arrow batch of encoded rows (``bags``: a
    split's bag columns): the model's raw scores, and the same clipped to ``clip``."""
    import pyarrow as pa
    import torch

    with torch.inference_mode():
        score = model(*to_batch(batch, bags).inputs).double().numpy()
    return [pa.array(score), pa.array(score if clip is None else np.clip(score, *clip))]


def score(spark: SparkSession, encoded: DataFrame, payload: Broadcast, *, keep: list[str],
          clip: tuple[float, float] | None, batch_size: int = 8192, threads: int = 1) -> DataFrame:
    """Add ``prediction`` to an encoded DataFrame (ids, vals, mask [, label]); keep ``keep`` columns.

    Returns ``keep`` columns, ``label`` where the input has it, ``score`` (the raw model output)
    and ``prediction`` (clipped to ``clip`` when given, as the paper's evaluation does).
    """
    has_label = LABEL in encoded.columns
    in_cols = keep + [IDS, VALS, MASK] + ([LABEL] if has_label else [])
    out_cols = keep + ([LABEL] if has_label else [])
    out_schema = encoded.select(*out_cols).schema.add(SCORE, "double").add(PREDICTION, "double")

    def predict(batches):  # Iterator[pyarrow.RecordBatch] -> Iterator[pyarrow.RecordBatch]
        import pyarrow as pa

        model = executor_model(payload, threads)
        for batch in batches:
            for start in range(0, batch.num_rows, batch_size):
                part = batch.slice(start, batch_size)
                columns = [part.column(c) for c in out_cols] + _predict(model, part, clip)
                yield pa.RecordBatch.from_arrays(columns, names=out_cols + [SCORE, PREDICTION])

    # Arrow batches straight into torch (no pandas): the list columns become (B, M) arrays by a
    # reshape of their flat values instead of a per-row stack.
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_size))
    return encoded.select(*in_cols).mapInArrow(predict, schema=out_schema)


def score_split(spark: SparkSession, split_dir: str | Path, payload: Broadcast, *,
                clip: tuple[float, float] | None, batch_size: int = 8192, threads: int = 1) -> DataFrame:
    """Score a split written by jobs/preprocess.py: ``row_id``, ``label``, ``score`` and ``prediction``.

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
        raise DatasetError(f"{split}: no Parquet files; pass a split directory written by jobs/preprocess.py")
    schema = pq.read_schema(files[0])
    has_label = LABEL in schema.names
    tasks = [(f, g) for f in files for g in range(pq.ParquetFile(f).metadata.num_row_groups)]  # footers only
    bags = split_bag_columns(split)
    cols = [ROW_ID, IDS, VALS, MASK] + ([LABEL] if has_label else []) + [b.column for b in bags]
    out_cols = [ROW_ID] + ([LABEL] if has_label else [])

    def predict(index_batches):  # Iterator[RecordBatch of task indices] -> Iterator[RecordBatch]
        import pyarrow as pa

        model = executor_model(payload, threads)
        for ib in index_batches:
            for index in ib.column(0).to_pylist():
                path, group = tasks[index]
                for part in pq.ParquetFile(path).iter_batches(batch_size=batch_size, row_groups=[group], columns=cols):
                    yield pa.RecordBatch.from_arrays(
                        [part.column(ROW_ID).cast(pa.int64())]
                        + ([part.column(LABEL).cast(pa.float32())] if has_label else [])
                        + _predict(model, part, clip, bags),
                        names=out_cols + [SCORE, PREDICTION])

    # Task i scores row group tasks[i]; spark.range makes the indices in the JVM (no Python RDD).
    slices = max(1, min(len(tasks), spark.sparkContext.defaultParallelism * 4))
    out_schema = f"{ROW_ID} long, " + (f"{LABEL} float, " if has_label else "") + f"{SCORE} double, {PREDICTION} double"
    return spark.range(0, len(tasks), numPartitions=slices).mapInArrow(predict, schema=out_schema)


def prediction_metrics(scored: DataFrame, *, clip: tuple[float, float] | None, binary: bool) -> dict[str, float]:
    """Metrics of ``score`` against ``label`` with the trainer's own definitions (afm_dist/metrics.py):
    rows, RMSE and MAE of the scores clipped to ``clip``; for ``binary`` targets, log loss and AUC
    of the raw scores. Each task sums its rows (``metrics.accumulate``); Spark adds the sums.

    Raises:
        DatasetError: no row to compute metrics on (never a metric of zero rows).
    """
    def partial(batches):  # Iterator[pyarrow.RecordBatch] -> Iterator[pyarrow.RecordBatch]
        import pyarrow as pa
        import torch

        sums = M.new_sums()
        for batch in batches:
            # np.array: a writable copy (one column of floats); Arrow's zero-copy arrays are
            # read-only, which torch.from_numpy warns about on every executor.
            M.accumulate(sums, torch.from_numpy(np.array(batch.column(SCORE).to_numpy(zero_copy_only=False))),
                         torch.from_numpy(np.array(batch.column(LABEL).to_numpy(zero_copy_only=False))), clip=clip,
                         binary=binary)
        index = sums.nonzero().squeeze(1)  # sparse: most histogram bins are empty
        yield pa.RecordBatch.from_pydict({"i": index.numpy(), "v": sums[index].numpy()})

    totals = (scored.select(SCORE, LABEL).mapInArrow(partial, schema="i long, v double")
              .groupBy("i").agg(F.sum("v").alias("v")).collect())
    sums = M.new_sums()
    for r in totals:
        sums[r["i"]] = r["v"]
    metrics = M.finish(sums, binary=binary)
    if not metrics["rows"]:
        raise DatasetError("no row to score: the input holds no row with a label (an empty split, or every raw "
                           "row rejected); check the input or the schema's split fractions")
    return metrics


def score_input(spark: SparkSession, inputs: Sequence[str], model: TrainedModel, out: Path, *, clip: bool,
                batch_size: int, threads: int, tables: Mapping[str, Sequence[str]],
                max_rejected_fraction: float) -> dict[str, Any]:
    """Score a preprocessed split or raw logs into ``out``: ``predictions/``, ``rejected/`` (raw
    logs) and ``metrics.json`` (rows, RMSE, MAE; log loss and AUC for binary targets: implicit
    feedback or a model trained with the logistic loss), the trainer's definitions of each.
    Returns the metrics summary.

    Raises:
        DatasetError: a split of another data set, unusable raw input, too many malformed rows.
    """
    start = time.time()
    clip_range = model.clip_range if clip else None
    payload = broadcast_model(spark, model)
    if is_encoded_split(inputs):  # its row groups are read by the Python workers themselves
        scored = score_split(spark, check_encoded_split(inputs[0], model), payload, clip=clip_range,
                             batch_size=batch_size, threads=threads)
        rejected = 0
    else:
        encoded, keys, rejected = load_encoded(spark, inputs, model, out, tables=tables,
                                               max_rejected_fraction=max_rejected_fraction)
        scored = score(spark, encoded, payload, keep=keys, clip=clip_range, batch_size=batch_size, threads=threads)
    scored.write.parquet(str(out / PREDICTIONS))
    print(f"score: predictions written after {time.time() - start:.1f} s; computing metrics", file=sys.stderr,
          flush=True)
    predictions = spark.read.parquet(readers.spark_path(out / PREDICTIONS))
    summary: dict[str, Any] = {"model": str(model.path), "inputs": list(inputs), "clipped_to": clip_range,
                               "rejected_rows": rejected}
    if LABEL in predictions.columns:
        summary.update(prediction_metrics(predictions, clip=clip_range, binary=model.binary_target))
    else:
        summary["rows"] = predictions.count()
        if not summary["rows"]:
            raise DatasetError(f"{', '.join(inputs)}: no row to score (every raw row was rejected or the input is empty)")
    summary["seconds"] = round(time.time() - start, 2)
    write_json_atomic(out / METRICS_FILE, summary)
    return summary
