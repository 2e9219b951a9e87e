"""Build a training data set from raw logs, as the dataset schema declares.

Two steps, so that every mistake that can be found without Spark is found before it starts:

``afm_dist.inputs.plan``  (no Spark) resolves the input files, reads their headers and checks
                          them against the schema: a missing column fails naming the field.
``build``                 reads the records (afm_dist/spark/records.py), runs the transforms of
                          ``afm_dist.spark.encode`` and writes the data set's parts (splits,
                          vocabulary, rejected rows) into a directory, returning its metadata.
                          The caller publishes the directory and writes the completion marker
                          (``jobs/preprocess.py`` through ``afm_dist.cli.run_spark_job``).

Only counts, sizes (vocabulary sizes, libFM width and id range), the explicit target's range
and numeric fields' training mean and standard deviation are collected to the driver; a failure
on too many malformed rows also brings a few examples for its message.

Costs paid only by the input that needs them: logs with a row holding an odd number of quotes
(a quoted value with line breaks, or an unbalanced quote) are read again with the lines of such
records joined; a libFM id space of over ``SPARSE_IDS`` ids (with ``ids: keep`` and no
``num_features``) has its distinct ids counted, and is refused when most are unused.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from pyspark import StorageLevel
from pyspark.sql import DataFrame, Observation, SparkSession
from pyspark.sql import functions as F

from afm_dist.dataset import (BAG_COLUMNS_VERSION, HISTORY, HISTORY_FIELD, HISTORY_OWNER, LABEL as OUT_LABEL, REJECTED,
                              SPLITS, TRAIN, VOCABULARY, DatasetError, DatasetMetadata, FieldLayout)
from afm_dist.inputs import Plan
from afm_dist.schema import LIBFM_FIELD, Schema
from afm_dist.spark import encode, history, parse, readers, records as raw_records

log = logging.getLogger(__name__)

# A libFM id space (largest id + 1) above SPARSE_IDS with fewer than 1/SPARSE_RATIO of its ids used
# is refused unless the schema remaps the ids or declares num_features: its tables would be
# mostly unused rows (hashed ids up to 2^27 make a 137 GB embedding table at dimension 256).
SPARSE_IDS, SPARSE_RATIO = 1 << 20, 4


@dataclass(frozen=True)
class Options:
    seed: int
    max_rejected_fraction: float = 0.01
    # Rows per Parquet row group of the training split: Petastorm reads a row group at a time.
    rows_per_group: int = 50_000
    # Row groups per split at least, so that each split has many more row groups than workers.
    min_row_groups: int = 32
    # Vocabularies up to this many values are broadcast for encoding (map-side join).
    broadcast_limit: int = encode.BROADCAST_LIMIT
    # Logs per partition of negative sampling's window over contexts (its shuffle is not the
    # output's: the instances are shuffled again by row id into the files).
    rows_per_window: int = 250_000
    # A history field's bags are broadcast to the rows when owners x (max_values + 1) is at most
    # this many item ids (afm_dist/spark/history.py); larger ones are joined by a shuffle.
    history_broadcast_ids: int = history.BROADCAST_IDS


def window_partitions(spark: SparkSession, rows: int, options: Options) -> int:
    """Partitions of negative sampling's window: ``options.rows_per_window`` logs each, at least
    one per core. As many as the output's files (50,000 instances each) made 84 small tasks of
    2 million logs, whose fixed costs took a third of the stage."""
    return max(spark.sparkContext.defaultParallelism, math.ceil(rows / options.rows_per_window))


def _stage(name: str) -> float:
    log.info("stage: %s", name)
    return time.monotonic()


def build(spark: SparkSession, plan_: Plan, out_dir: Path, options: Options) -> DatasetMetadata:
    """Write ``train/ validation/ test/ vocabulary/ rejected/`` (and ``history/`` with a history
    field) into ``out_dir`` and return the data set's metadata (the caller saves it and marks the
    directory complete)."""
    schema = plan_.schema.with_seed(options.seed)
    is_libfm = schema.format.type == "libfm"
    started = _stage(f"read and parse {len(plan_.logs.paths)} input file(s), format {schema.format.type}")
    given = tuple(plan_.splits)  # the splits that came as files (empty: a random split)
    carry = [encode.GIVEN_SPLIT] if given else []

    def read(quoted_line_breaks: bool) -> DataFrame:
        records = raw_records.read_records(spark, plan_, quoted_line_breaks=quoted_line_breaks)
        if given:
            records = records.withColumn(encode.GIVEN_SPLIT, readers.given_split(spark, plan_.splits))
        return raw_records.kept(records)

    records = read(False).persist(StorageLevel.MEMORY_AND_DISK)  # parsed once, read by every pass below

    # -- counts, line numbers, fail fast on malformed rows --------------------------------------
    summary = raw_records.summarize_input(records, schema)
    if summary.odd_quotes:
        _stage(f"{summary.odd_quotes} row(s) with an odd number of quotes: read again, joining the lines of "
               "quoted values that hold line breaks")
        summary.blocks.unpersist()
        records.unpersist()
        records = read(True).persist(StorageLevel.MEMORY_AND_DISK)
        summary = raw_records.summarize_input(records, schema)
    totals = summary.totals
    cached = [summary.blocks, records]
    n_input, n_rejected, n_accepted = summary.rows, summary.rejected, summary.accepted
    log.info("input rows: %d, rejected: %d, accepted: %d (blank lines: %d, lines joined into multi-line records: %d)",
             n_input, n_rejected, n_accepted, summary.blank, summary.continued)
    raw_records.log_truncated(summary, "input")
    # A malformed side table is named first: the log rows whose key it lacks are rejected too.
    tables = raw_records.summarize_tables(spark, plan_)
    for t in tables:
        log.info("table %s: %d rows, rejected: %d, keys listed again: %d", t.name, t.rows, t.rejected_count,
                 t.duplicate_keys)
    raw_records.check_tables(tables, options.max_rejected_fraction)
    raw_records.check_rejected(records, summary, options.max_rejected_fraction, require_rows=True)

    _stage("write rejected rows")
    raw_records.write_rejected(spark, records, summary, out_dir / REJECTED, tables)

    accepted = records.filter(raw_records.accepted_row())
    extra: dict = {"vocabulary_basis": "all accepted logs (categorical); training split (numeric statistics)",
                   "padding": {"id": 0, "val": 0.0, "mask": 0}}
    per_positive = schema.target.negatives.per_positive if schema.target.negatives else 0
    n_expected = n_accepted * (1 + per_positive)
    tasks = max(options.min_row_groups, math.ceil(n_expected * schema.split.train / options.rows_per_group))
    if is_libfm:
        width = schema.format.max_features or int(totals["width"])
        if schema.format.ids == "remap":
            keyed, num_features = _remap_libfm(accepted, out_dir, options, tasks, cached, carry)
        else:
            num_features = schema.format.num_features or _dense_id_space(accepted, int(totals["max_id"]))
            keyed = encode.explicit_instances(accepted, [parse.LABEL, parse.LIBFM_IDS, parse.LIBFM_VALS, *carry],
                                              tasks)
            _write_empty_vocabulary(spark, out_dir)
        layouts = [FieldLayout(name=LIBFM_FIELD, kind="multi_categorical", offset=0, size=num_features,
                               slot=0, width=width)]
        table = encode.assemble_libfm(encode.assign_splits(keyed, schema.split, schema.seed, given=given), width)
        extra["source_format"] = "libfm"
        extra["libfm_ids"] = schema.format.ids
    else:
        table, layouts, more = _encode(spark, schema, accepted, out_dir, options, tasks,
                                       window_partitions(spark, n_accepted, options), cached, given)
        extra.update(more)
    if given:
        extra["split_files"] = {s: list(paths) for s, paths in plan_.splits.items()}
        extra["split_basis"] = ("the given files" + ("" if "validation" in given else
                                "; validation drawn from the train files in the schema's train : validation ratio"))

    _stage(f"write splits (about {n_expected} instances, {tasks} row groups per split)")
    # Explicit targets, and implicit ones without negatives, come partitioned by text already (one
    # partition per output file). A history's join by a shuffle on the owner undoes that; a
    # broadcast one keeps it.
    shuffled = "shuffle" in extra.get("history_join", {}).values()
    written = write_splits(table, out_dir, tasks,
                           repartition=(schema.target.kind == "implicit" and per_positive > 0) or shuffled)
    counts: dict = {"input": n_input, "rejected": n_rejected, "accepted": n_accepted,
                    "blank_lines": summary.blank, "continuation_lines": summary.continued}
    if summary.truncated:
        counts["truncated"] = summary.truncated
    if "history_counts" in extra:
        counts["history"] = extra.pop("history_counts")()
        for name, per_split in counts["history"].items():
            log.info("history %s: rows with an empty bag %s, rows cut by the cap %s", name,
                     {s: c["rows_empty"] for s, c in per_split.items()}, {s: c["rows_capped"] for s, c in per_split.items()})
    if tables:
        counts["tables"] = {t.name: {"rows": t.rows, "rejected": t.rejected_count, "duplicate_keys": t.duplicate_keys}
                            for t in tables}
    counts.update(written)
    for s in SPLITS:
        log.info("%s: %d rows (%d positive, %d negative)", s, counts[s]["rows"], counts[s]["positive"],
                 counts[s]["negative"])
    if schema.target.kind == "implicit" and schema.target.negatives:
        extra["negatives_unavailable"] = check_negatives(counts, schema.target.negatives)
        target = {"kind": "implicit", "min": encode.NEGATIVE, "max": encode.POSITIVE}
    else:
        target = {"kind": "explicit", "min": float(totals["label_min"]), "max": float(totals["label_max"])}
    for df in cached:
        df.unpersist()
    extra["rows_per_group"] = options.rows_per_group
    extra["elapsed_s"] = round(time.monotonic() - started, 1)
    return DatasetMetadata(
        schema=schema.to_dict(), schema_hash=schema.hash(), fields=layouts,
        num_features=sum(lay.size for lay in layouts), num_slots=sum(lay.width for lay in layouts),
        target=target, counts=counts, seed=schema.seed, inputs=plan_.inputs(), extra=extra,
        format_version=BAG_COLUMNS_VERSION if any(lay.kind == "history" for lay in layouts) else 1,
    )


def check_negatives(counts: dict, negatives) -> int:
    """Negatives requested but not drawn (a positive whose context has seen every value of the
    replaced field within ``max_tries`` draws gets fewer); a warning naming the field when some
    are. Counted over the whole data set: a negative is split at random like any instance, so a
    split's negatives are not its own positives'.

    ``counts``: the splits' rows, positives and negatives (``write_splits``); ``negatives``: the
    schema's ``target.negatives``. Returns the number not drawn.

    Raises:
        DatasetError: the train split has positives and not one negative: a model trained on it
            would see one class only.
    """
    requested = sum(counts[s]["positive"] for s in SPLITS) * negatives.per_positive
    short = requested - sum(counts[s]["negative"] for s in SPLITS)
    why = (f"the contexts have seen (nearly) every value of field {negatives.replace!r}, so {negatives.max_tries} "
           f"draws (target.negatives.max_tries) found no unseen one")
    if counts[TRAIN]["positive"] and not counts[TRAIN]["negative"]:
        raise DatasetError(f"{requested - short} of {requested} negatives could be sampled, none for the train split: "
                           f"{why}; an implicit data set needs negatives: use logs with more values of "
                           f"{negatives.replace!r}, replace another field, or an explicit target")
    if short:
        log.warning("%d of %d negatives could not be sampled: %s; raise max_tries or expect fewer negatives than "
                    "target.negatives.per_positive", short, requested, why)
    return short


def _dense_id_space(accepted: DataFrame, max_id: int) -> int:
    """The libFM id space kept as it is, largest id + 1, after refusing one that is mostly unused
    (above ``SPARSE_IDS`` ids, the distinct ids are counted first).

    Raises:
        DatasetError: with the table size it would make and what to do.
    """
    size = max_id + 1
    if size <= SPARSE_IDS:
        return size
    _stage(f"count the distinct libFM ids (largest id {max_id})")
    used = encode.libfm_id_counts(accepted).count()
    if size <= SPARSE_RATIO * used:
        return size
    gb = size * 257 * 4 / 1e9
    raise DatasetError(
        f"libfm: the largest feature id is {max_id:,}, so the feature tables would have {size:,} rows "
        f"({gb:,.1f} GB of float32 weights at --embedding-dim 256, {size * 4 / 1e9:,.2f} GB per dimension), "
        f"but only {used:,} distinct ids occur; set format.ids: remap in the schema to number the ids used "
        f"0..{used - 1:,}, or format.num_features: {size} to accept the table")


def _remap_libfm(accepted: DataFrame, out_dir: Path, options: Options, tasks: int,
                 cached: list[DataFrame], carry: list[str]) -> tuple[DataFrame, int]:
    """Number the libFM ids used 0, 1, ... (written as the vocabulary of field ``features``, the
    value being the file's id) and return the instances with those ids, and their number."""
    _stage("number the libFM ids used (format.ids: remap)")
    mapping = encode.libfm_mapping(encode.libfm_id_counts(accepted)).cache()
    cached.append(mapping)
    size = mapping.count()
    (mapping.select(F.lit(LIBFM_FIELD).alias("field"), F.col("_v").cast("string").alias("value"),
                    F.col("_id").alias("id"), F.col("count").cast("bigint").alias("count"))
     .repartition(1).sortWithinPartitions("id").write.parquet(str(out_dir / VOCABULARY)))
    log.info("libfm: %d distinct ids, numbered 0..%d", size, size - 1)
    keyed = encode.remapped_libfm_instances(accepted, mapping, tasks, broadcast=size <= options.broadcast_limit,
                                            carry=carry)
    return keyed, size


def _encode(spark: SparkSession, schema: Schema, accepted: DataFrame, out_dir: Path, options: Options,
            tasks: int, window: int, cached: list[DataFrame], given: tuple[str, ...]
            ) -> tuple[DataFrame, list[FieldLayout], dict]:
    """Vocabulary (written), then the instances table: row_id, ids, vals, mask, label, split
    (``tasks`` partitions; ``window``: of negative sampling's window, ``window_partitions``).
    Small cached tables (vocabulary, lists) are appended to ``cached`` for the caller to drop;
    ``given``: the splits that came as files (their rows carry ``encode.GIVEN_SPLIT``)."""
    fields = list(schema.fields)
    more: dict = {}
    sizes: dict[str, int] = {}
    vocabulary, lists = None, {}
    if any(f.indexed for f in fields):
        _stage("count values and build the vocabulary")
        counts = encode.value_counts(accepted.select(*[f.name for f in fields if f.indexed]), fields).cache()
        vocabulary = encode.index_vocabulary(counts, fields).cache()
        sizes = {r["field"]: int(r["count"]) for r in vocabulary.groupBy("field").count().collect()}
        layouts = encode.field_layouts(fields, sizes)
        (encode.vocabulary_table(vocabulary, encode.rare_counts(counts, fields), fields, layouts)
         .repartition(1).sortWithinPartitions("id").write.parquet(str(out_dir / VOCABULARY)))
        multi = [f for f in fields if f.indexed and f.kind == "multi_categorical"]
        if multi:
            names = [f.name + encode.LISTS for f in multi]
            sizes.update({r["field"]: int(r["count"]) for r in
                          counts.filter(F.col("field").isin(names)).groupBy("field").count().collect()})
            lists = {f.name: encode.encoded_lists(counts, vocabulary, f).cache() for f in multi}
        cached += [counts, vocabulary, *lists.values()]
    else:
        layouts = encode.field_layouts(fields, sizes)
        _write_empty_vocabulary(spark, out_dir)
    for lay in layouts:
        log.info("field %s: %s, %d ids from %d, %d slot(s)", lay.name, lay.kind, lay.size, lay.offset, lay.width)

    read = list(schema.source_fields)  # the fields of the records; derived ones are built after the split
    encoded = encode.encode_fields(accepted, read, vocabulary, sizes, broadcast_limit=options.broadcast_limit,
                                   lists=lists)
    names = [f.name for f in read]
    neg = schema.target.negatives
    carry = [encode.GIVEN_SPLIT] if given else []
    carry += [parse.ORDER_PREFIX + f.name for f in schema.history_fields if f.order_by]  # the history's times
    if schema.target.kind == "implicit" and neg.per_positive > 0:
        replaced = schema.field(neg.replace)
        size = next(lay.size for lay in layouts if lay.name == replaced.name)
        instances = encode.implicit_instances(encoded, read, replaced, size, per_positive=neg.per_positive,
                                              max_tries=neg.max_tries, seed=schema.seed, partitions=window,
                                              carry=carry)
    elif schema.target.kind == "implicit":
        instances = encode.with_label(encode.explicit_instances(encoded, names + carry, tasks), encode.POSITIVE)
    else:
        instances = encode.explicit_instances(encoded, names + [parse.LABEL] + carry, tasks)
    instances = encode.assign_splits(instances, schema.split, schema.seed, given=given)
    if any(f.kind == "numeric" and f.standardize for f in fields):
        _stage("numeric statistics on the training split")
        stats = encode.train_statistics(instances, fields)
        instances = encode.standardize(instances, stats)
        more["numeric_statistics"] = stats
    if schema.history_fields:
        # counted by the splits' write (the function is called after it)
        instances, more["history_join"] = _add_histories(schema, instances, out_dir, cached, options)
        instances, more["history_counts"] = history.observe_counts(instances, schema.history_fields)
        more["history_bags"] = {"directory": HISTORY, "basis": "training split; one row per owner with a bag: "
                                "owner (local id), field, bag (item local ids, capped, in the cap's order)"}
    return encode.assemble(instances, fields, layouts, bags_apart=True), layouts, more


def _add_histories(schema: Schema, instances: DataFrame, out_dir: Path, cached: list[DataFrame],
                   options: Options) -> tuple[DataFrame, dict[str, str]]:
    """The history fields' bags, from the training split's rows (afm_dist/spark/history.py), and
    ``history/``: each owner's bag once (``history.bag_table``), for scoring raw logs later.
    The instances and each field's owner bags are persisted first: the bags' table, the join and
    the counts all read them. Returns the instances with the bags, and how each field's bags were
    joined to them: "broadcast" or "shuffle" (``options.history_broadcast_ids``)."""
    _stage(f"history bags of {', '.join(f.name for f in schema.history_fields)} from the training split")
    instances = instances.persist(StorageLevel.MEMORY_AND_DISK)
    cached.append(instances)
    by_name = {f.name: f for f in schema.fields}
    positives_only = schema.target.kind == "implicit"
    bags = {h.name: history.owner_bags(instances, h, by_name[h.of], seed=schema.seed, positives_only=positives_only)
            .persist(StorageLevel.MEMORY_AND_DISK) for h in schema.history_fields}
    cached += bags.values()
    tables = [history.bag_table(bags[h.name], h) for h in schema.history_fields]
    union = tables[0]
    for t in tables[1:]:
        union = union.unionByName(t)
    union.sortWithinPartitions(HISTORY_FIELD, HISTORY_OWNER).write.parquet(str(out_dir / HISTORY))
    join = {h.name: "broadcast" if history.broadcasts(bags[h.name].count(), h, options.history_broadcast_ids)
            else "shuffle" for h in schema.history_fields}  # the counts: from the persisted bags
    log.info("history bags joined to the rows by: %s", join)
    return history.add_histories(instances, schema.history_fields, by_name, seed=schema.seed,
                                 positives_only=positives_only, bags=bags,
                                 broadcast=[n for n, how in join.items() if how == "broadcast"]), join


def _write_empty_vocabulary(spark: SparkSession, out_dir: Path) -> None:
    spark.createDataFrame([], "field string, value string, id int, count bigint").write.parquet(
        str(out_dir / VOCABULARY))


def write_splits(table: DataFrame, out_dir: Path, tasks: int, *, repartition: bool = True) -> dict[str, dict[str, int]]:
    """Write ``table`` (with a ``split`` column) as ``out_dir/{train,validation,test}`` in one
    pass: each of ``tasks`` partitions writes one file, one row group, per split. Returns the
    rows, positives (label > 0), negatives and the sum of the labels (``label_sum``, float) of
    each split, counted by the write itself
    (``DataFrame.observe``: metrics of the rows the write's successful tasks wrote).

    ``repartition``: hash-partition by row id first, rows sorted by row id within a file;
    otherwise the table comes partitioned and in a deterministic order (explicit targets, and
    implicit ones without negatives: by the hash of the text). The three files of a task are
    written side by side, so the rows are not sorted by split first. A split with no row gets an
    empty file with the schema.
    """
    tmp = out_dir / "_splits"
    if repartition:
        # A radix sort on the row id: the files' content does not depend on shuffle order.
        table = table.repartition(tasks, encode.ROW_ID).sortWithinPartitions(encode.ROW_ID)
    spark = table.sparkSession
    observed = Observation("splits")
    is_split = {s: F.col(encode.SPLIT) == s for s in SPLITS}
    table = table.observe(observed, *[F.sum(is_split[s].cast("long")).alias(f"{s}_rows") for s in SPLITS],
                          *[F.sum((is_split[s] & (F.col(OUT_LABEL) > 0)).cast("long")).alias(f"{s}_positive")
                            for s in SPLITS],
                          *[F.sum(F.when(is_split[s], F.col(OUT_LABEL).cast("double"))).alias(f"{s}_label_sum")
                            for s in SPLITS])
    key = "spark.sql.maxConcurrentOutputFileWriters"
    previous = spark.conf.get(key, None)
    spark.conf.set(key, str(len(SPLITS)))
    try:
        table.write.partitionBy(encode.SPLIT).parquet(str(tmp))
    finally:
        if previous is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, previous)
    for s in SPLITS:
        src = tmp / f"{encode.SPLIT}={s}"
        if src.exists():
            os.replace(src, out_dir / s)
        else:
            spark.createDataFrame([], table.drop(encode.SPLIT).schema).write.parquet(str(out_dir / s))
    shutil.rmtree(tmp)
    metrics = observed.get
    out = {}
    for s in SPLITS:
        rows, positive = int(metrics[f"{s}_rows"] or 0), int(metrics[f"{s}_positive"] or 0)
        out[s] = {"rows": rows, "positive": positive, "negative": rows - positive,
                  "label_sum": float(metrics[f"{s}_label_sum"] or 0.0)}
    return out
