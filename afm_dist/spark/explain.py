"""AFM explanations on Spark executors: the attention weight a_ij of every feature pair (Xiao et al.
2017, eq. 5), averaged per field pair over a whole input, and pair by pair for a sample of rows
with both raw values (the paper's Table 1).

``explain_input`` writes an explanation directory::

    field_pairs.csv         mean attention of every field pair over the whole input, largest first
    attention_heatmap.png   the same as a field x field heatmap
    rows.csv, rows/         a sample of rows: every active feature pair with both raw values, its
                            attention, its interaction score p^T (v_i * v_j) x_i x_j and their product
"""
from __future__ import annotations

import csv
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
from pyspark import Broadcast
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from afm_dist.batch import to_batch
from afm_dist.dataset import IDS, LABEL, MASK, ROW_ID, VALS, BagColumn, DatasetError, split_bag_columns
from afm_dist.io import strip_file_scheme
from afm_dist.model_dir import TrainedModel
from afm_dist.plots import plot_attention_heatmap
from afm_dist.spark import readers
from afm_dist.spark.model_input import is_encoded_split, load_encoded
from afm_dist.spark.scoring import PREDICTION, broadcast_model, executor_model

FIELD_PAIRS, HEATMAP, ROWS = "field_pairs.csv", "attention_heatmap.png", "rows"


@dataclass(frozen=True)
class FieldPair:
    """Mean attention of one field pair over the rows where both fields have a value."""

    field_a: str
    field_b: str
    mean_attention: float  # NaN when the pair never occurs
    rows: int


def input_mask(mask: np.ndarray, first_slots: np.ndarray) -> np.ndarray:
    """Slot mask (B, M) -> mask of the pair layer's inputs (B, G): an input starting at slot
    ``first_slots[g]`` (a pooled field spans the slots up to the next input) is real if any slot is."""
    return np.logical_or.reduceat(mask.astype(bool), first_slots, axis=1)


def attention_sums(encoded: DataFrame, payload: Broadcast, *, pair_inputs: Sequence[tuple[int, int, bool]],
                   batch_size: int = 8192, threads: int = 1, bags: Sequence[BagColumn] = ()) -> DataFrame:
    """Per field pair (fi <= fj): total attention over rows, and rows where the pair occurs.

    ``pair_inputs``: (first slot, field index, pooled) of each input of the pair layer
    (``TrainedModel.pair_inputs``); attention of input pairs in the same field pair (multi-valued
    fields) is added within a row. Partial sums per batch are reduced by Spark. ``bags``: the
    bag columns of a split (``dataset.split_bag_columns``), none for raw logs.
    """
    first_slots = np.asarray([p[0] for p in pair_inputs])
    input_fields = np.asarray([p[1] for p in pair_inputs])
    num_fields = int(input_fields.max()) + 1

    def partial(batches):  # Iterator[pyarrow.RecordBatch] -> Iterator[pyarrow.RecordBatch]
        import pyarrow as pa
        import torch

        model = executor_model(payload, threads)
        pi, pj = (t.numpy() for t in model.pair_index())
        fa, fb = input_fields[pi], input_fields[pj]
        lo_f, hi_f = np.minimum(fa, fb), np.maximum(fa, fb)
        pair_field = lo_f * num_fields + hi_f  # (P,) field-pair code of every slot pair
        codes = np.unique(pair_field)
        onehot = (pair_field[:, None] == codes[None, :]).astype(np.float64)  # (P, C)
        for batch in batches:
            for start in range(0, batch.num_rows, batch_size):
                rows = to_batch(batch.slice(start, batch_size), bags)
                with torch.inference_mode():
                    _, att = model(*rows.inputs, return_attention=True)
                m = input_mask(rows.mask.numpy(), first_slots)  # (B, G)
                present = (m[:, pi] & m[:, pj]).astype(np.float64) @ onehot > 0  # (B, C)
                per_row = att.double().numpy() @ onehot  # (B, C) attention of each field pair in each row
                yield pa.RecordBatch.from_pydict({
                    "field_a": (codes // num_fields).astype(np.int64), "field_b": (codes % num_fields).astype(np.int64),
                    "attention": per_row.sum(axis=0), "rows": present.sum(axis=0).astype(np.int64)})

    encoded.sparkSession.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_size))
    sums = encoded.select(IDS, VALS, MASK, *[b.column for b in bags]).mapInArrow(
        partial, schema="field_a long, field_b long, attention double, rows long")
    return sums.groupBy("field_a", "field_b").agg(F.sum("attention").alias("attention"),
                                                 F.sum("rows").alias("rows"))


def field_pair_table(sums: Sequence[Mapping], names: Sequence[str]) -> tuple[list[FieldPair], np.ndarray]:
    """Collected ``attention_sums`` rows -> field pairs by mean attention (largest first, NaN last)
    and the symmetric (F, F) matrix of mean attention (NaN where a pair never occurs)."""
    matrix = np.full((len(names), len(names)), np.nan)
    table = []
    for r in sums:
        mean = r["attention"] / r["rows"] if r["rows"] else float("nan")
        matrix[r["field_a"], r["field_b"]] = matrix[r["field_b"], r["field_a"]] = mean
        table.append(FieldPair(names[r["field_a"]], names[r["field_b"]], mean, r["rows"]))
    table.sort(key=lambda t: -t.mean_attention if t.mean_attention == t.mean_attention else 0)
    return table, matrix


def explain_rows(encoded: DataFrame, payload: Broadcast, *, pair_inputs: Sequence[tuple[int, int, bool]],
                 threads: int = 1, bags: Sequence[BagColumn] = ()) -> DataFrame:
    """One output row per (input row, active pair of the pair layer's inputs): ids of both features
    (-1 for a pooled field, a bag of values), attention a_ij, interaction score p^T (v_i * v_j) x_i x_j
    (``AFM.pair_terms``) and its weighted contribution a_ij * score, and the row's prediction;
    ``slot_a``/``slot_b`` are the inputs' first slots (``pair_inputs``: ``TrainedModel.pair_inputs``).
    Meant for a sample of rows (the paper's Table 1). ``bags``: as ``attention_sums``."""
    has_label = LABEL in encoded.columns
    first_slots = np.asarray([p[0] for p in pair_inputs])
    pooled = np.asarray([p[2] for p in pair_inputs])

    def explain(batches) -> Iterator:  # Iterator[pyarrow.RecordBatch] -> Iterator[pyarrow.RecordBatch]
        import pyarrow as pa
        import torch

        model = executor_model(payload, threads)
        pi, pj = (t.numpy() for t in model.pair_index())
        for batch in batches:
            rows = to_batch(batch, bags)
            with torch.inference_mode():
                pred, att, inter = (t.double().numpy() for t in model.pair_terms(*rows.inputs))
            ids = np.where(pooled, -1, rows.ids.numpy()[:, first_slots])  # (B, G)
            mask = input_mask(rows.mask.numpy(), first_slots)  # (B, G)
            r, c = np.nonzero(mask[:, pi] & mask[:, pj])
            label = rows.label.double().numpy()[r] if has_label else np.full(len(r), np.nan)
            yield pa.RecordBatch.from_pydict({
                ROW_ID: batch.column(ROW_ID).to_numpy()[r].astype(np.int64),
                "slot_a": first_slots[pi[c]].astype(np.int64), "slot_b": first_slots[pj[c]].astype(np.int64),
                "id_a": ids[r, pi[c]], "id_b": ids[r, pj[c]],
                "attention": att[r, c], "interaction": inter[r, c], PREDICTION: pred[r], LABEL: label,
                "contribution": att[r, c] * inter[r, c],
            })

    schema = (f"{ROW_ID} long, slot_a long, slot_b long, id_a long, id_b long, attention double, "
              f"interaction double, {PREDICTION} double, {LABEL} double, contribution double")
    cols = [ROW_ID, IDS, VALS, MASK] + ([LABEL] if has_label else []) + [b.column for b in bags]
    return encoded.select(*cols).mapInArrow(explain, schema=schema)


def with_raw_values(pairs: DataFrame, model: TrainedModel) -> DataFrame:
    """Add field names and raw values of both features of each pair, from the model's vocabulary."""
    names, slot_fields = model.field_names, model.slot_fields
    slot_name = F.create_map(*[x for s, fi in enumerate(slot_fields) for x in (F.lit(s), F.lit(names[fi]))])
    pairs = pairs.withColumn("field_a", slot_name[F.col("slot_a")]).withColumn("field_b", slot_name[F.col("slot_b")])
    if model.vocabulary_path is not None:
        vocab = pairs.sparkSession.read.parquet(readers.spark_path(model.vocabulary_path)).select(
            F.col("id").cast("long").alias("_id"), F.col("value").cast("string").alias("_value"))
        for side in ("a", "b"):
            v = vocab.withColumnRenamed("_id", f"id_{side}").withColumnRenamed("_value", f"value_{side}")
            pairs = pairs.join(v, on=f"id_{side}", how="left")
    else:  # a model without a vocabulary (libFM input): the ids are the raw values
        pairs = pairs.withColumn("value_a", F.col("id_a").cast("string")).withColumn("value_b", F.col("id_b").cast("string"))
    return pairs.select(ROW_ID, "field_a", "value_a", "field_b", "value_b", "attention", "interaction",
                        "contribution", PREDICTION, LABEL)


def explain_input(spark: SparkSession, inputs: Sequence[str], model: TrainedModel, out: Path, *, rows: int, seed: int,
                  threads: int, tables: Mapping[str, Sequence[str]], max_rejected_fraction: float) -> list[FieldPair]:
    """Explain an AFM on a split or raw logs into ``out`` (see the module); returns the field pairs.

    Raises:
        DatasetError: the model is not an AFM, or the input is unusable.
    """
    if model.name != "afm":
        raise DatasetError(f"{model.path}: explanations need an AFM (attention weights); this is {model.name!r}")
    encoded, _, _ = load_encoded(spark, inputs, model, out, tables=tables, max_rejected_fraction=max_rejected_fraction)
    bags = split_bag_columns(strip_file_scheme(inputs[0])) if is_encoded_split(inputs) else ()
    payload = broadcast_model(spark, model)

    # Whole input: mean attention per field pair (over the rows where the pair occurs).
    sums = attention_sums(encoded, payload, pair_inputs=model.pair_inputs, threads=threads, bags=bags).collect()
    table, matrix = field_pair_table(sums, model.field_names)
    with open(out / FIELD_PAIRS, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["field_a", "field_b", "mean_attention", "rows"])
        w.writerows(astuple(t) for t in table)
    plot_attention_heatmap(matrix, model.field_names, out / HEATMAP,
                           title=f"AFM mean attention per field pair ({model.path.name})")

    # A deterministic sample of rows, explained pair by pair with raw values.
    sample = encoded.withColumn("_h", F.xxhash64(F.col(ROW_ID), F.lit(seed))).orderBy("_h").limit(rows).drop("_h")
    pairs = with_raw_values(explain_rows(sample, payload, pair_inputs=model.pair_inputs, threads=threads, bags=bags),
                            model)
    pairs = pairs.orderBy(ROW_ID, F.desc("attention"))
    pairs.write.parquet(str(out / ROWS))
    pairs.toPandas().to_csv(out / f"{ROWS}.csv", index=False)  # a sample: small by construction
    return table
