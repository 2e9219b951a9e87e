"""Read raw input files into one row per input line (or Parquet row), keeping where it came from.

A line's number within its file is recovered without collecting anything and without depending
on how Spark splits the files: each row carries its file, the start offset of the file block
(split) that holds it and a position that increases within the block. ``line_blocks`` counts the
lines of every block, and ``with_line_numbers`` adds the lines of the file's earlier blocks.
Only rejected rows need a line number; accepted rows are identified by their content
(``afm_dist.spark.encode.with_row_ids``), so that splitting the input into more or fewer files
changes nothing.

Columns of a lines DataFrame:

    _source  string  the file, as Spark names it (a URI: ``source_path`` makes it a path)
    _block   bigint  start offset of the file block the row was read from (0 for Parquet)
    _pos     bigint  increasing within a block (for Parquet: the row's index in its file)
    _text    string  the line (for Parquet: the row as JSON)
"""
from __future__ import annotations

from typing import Sequence

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

SOURCE, BLOCK, POS, TEXT, LINE = "_source", "_block", "_pos", "_text", "_line"


def _source_column() -> Column:
    return F.col("_metadata.file_path")


def source_path(source: Column) -> Column:
    """A ``_source`` URI (file:/path) as a plain path, for people to read."""
    return F.regexp_replace(source, r"^file:(//)?", "")


def read_lines(spark: SparkSession, paths: Sequence[str]) -> DataFrame:
    """One row per line of the text files ``paths`` (\\n, \\r\\n and \\r all end a line)."""
    return spark.read.text(list(paths)).select(
        _source_column().alias(SOURCE),
        F.col("_metadata.file_block_start").alias(BLOCK),
        # Evaluated on the scan, before any shuffle: rows of one block are consecutive.
        F.monotonically_increasing_id().alias(POS),
        F.col("value").alias(TEXT),
    )


def read_parquet_rows(spark: SparkSession, paths: Sequence[str], columns: Sequence[str],
                      list_separators: dict[str, str] | None = None) -> DataFrame:
    """One row per Parquet row: the lines columns (``_text`` is the row as JSON, which identifies
    it) and ``_cols``, a struct of ``columns`` as strings. A list column is joined with its
    ``list_separators`` entry (the delimiter of the multi-valued field that reads it)."""
    df = spark.read.parquet(*paths)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"column {missing[0]!r} is not in the Parquet input (columns: {', '.join(df.columns)})")
    values = []
    for c in columns:
        dtype = df.schema[c].dataType
        col = F.col(f"`{c}`")
        if isinstance(dtype, T.ArrayType):
            col = F.array_join(col.cast("array<string>"), (list_separators or {}).get(c, ","))
        values.append(col.cast("string").alias(c))
    return df.select(
        _source_column().alias(SOURCE),
        F.lit(0).cast("bigint").alias(BLOCK),
        F.col("_metadata.row_index").alias(POS),
        F.to_json(F.struct(*[F.col(f"`{c}`") for c in columns])).alias(TEXT),
        F.struct(*values).alias("_cols"),
    )


def line_blocks(lines: DataFrame, *extra_aggregates: Column) -> DataFrame:
    """Per file block: ``_first_pos``, ``_n`` (rows) and ``_lines_before`` (rows of the file's
    earlier blocks), plus ``extra_aggregates``. Small: one row per block."""
    blocks = lines.groupBy(SOURCE, BLOCK).agg(
        F.min(POS).alias("_first_pos"), F.count(F.lit(1)).alias("_n"), *extra_aggregates
    )
    earlier = Window.partitionBy(SOURCE).orderBy(BLOCK).rowsBetween(Window.unboundedPreceding, -1)
    return blocks.withColumn("_lines_before", F.coalesce(F.sum("_n").over(earlier), F.lit(0)).cast("bigint"))


def with_line_numbers(rows: DataFrame, blocks: DataFrame) -> DataFrame:
    """Add ``_line``, the 1-based line (or Parquet row) number of each row within its file."""
    b = blocks.select(SOURCE, BLOCK, "_first_pos", "_lines_before")
    return rows.join(F.broadcast(b), [SOURCE, BLOCK], "left").withColumn(
        LINE, F.col("_lines_before") + F.col(POS) - F.col("_first_pos") + 1
    ).drop("_first_pos", "_lines_before")
