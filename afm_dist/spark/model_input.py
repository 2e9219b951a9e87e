"""What scoring and explanation read: a preprocessed split, or raw logs encoded with the model's
own schema and vocabulary.

Raw logs are read and parsed exactly as preprocessing reads them (afm_dist/spark/records.py: same
schema, same reasons for malformed rows) and encoded with the vocabulary the model was trained
with: a value never seen in training takes its field's out-of-vocabulary id. A field declared
without one (``oov: false``) cannot represent an unseen value, so such a row is set aside with a
reason naming the field. Numeric fields are standardised with the training statistics recorded
in the data set metadata. A history field's bag is its owner's training bag as preprocessing
wrote it (the model's ``history/``): the bag a test row got. A model trained on libFM data scores
libFM lines: the ids are its features (or are numbered with its vocabulary, ``ids: remap``); a
line with an id the model has no feature for is set aside with the reason.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Mapping, Sequence

import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from afm_dist.dataset import (BAG_PREFIX, HISTORY, IDS, LABEL, MASK, METADATA_FILE, REJECTED, ROW_ID, SPLIT_IDENTITY,
                              VALS, DatasetError, read_split_identity)
from afm_dist.inputs import plan
from afm_dist.io import strip_file_scheme
from afm_dist.model_dir import TrainedModel
from afm_dist.schema import LIBFM_FIELD, Field, Schema, schema_from_dict
from afm_dist.spark import encode, history, parse, readers, records as raw_records

RAW_PREFIX = "raw_"  # prefix of the raw value columns kept beside a raw log's predictions


def is_encoded_split(paths: Sequence[str]) -> bool:
    """True when ``paths`` is one directory of Parquet written by jobs/preprocess.py (a split)."""
    if len(paths) != 1:
        return False
    d = Path(strip_file_scheme(paths[0]))
    return d.is_dir() and any(d.glob("*.parquet")) and not any(d.glob("*.csv"))


def check_raw_logs(model: TrainedModel, path: str) -> None:
    """Refuse raw logs (``path``) that the model directory cannot encode: a history field's bags
    come from the data set's training bags (``history/``), which a model trained before they were
    written lacks.

    Raises:
        DatasetError: naming the model directory, the field and what to do.
    """
    schema = schema_from_dict(model.dataset.schema)
    if schema.history_fields and model.history_path is None:
        name = schema.history_fields[0].name
        raise DatasetError(f"{model.path}: no {HISTORY}/ (the training bags of history field {name!r}), so raw logs "
                           f"({path}) cannot get their bags; train the model again from a data set preprocessed "
                           "with this afm-dist, or score a preprocessed split (--input DATA/test)")


def check_encoded_split(path: str, model: TrainedModel) -> Path:
    """The split directory, after refusing one without the preprocessed columns, or one that
    cannot be shown to be of the model's data set: its feature ids would mean other values.

    The split's identity (schema hash and feature count) comes from its ``_dataset.json`` or the
    ``metadata.json`` around it (``read_split_identity``); its largest feature id from the
    Parquet footers' statistics (no row is read).

    Raises:
        DatasetError: naming the split and what to score instead.
    """
    split_dir = Path(strip_file_scheme(path))
    files = sorted(split_dir.glob("*.parquet"))
    columns = pq.read_schema(files[0]).names  # one footer
    missing = {ROW_ID, IDS, VALS, MASK} - set(columns)
    if missing:
        raise DatasetError(f"{path}: Parquet without the columns {sorted(missing)} of a preprocessed split")
    identity = read_split_identity(split_dir)
    if identity is None:
        raise DatasetError(f"{split_dir}: this split says nothing of the data set it belongs to (no {SPLIT_IDENTITY} "
                           f"in it, no {METADATA_FILE} beside it), so its feature ids cannot be checked against "
                           f"the model's; score the split inside its data set directory, or raw logs instead")
    bags = {b["column"] for b in identity.get("bag_columns", ())} - set(columns)
    if bags:
        raise DatasetError(f"{path}: Parquet without the bag columns {sorted(bags)} that its {SPLIT_IDENTITY} lists "
                           "(a history field's bags); score the split as jobs/preprocess.py wrote it, or raw logs")
    if (identity.get("schema_hash"), identity.get("num_features")) != (model.dataset.schema_hash, model.num_features):
        raise DatasetError(
            f"{split_dir}: this split is not of the data set the model was trained on (schema hash "
            f"{identity.get('schema_hash')}, {identity.get('num_features')} features; the model's: "
            f"{model.dataset.schema_hash}, {model.num_features}); score raw logs instead, or the split the model "
            "was trained with")
    largest = _largest_id(files)
    if largest is not None and largest >= model.num_features:
        raise DatasetError(f"{split_dir}: feature id {largest} is beyond the model's {model.num_features} features; "
                           "this split is not of the data set the model was trained on: score raw logs instead")
    return split_dir


def _largest_id(files: Sequence[Path]) -> int | None:
    """The largest feature id of the ``ids`` column and the bag columns, from the row groups'
    statistics; None when a row group has none (then nothing is claimed). A bag column's row
    group of empty bags has no minimum or maximum, and claims nothing."""
    largest = -1
    for f in files:
        meta = pq.ParquetFile(f).metadata
        top = [meta.schema.column(i).path.split(".")[0] for i in range(meta.num_columns)]
        if IDS not in top:
            return None
        for g in range(meta.num_row_groups):
            if meta.row_group(g).num_rows == 0:
                continue
            for leaf, name in enumerate(top):
                if name != IDS and not name.startswith(BAG_PREFIX):
                    continue
                stats = meta.row_group(g).column(leaf).statistics
                if stats is not None and stats.has_min_max:
                    largest = max(largest, int(stats.max))
                elif name == IDS:
                    return None
    return largest if largest >= 0 else None


def load_encoded(spark: SparkSession, paths: Sequence[str], model: TrainedModel, staging: Path, *,
                 max_rejected_fraction: float,
                 tables: Mapping[str, Sequence[str]] | None = None) -> tuple[DataFrame, list[str], int]:
    """Return (encoded rows, key columns to keep, number of rejected raw rows).

    A preprocessed split is read as it is (keys: row_id). Raw logs are parsed with the model's
    dataset schema and encoded with the model's vocabulary (``encode_raw_logs``).
    """
    if is_encoded_split(paths):
        return spark.read.parquet(readers.spark_path(check_encoded_split(paths[0], model))), [ROW_ID], 0
    return encode_raw_logs(spark, paths, model, staging, max_rejected_fraction=max_rejected_fraction, tables=tables)


def encode_raw_logs(spark: SparkSession, paths: Sequence[str], model: TrainedModel, staging: Path, *,
                    max_rejected_fraction: float,
                    tables: Mapping[str, Sequence[str]] | None = None) -> tuple[DataFrame, list[str], int]:
    """Return (encoded rows, key columns, rejected count); write malformed rows to staging/rejected.

    A history field's bag is its owner's training bag (the model's ``history/``), as a test row
    got at preprocessing; empty for an owner without one (unseen, or no training value).

    Raises:
        DatasetError: a model directory without vocabulary, or without ``history/`` for a history
            field (``check_raw_logs``), or input files that do not match the schema
            (``InputError``); ``RejectedRowsError`` for too many malformed rows.
    """
    check_raw_logs(model, ", ".join(paths))
    dataset = model.dataset
    schema = schema_from_dict(dataset.schema)
    if schema.format.type == "libfm":
        return _encode_libfm_logs(spark, paths, model, schema, staging, max_rejected_fraction=max_rejected_fraction)
    raw_plan = plan(schema, list(paths), tables or {})
    records = raw_records.read_records(spark, raw_plan)
    fields = list(schema.fields)
    vocabulary = _model_vocabulary(spark, model) if any(f.indexed for f in fields) else None
    for f in fields:
        if f.indexed and not f.oov:
            records = _reject_unseen(records, vocabulary, f)
    accepted, rejected = _screen(spark, records, schema, staging, max_rejected_fraction,
                                 tables=raw_records.summarize_tables(spark, raw_plan))
    read = list(schema.source_fields)  # derived fields (history) are built after encoding
    raw_keys = [f"{RAW_PREFIX}{f.name}" for f in read]
    for f in read:
        accepted = accepted.withColumn(f"{RAW_PREFIX}{f.name}", F.col(f.name))
    has_label = schema.target.kind == "explicit"
    value_columns = [f.name for f in read] + raw_keys + ([parse.LABEL] if has_label else [])
    keyed = encode.with_row_ids(accepted, value_columns)
    sizes = {lay.name: lay.size for lay in dataset.fields}
    encoded = encode.encode_fields(keyed, read, vocabulary, sizes)
    if schema.history_fields:
        bags = spark.read.parquet(readers.spark_path(model.history_path))
        encoded = history.join_training_bags(encoded, bags, schema.history_fields)
    stats = dataset.extra.get("numeric_statistics")
    if stats:
        encoded = encode.standardize(encoded, stats)
    if not has_label:
        encoded = encode.with_label(encoded, None)
    encoded = encoded.withColumn(encode.SPLIT, F.lit("score"))
    assembled = encode.assemble(encoded, fields, dataset.fields)
    # assemble keeps only the data columns: bring the raw values back by row id.
    keys = encoded.select(encode.ROW_ID, *raw_keys)
    table = assembled.drop(encode.SPLIT).join(keys, encode.ROW_ID)
    if not has_label:
        table = table.drop(LABEL)
    return table, [encode.ROW_ID, *raw_keys], rejected


def _screen(spark: SparkSession, records: DataFrame, schema: Schema, staging: Path,
            max_rejected_fraction: float,
            tables: Sequence[raw_records.TableSummary] = ()) -> tuple[DataFrame, int]:
    """Count the rows, refuse too many malformed ones (a side table's first: the log rows whose
    key it lacks are rejected too), write them to staging/rejected (the tables' with their own
    file and line); return the accepted rows and the number of log rows rejected."""
    raw_records.check_tables(tables, max_rejected_fraction)
    for t in tables:
        if t.rejected_count or t.duplicate_keys:
            print(f"score: table {t.name}: {t.rows} rows, {t.rejected_count} malformed and {t.duplicate_keys} keys "
                  "listed again, left out (in rejected/)", file=sys.stderr, flush=True)
    summary = raw_records.summarize_input(records, schema)
    raw_records.check_rejected(records, summary, max_rejected_fraction, require_rows=False)
    raw_records.log_truncated(summary, "input")
    raw_records.write_rejected(spark, records, summary, staging / REJECTED, tables)
    return records.filter(raw_records.accepted_row()), summary.rejected


def _encode_libfm_logs(spark: SparkSession, paths: Sequence[str], model: TrainedModel, schema: Schema,
                       staging: Path, *, max_rejected_fraction: float) -> tuple[DataFrame, list[str], int]:
    """libFM lines for a model trained on libFM data: the ids are the features (``ids: keep``), or
    are numbered by the model's vocabulary (``ids: remap``). A line with an id the model has no
    feature for, or with more features than the model's slots, is set aside with the reason. Keys
    kept beside the predictions: ``row_id`` and ``raw_line`` (the line as read)."""
    (layout,) = model.dataset.fields
    remap = schema.format.ids == "remap"
    fmt = dataclasses.replace(schema.format, max_features=layout.width,
                              num_features=None if remap else layout.size)
    schema = dataclasses.replace(schema, format=fmt)
    records = raw_records.read_records(spark, plan(schema, list(paths)))
    mapping = None
    if remap:
        # The one field starts at offset 0, so its local ids are the model's feature ids.
        mapping = (_model_vocabulary(spark, model).filter(F.col("field") == LIBFM_FIELD)
                   .select(F.col("value").cast("long").alias("_v"), F.col("local_id").alias("_id")))
        records = _reject_unknown_libfm_ids(records, mapping)
    accepted, rejected = _screen(spark, records, schema, staging, max_rejected_fraction)
    raw_line = f"{RAW_PREFIX}line"
    accepted = accepted.withColumn(raw_line, F.col(readers.TEXT))
    columns = [parse.LABEL, parse.LIBFM_IDS, parse.LIBFM_VALS, raw_line]
    partitions = spark.sparkContext.defaultParallelism
    if mapping is not None:
        keyed = encode.remapped_libfm_instances(accepted, mapping, partitions, carry=[raw_line],
                                                broadcast=layout.size <= encode.BROADCAST_LIMIT)
    else:
        keyed = encode.with_row_ids(accepted, columns, partitions)
    table = (encode.assemble_libfm(keyed.withColumn(encode.SPLIT, F.lit("score")), layout.width)
             .drop(encode.SPLIT).join(keyed.select(encode.ROW_ID, raw_line), encode.ROW_ID))
    return table, [encode.ROW_ID, raw_line], rejected


def _reject_unknown_libfm_ids(records: DataFrame, mapping: DataFrame) -> DataFrame:
    """Set aside libFM lines with an id that ``mapping`` (the model's numbering, ``_v`` -> ``_id``)
    lacks, with a reason naming the smallest such id."""
    line = [readers.SOURCE, readers.BLOCK, readers.POS]
    unknown = (records.filter(raw_records.accepted_row())
               .select(*line, F.explode(parse.LIBFM_IDS).alias("_v"))
               .join(mapping.select("_v"), "_v", "left_anti")
               .groupBy(*line).agg(F.min("_v").alias("_unknown")))
    reason = F.concat(F.lit("libfm: feature id "), F.col("_unknown").cast("string"),
                      F.lit(" was not seen in training, so the model has no feature for it"))
    return (records.join(unknown, line, "left")
            .withColumn(parse.REASON, F.when(F.col(parse.REASON).isNull() & F.col("_unknown").isNotNull(), reason)
                        .otherwise(F.col(parse.REASON)))
            .drop("_unknown"))


def _model_vocabulary(spark: SparkSession, model: TrainedModel) -> DataFrame:
    """The model's vocabulary as (field, value, local_id): ids relative to the field's offset."""
    if model.vocabulary_path is None:
        raise DatasetError(f"{model.path}: no vocabulary/ to encode raw logs with; retrain with this afm-dist")
    offsets = spark.createDataFrame([(lay.name, lay.offset) for lay in model.dataset.fields],
                                    "field string, offset int")
    return (spark.read.parquet(readers.spark_path(model.vocabulary_path)).filter(F.col("value").isNotNull())
            .join(F.broadcast(offsets), "field")
            .select("field", "value", (F.col("id") - F.col("offset")).cast("int").alias("local_id")))


def _reject_unseen(records: DataFrame, vocabulary: DataFrame, f: Field) -> DataFrame:
    """Set aside rows with a value of field ``f`` (which has no out-of-vocabulary id) that
    training never saw, with a reason naming the field and the value."""
    known_col = f"_known_{f.name}"
    known = vocabulary.filter(F.col("field") == f.name).select(F.col("value").alias(known_col))
    if f.kind == "categorical":
        records = records.join(F.broadcast(known), records[f.name] == known[known_col], "left")
        unseen = F.col(f.name).isNotNull() & F.col(known_col).isNull()
        shown = F.col(f.name)
    else:
        records = records.crossJoin(F.broadcast(known.agg(F.collect_set(known_col).alias(known_col))))
        missing = F.array_except(F.coalesce(F.col(f.name), F.array().cast("array<string>")), F.col(known_col))
        unseen = F.size(missing) > 0
        shown = F.element_at(missing, 1)
    reason = F.concat(F.lit(f"field '{f.name}': value '"), shown,
                      F.lit("' was not seen in training and the field has no out-of-vocabulary id"))
    return records.withColumn(parse.REASON, F.when(F.col(parse.REASON).isNull() & unseen, reason)
                              .otherwise(F.col(parse.REASON))).drop(known_col)
