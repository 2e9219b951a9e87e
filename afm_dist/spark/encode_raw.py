"""Raw logs -> encoded rows with a trained model's own schema and vocabulary (for scoring).

The logs are parsed exactly as preprocessing parses them (same schema, same reasons for
malformed rows) and encoded with the vocabulary the model was trained with: a value never seen
in training takes its field's out-of-vocabulary id. A field declared without one (``oov: false``)
cannot represent an unseen value, so such a row is set aside with a reason naming the field.
Numeric fields are standardised with the training statistics recorded in the data set metadata.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from afm_dist.dataset import LABEL, REJECTED, VOCABULARY, DatasetError, FieldLayout
from afm_dist.schema import schema_from_dict
from afm_dist.spark import encode, parse, readers

RAW_PREFIX = "raw_"


def encode_raw_logs(spark: SparkSession, paths: Sequence[str], info: dict[str, Any], staging: Path, *,
                    max_rejected_fraction: float, model_dir: str | Path,
                    tables: dict[str, list[str]] | None = None) -> tuple[DataFrame, list[str], int]:
    """Return (encoded rows, key columns, rejected count); write malformed rows to staging/rejected."""
    from afm_dist import preprocess

    dataset = info["dataset"]
    schema = schema_from_dict(dataset["schema"])
    if schema.format.type == "libfm":
        raise DatasetError("a libFM model scores libFM files through jobs/preprocess.py splits, not raw logs")
    try:
        plan = preprocess.plan(schema, list(paths), tables or {})
    except preprocess.InputError as e:
        raise DatasetError(str(e)) from e
    records = preprocess.read_records(spark, plan)
    layouts = [FieldLayout(**f) for f in dataset["fields"]]
    fields = list(schema.fields)

    vocab_dir = Path(model_dir) / VOCABULARY
    vocabulary = None
    if any(f.indexed for f in fields):
        if not vocab_dir.is_dir():
            raise DatasetError(f"{model_dir}: no {VOCABULARY}/ to encode raw logs with; retrain with this afm-dist")
        offsets = spark.createDataFrame([(lay.name, lay.offset) for lay in layouts], "field string, offset int")
        vocabulary = (spark.read.parquet(str(vocab_dir)).filter(F.col("value").isNotNull())
                      .join(F.broadcast(offsets), "field")
                      .select("field", "value", (F.col("id") - F.col("offset")).cast("int").alias("local_id")))

    # A value unseen in training, in a field without an out-of-vocabulary id: set the row aside.
    for f in fields:
        if f.indexed and not f.oov and vocabulary is not None:
            known = vocabulary.filter(F.col("field") == f.name).select(F.col("value").alias(f"_known_{f.name}"))
            if f.kind == "categorical":
                records = records.join(F.broadcast(known), records[f.name] == known[f"_known_{f.name}"], "left")
                unseen = F.col(f.name).isNotNull() & F.col(f"_known_{f.name}").isNull()
                shown = F.col(f.name)
            else:
                known_list = known.agg(F.collect_set(f"_known_{f.name}").alias(f"_known_{f.name}"))
                records = records.crossJoin(F.broadcast(known_list))
                missing = F.array_except(F.coalesce(F.col(f.name), F.array().cast("array<string>")),
                                         F.col(f"_known_{f.name}"))
                unseen = F.size(missing) > 0
                shown = F.element_at(missing, 1)
            reason = F.concat(F.lit(f"field '{f.name}': value '"), shown,
                              F.lit("' was not seen in training and the field has no out-of-vocabulary id"))
            records = records.withColumn(parse.REASON, F.when(F.col(parse.REASON).isNull() & unseen, reason)
                                         .otherwise(F.col(parse.REASON))).drop(f"_known_{f.name}")

    accepted_flag = ~F.col(parse.HEADER) & F.col(parse.REASON).isNull()
    rejected_flag = ~F.col(parse.HEADER) & F.col(parse.REASON).isNotNull()
    blocks = readers.line_blocks(records, F.sum(F.col(parse.HEADER).cast("long")).alias("headers"),
                                 F.sum(rejected_flag.cast("long")).alias("rejected")).cache()
    totals = blocks.agg(F.sum("_n").alias("n"), F.sum("headers").alias("headers"),
                        F.sum("rejected").alias("rejected")).first()
    n_input = int(totals["n"] or 0) - int(totals["headers"] or 0)
    n_rejected = int(totals["rejected"] or 0)
    rejected = records.filter(rejected_flag)
    (readers.with_line_numbers(rejected, blocks)
     .select(F.col(readers.SOURCE).alias("source"), F.col(readers.LINE).alias("line"),
             F.col(readers.TEXT).alias("raw"), F.col(parse.REASON).alias("reason"))
     .repartition(1).sortWithinPartitions("source", "line")
     .write.parquet(str(staging / REJECTED)))
    if n_input and n_rejected > max_rejected_fraction * n_input:
        raise DatasetError(
            f"{n_rejected} of {n_input} raw rows ({n_rejected / n_input:.2%}) are malformed or unseen, more than "
            f"--max-rejected-fraction {max_rejected_fraction:g}; see {staging / REJECTED} once raised, e.g.:"
            + preprocess._examples(rejected, blocks))

    accepted = records.filter(accepted_flag)
    raw_keys = [f"{RAW_PREFIX}{f.name}" for f in fields]
    for f in fields:
        accepted = accepted.withColumn(f"{RAW_PREFIX}{f.name}", F.col(f.name))
    has_label = schema.target.kind == "explicit"
    value_columns = [f.name for f in fields] + raw_keys + ([parse.LABEL] if has_label else [])
    keyed = encode.with_row_ids(accepted, value_columns)
    sizes = {lay.name: lay.size for lay in layouts}
    encoded = encode.encode_fields(keyed, fields, vocabulary, sizes, broadcast_limit=5_000_000)
    stats = dataset.get("extra", {}).get("numeric_statistics")
    if stats:
        encoded = encode.standardize(encoded, stats)
    if not has_label:
        encoded = encode.with_label(encoded, None)
    encoded = encoded.withColumn(encode.SPLIT, F.lit("score"))
    assembled = encode.assemble(encoded, fields, layouts)
    # assemble keeps only the data columns: bring the raw values back by row id.
    keys = encoded.select(encode.ROW_ID, *raw_keys)
    table = assembled.drop(encode.SPLIT).join(keys, encode.ROW_ID)
    if not has_label:
        table = table.drop(LABEL)
    return table, [encode.ROW_ID, *raw_keys], n_rejected
