"""Build a training data set from raw logs, as the dataset schema declares.

Two steps, so that every mistake that can be found without Spark is found before it starts:

``plan``   (no Spark) resolves the input files, reads their headers and checks them against the
           schema: a missing column fails naming the field that reads it.
``build``  runs the Spark transforms of ``afm_dist.spark`` and writes the data set's parts
           (splits, vocabulary, rejected rows) into a directory, returning its metadata. The
           caller publishes the directory and writes the completion marker
           (``jobs/preprocess.py``).

Only counts, sizes (vocabulary sizes, libFM width and id range), the explicit target's range
and numeric fields' training mean and standard deviation are collected to the driver; a failure
on too many malformed rows also brings a few examples for its message.
"""
from __future__ import annotations

import csv
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from afm_dist.dataset import LABEL as OUT_LABEL, SPLITS, DatasetMetadata, FieldLayout, strip_file_scheme
from afm_dist.schema import LIBFM_FIELD, InputFormat, Schema
from afm_dist.spark import encode, parse, readers

log = logging.getLogger(__name__)

VOCABULARY_DIR, REJECTED_DIR = "vocabulary", "rejected"


class InputError(ValueError):
    """Input files that do not match the schema, or a bad job argument; the message says which."""


class RejectedRowsError(RuntimeError):
    """More malformed rows than the job accepts; the message shows examples."""


# ---------------------------------------------------------------------------------------------
# Planning (driver only, before Spark)


@dataclass(frozen=True)
class InputFiles:
    """Resolved input files of the logs or of one side table."""

    paths: tuple[str, ...]
    columns: tuple[str, ...] | None = None  # delimited input: the columns, in order
    header_lines: tuple[str, ...] = ()  # delimited input with header: the exact header text(s)


@dataclass(frozen=True)
class Plan:
    schema: Schema
    logs: InputFiles
    tables: Mapping[str, InputFiles] = field(default_factory=dict)

    def inputs(self) -> list[str]:
        return list(self.logs.paths) + [p for t in self.tables.values() for p in t.paths]


def plan(schema: Schema, inputs: Sequence[str], tables: Mapping[str, Sequence[str]] | None = None) -> Plan:
    """Check the input files against ``schema``; ``tables`` maps side-table names to files."""
    tables = dict(tables or {})
    for name in tables:
        if name not in {t.name for t in schema.tables}:
            raise InputError(f"--table {name}=...: the schema {schema.name!r} declares no table {name!r}")
    users: dict[str, str] = {}
    for f in schema.fields:
        if f.table is None:
            users.setdefault(f.column, f"field '{f.name}'")
    if schema.target.column:
        users.setdefault(schema.target.column, "target")
    for t in schema.tables:
        users.setdefault(t.log_key, f"table '{t.name}' (join column)")
    logs = _resolve(schema.format, inputs, "--input", users)
    resolved = {}
    for t in schema.tables:
        if t.name not in tables:
            raise InputError(f"table '{t.name}': pass its file(s) with --table {t.name}=PATH")
        t_users = {t.key: f"table '{t.name}' (key)"}
        for f in schema.fields:
            if f.table == t.name:
                t_users.setdefault(f.column, f"field '{f.name}'")
        resolved[t.name] = _resolve(t.format, tables[t.name], f"--table {t.name}", t_users)
    return Plan(schema=schema, logs=logs, tables=resolved)


def _expand(paths: Sequence[str], what: str) -> tuple[str, ...]:
    files: list[str] = []
    for raw in paths:
        p = Path(strip_file_scheme(raw)).expanduser()
        if p.is_dir():
            found = sorted(str(c.resolve()) for c in p.rglob("*")
                           if c.is_file() and not any(part.startswith((".", "_")) for part in c.relative_to(p).parts))
            if not found:
                raise InputError(f"{what} {raw}: the directory holds no input file")
            files.extend(found)
        elif p.is_file():
            files.append(str(p.resolve()))
        else:
            raise InputError(f"{what} {raw}: no such file or directory")
    if not files:
        raise InputError(f"{what}: no input given")
    return tuple(dict.fromkeys(files))


def _first_line(path: str) -> str | None:
    with open(path, "rb") as f:
        line = f.readline()
    if not line:
        return None
    return line.decode("utf-8", errors="replace").rstrip("\r\n")


def _split_header(line: str, fmt: InputFormat) -> list[str]:
    line = line.lstrip("\ufeff")
    if fmt.quote is None:
        return next(csv.reader([line], delimiter=fmt.delimiter, quoting=csv.QUOTE_NONE))
    return next(csv.reader([line], delimiter=fmt.delimiter, quotechar=fmt.quote, doublequote=True))


def _resolve(fmt: InputFormat, paths: Sequence[str], what: str, users: Mapping[str, str]) -> InputFiles:
    files = _expand(paths, what)
    if not fmt.delimited:
        return InputFiles(paths=files)
    if not fmt.header:
        return InputFiles(paths=files, columns=fmt.columns)
    columns: list[str] | None = None
    lines: list[str] = []
    first_file = ""
    for path in files:
        line = _first_line(path)
        if line is None:
            continue  # an empty file: no header, no rows
        cols = [c.strip() for c in _split_header(line, fmt)]
        if columns is None:
            columns, first_file = cols, path
            for col, user in users.items():
                if col not in cols:
                    raise InputError(f"{user}: column {col!r} is not in the header of {path} "
                                     f"(columns: {', '.join(cols)})")
                if cols.count(col) > 1:
                    raise InputError(f"{user}: column {col!r} appears twice in the header of {path}")
        elif cols != columns:
            raise InputError(f"{what}: {path} has columns {cols}, but {first_file} has {columns}; "
                             "all files of one input must share the header")
        if line not in lines:
            lines.append(line)
    if columns is None:
        raise InputError(f"{what}: every file is empty, so there is no header to read")
    return InputFiles(paths=files, columns=tuple(columns), header_lines=tuple(lines))


# ---------------------------------------------------------------------------------------------
# Building (Spark)


@dataclass(frozen=True)
class Options:
    seed: int
    max_rejected_fraction: float = 0.01
    # Rows per Parquet row group of the training split: Petastorm reads a row group at a time.
    rows_per_group: int = 50_000
    # Row groups per split at least, so that each split has many more row groups than workers.
    min_row_groups: int = 32
    # Vocabularies up to this many values are broadcast for encoding (map-side join).
    broadcast_limit: int = 5_000_000


def _stage(name: str) -> float:
    log.info("stage: %s", name)
    return time.monotonic()


def read_records(spark: SparkSession, plan_: Plan) -> DataFrame:
    """Every input row with its source, ``_header``, typed field values and ``_reason``."""
    schema = plan_.schema
    fmt = schema.format
    if fmt.type == "libfm":
        return parse.parse_libfm(readers.read_lines(spark, plan_.logs.paths), fmt)
    needed = schema.log_columns()
    lines = _read(spark, fmt, plan_.logs, needed, schema, None)
    records = parse.split_columns(lines, fmt, plan_.logs.columns, needed, plan_.logs.header_lines)
    joined = []
    for t in schema.tables:
        files = plan_.tables[t.name]
        cols = schema.table_columns(t.name)
        t_lines = _read(spark, t.format, files, cols, schema, t.name)
        t_rows = parse.split_columns(t_lines, t.format, files.columns, cols, files.header_lines)
        joined.append((t, parse.side_table(t_rows, t, [c for c in cols if c != t.key])))
    return parse.parse_fields(parse.join_tables(records, joined), schema)


def _read(spark: SparkSession, fmt: InputFormat, files: InputFiles, columns: Sequence[str], schema: Schema,
          table: str | None) -> DataFrame:
    if fmt.type == "parquet":
        seps = {f.column: f.delimiter for f in schema.fields if f.kind == "multi_categorical" and f.table == table}
        try:
            return readers.read_parquet_rows(spark, files.paths, columns, seps)
        except ValueError as e:
            raise InputError(f"{'table ' + repr(table) if table else 'input'}: {e}") from e
    return readers.read_lines(spark, files.paths)


def accepted_row() -> Column:
    return ~F.col(parse.HEADER) & F.col(parse.REASON).isNull()


def rejected_row() -> Column:
    return ~F.col(parse.HEADER) & F.col(parse.REASON).isNotNull()


def summarize_input(records: DataFrame, schema: Schema) -> tuple[DataFrame, dict]:
    """One pass over the records: the (cached) line blocks for line numbers, and totals
    collected to the driver: rows (``_n``), headers, rejected rows, and the label range
    (explicit targets) or the width and largest id (libFM) of the accepted rows."""
    extras = [F.sum(F.col(parse.HEADER).cast("long")).alias("headers"),
              F.sum(rejected_row().cast("long")).alias("rejected")]
    if schema.format.type == "libfm":
        extras += [F.max(F.when(accepted_row(), F.size(parse.LIBFM_IDS))).alias("width"),
                   F.max(F.when(accepted_row(), F.array_max(parse.LIBFM_IDS))).alias("max_id")]
    if schema.target.kind == "explicit":
        extras += [F.min(F.when(accepted_row(), F.col(parse.LABEL))).alias("label_min"),
                   F.max(F.when(accepted_row(), F.col(parse.LABEL))).alias("label_max")]
    blocks = readers.line_blocks(records, *extras).cache()
    totals = blocks.agg(*[F.sum(c).alias(c) for c in ("_n", "headers", "rejected")],
                        *[(F.min if c.endswith("min") else F.max)(c).alias(c)
                          for c in ("width", "max_id", "label_min", "label_max") if c in blocks.columns]).first()
    return blocks, totals.asDict()


def build(spark: SparkSession, plan_: Plan, out_dir: Path, options: Options) -> DatasetMetadata:
    """Write ``train/ validation/ test/ vocabulary/ rejected/`` into ``out_dir`` and return the
    data set's metadata (the caller saves it and marks the directory complete)."""
    schema = plan_.schema.with_seed(options.seed)
    is_libfm = schema.format.type == "libfm"
    started = _stage(f"read and parse {len(plan_.logs.paths)} input file(s), format {schema.format.type}")
    records = read_records(spark, plan_)

    # -- counts, line numbers, fail fast on malformed rows --------------------------------------
    blocks, totals = summarize_input(records, schema)
    cached = [blocks]
    n_input = int(totals["_n"] or 0) - int(totals["headers"] or 0)
    n_rejected = int(totals["rejected"] or 0)
    n_accepted = n_input - n_rejected
    log.info("input rows: %d, rejected: %d, accepted: %d", n_input, n_rejected, n_accepted)
    rejected = records.filter(rejected_row())
    if n_input == 0 or n_accepted == 0:
        raise RejectedRowsError(f"no usable input row ({n_input} rows, {n_rejected} malformed)"
                                + _examples(rejected, blocks))
    if n_rejected > options.max_rejected_fraction * n_input:
        raise RejectedRowsError(
            f"{n_rejected} of {n_input} input rows ({n_rejected / n_input:.2%}) are malformed, more than "
            f"--max-rejected-fraction {options.max_rejected_fraction:g}; fix the input or the schema, or raise "
            f"the limit." + _examples(rejected, blocks))

    _stage("write rejected rows")
    write_rejected(spark, rejected if n_rejected else None, blocks, out_dir / REJECTED_DIR)

    accepted = records.filter(accepted_row())
    extra: dict = {"vocabulary_basis": "all accepted logs (categorical); training split (numeric statistics)",
                   "padding": {"id": 0, "val": 0.0, "mask": 0}}
    per_positive = schema.target.negatives.per_positive if schema.target.negatives else 0
    n_expected = n_accepted * (1 + per_positive)
    tasks = max(options.min_row_groups, math.ceil(n_expected * schema.split.train / options.rows_per_group))
    if is_libfm:
        width = schema.format.max_features or int(totals["width"])
        num_features = schema.format.num_features or int(totals["max_id"]) + 1
        layouts = [FieldLayout(name=LIBFM_FIELD, kind="multi_categorical", offset=0, size=num_features,
                               slot=0, width=width)]
        keyed = encode.explicit_instances(accepted, [parse.LABEL, parse.LIBFM_IDS, parse.LIBFM_VALS], tasks)
        table = encode.assemble_libfm(encode.assign_splits(keyed, schema.split, schema.seed), width)
        _write_empty_vocabulary(spark, out_dir)
        extra["source_format"] = "libfm"
    else:
        table, layouts, more = _encode(spark, schema, accepted, out_dir, options, tasks, cached)
        extra.update(more)

    _stage(f"write splits (about {n_expected} instances, {tasks} row groups per split)")
    # Explicit targets come partitioned by text already (one partition per output file).
    write_splits(table, out_dir, tasks, repartition=schema.target.kind == "implicit" and per_positive > 0)
    counts: dict = {"input": n_input, "rejected": n_rejected, "accepted": n_accepted}
    counts.update(split_counts(spark, out_dir))
    for s in SPLITS:
        log.info("%s: %d rows (%d positive, %d negative)", s, counts[s]["rows"], counts[s]["positive"],
                 counts[s]["negative"])
    if schema.target.kind == "implicit" and schema.target.negatives:
        made = sum(counts[s]["negative"] for s in SPLITS)
        extra["negatives_unavailable"] = n_accepted * schema.target.negatives.per_positive - made
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
    )


def _encode(spark: SparkSession, schema: Schema, accepted: DataFrame, out_dir: Path, options: Options,
            tasks: int, cached: list[DataFrame]) -> tuple[DataFrame, list[FieldLayout], dict]:
    """Vocabulary (written), then the instances table: row_id, ids, vals, mask, label, split.
    Small cached tables (vocabulary, lists) are appended to ``cached`` for the caller to drop."""
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
         .repartition(1).sortWithinPartitions("id").write.parquet(str(out_dir / VOCABULARY_DIR)))
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

    encoded = encode.encode_fields(accepted, fields, vocabulary, sizes, broadcast_limit=options.broadcast_limit,
                                   lists=lists)
    names = [f.name for f in fields]
    neg = schema.target.negatives
    if schema.target.kind == "implicit" and neg.per_positive > 0:
        replaced = schema.field(neg.replace)
        size = next(lay.size for lay in layouts if lay.name == replaced.name)
        instances = encode.implicit_instances(encoded, fields, replaced, size, per_positive=neg.per_positive,
                                              max_tries=neg.max_tries, seed=schema.seed, partitions=tasks)
    elif schema.target.kind == "implicit":
        instances = encode.with_label(encode.explicit_instances(encoded, names, tasks), encode.POSITIVE)
    else:
        instances = encode.explicit_instances(encoded, names + [parse.LABEL], tasks)
    instances = encode.assign_splits(instances, schema.split, schema.seed)
    if any(f.kind == "numeric" and f.standardize for f in fields):
        _stage("numeric statistics on the training split")
        stats = encode.train_statistics(instances, fields)
        instances = encode.standardize(instances, stats)
        more["numeric_statistics"] = stats
    return encode.assemble(instances, fields, layouts), layouts, more


def _write_empty_vocabulary(spark: SparkSession, out_dir: Path) -> None:
    spark.createDataFrame([], "field string, value string, id int, count bigint").write.parquet(
        str(out_dir / VOCABULARY_DIR))


REJECTED_SCHEMA = "source string, line bigint, raw string, reason string"


def write_rejected(spark: SparkSession, rejected: DataFrame | None, blocks: DataFrame, path: Path) -> None:
    """Write the malformed rows (``source, line, raw, reason``) as one Parquet file sorted by
    source and line; ``None``: there are none (skips reading the input again)."""
    if rejected is None:
        spark.createDataFrame([], REJECTED_SCHEMA).write.parquet(str(path))
        return
    (readers.with_line_numbers(rejected, blocks)
     .select(readers.source_path(F.col(readers.SOURCE)).alias("source"), F.col(readers.LINE).alias("line"),
             F.col(readers.TEXT).alias("raw"), F.col(parse.REASON).alias("reason"))
     .repartition(1).sortWithinPartitions("source", "line")
     .write.parquet(str(path)))


def _examples(rejected: DataFrame, blocks: DataFrame, n: int = 5) -> str:
    rows = (readers.with_line_numbers(rejected.limit(n), blocks)
            .select(readers.source_path(F.col(readers.SOURCE)).alias(readers.SOURCE), readers.LINE, readers.TEXT,
                    parse.REASON).collect())
    if not rows:
        return ""
    shown = "\n".join(f"  {r[readers.SOURCE]}:{r[readers.LINE]}: {r[parse.REASON]}: {r[readers.TEXT][:120]!r}"
                      for r in rows)
    return f"\nExamples:\n{shown}"


def write_splits(table: DataFrame, out_dir: Path, tasks: int, *, repartition: bool = True) -> None:
    """Write ``table`` (with a ``split`` column) as ``out_dir/{train,validation,test}`` in one
    pass: each of ``tasks`` partitions writes one file, one row group, per split.

    ``repartition``: hash-partition by row id first, rows sorted by row id within a file;
    otherwise the table comes partitioned and in a deterministic order (explicit targets: by
    the hash of the text). The three files of a task are written side by side, so the rows are
    not sorted by split first. A split with no row gets an empty file with the schema.
    """
    tmp = out_dir / "_splits"
    if repartition:
        # A radix sort on the row id: the files' content does not depend on shuffle order.
        table = table.repartition(tasks, encode.ROW_ID).sortWithinPartitions(encode.ROW_ID)
    spark = table.sparkSession
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


def split_counts(spark: SparkSession, out_dir: Path) -> dict[str, dict[str, int]]:
    """Rows, positives (label > 0) and negatives of each written split, read back from Parquet
    in one job (counted per file, then per split on the driver)."""
    paths = [str(out_dir / s) for s in SPLITS]
    per_file = (spark.read.parquet(*paths).select(F.col("_metadata.file_path").alias("path"), OUT_LABEL)
                .groupBy("path")
                .agg(F.count(F.lit(1)).alias("rows"), F.sum((F.col(OUT_LABEL) > 0).cast("long")).alias("positive"))
                .collect())
    out = {s: {"rows": 0, "positive": 0, "negative": 0} for s in SPLITS}
    for r in per_file:
        split = Path(strip_file_scheme(r["path"])).parent.name
        rows, pos = int(r["rows"]), int(r["positive"] or 0)
        out[split]["rows"] += rows
        out[split]["positive"] += pos
        out[split]["negative"] += rows - pos
    return out
