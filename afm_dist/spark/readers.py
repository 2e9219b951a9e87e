"""Read raw input files into one row per input line (or Parquet row), keeping where it came from.

A line's number within its file is recovered without collecting anything and without depending
on how Spark splits the files: each row carries its file, the start offset of the file block
(split) that holds it and a position that increases within the block. ``line_blocks`` counts the
lines of every block, and ``with_line_numbers`` adds the lines of the file's earlier blocks.
Only rejected rows need a line number; accepted rows are identified by their content
(``afm_dist.spark.encode.with_row_ids``), so that splitting the input into more or fewer files
changes nothing.

A byte-order mark (U+FEFF) that starts a line is dropped: it starts every file written by some
tools (and every part of files concatenated from them), and is never part of a value.
``join_quoted_lines`` joins the physical lines of a record whose quoted value holds line breaks;
it is run only for input found to have a line with an odd number of quote characters.

Columns of a lines DataFrame:

    _source  string  the file, as Spark names it (a URI: ``source_path`` makes it a path)
    _block   bigint  start offset of the file block the row was read from (0 for Parquet)
    _pos     bigint  increasing within a block (for Parquet: the row's index in its file)
    _text    string  the line (for Parquet: the row as JSON)
    _cont    boolean (``join_quoted_lines`` only) the line continues the record of an earlier line,
                     whose ``_text`` holds the whole record
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping, Sequence

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from afm_dist.inputs import BLANK_CHARS, BOM
from afm_dist.io import GLOB_CHARS

SOURCE, BLOCK, POS, TEXT, LINE, CONT = "_source", "_block", "_pos", "_text", "_line", "_cont"
# The most physical lines one record may span (a quoted value holding line breaks): an unclosed
# quote cannot take in the rest of a file, and the lines of one record stay few.
MAX_RECORD_LINES = 100
_GLOB_PATTERN = re.compile(f"([{re.escape(GLOB_CHARS)}])")


def spark_path(path: str | Path) -> str:
    """A path to hand Spark's readers, which expand glob patterns: the glob characters of the name
    escaped, so that a file named ``logs[1].tsv`` is read as itself (bugcases2 case 03)."""
    return _GLOB_PATTERN.sub(r"\\\1", str(path))


def _source_column() -> Column:
    return F.col("_metadata.file_path")


def source_path(source: Column) -> Column:
    """A ``_source`` URI (file:/path) as a plain path, for people to read."""
    return F.regexp_replace(source, r"^file:(//)?", "")


def given_split(spark: SparkSession, splits: Mapping[str, Sequence[str]]) -> Column:
    """The split of each row's file, from ``splits`` (split name -> local paths, as
    ``afm_dist.inputs.Plan.splits``): the paths are written as Spark writes ``_source`` (a URI,
    by Hadoop's Path), so that names with spaces or percent signs match."""
    to_uri = spark.sparkContext._jvm.org.apache.hadoop.fs.Path
    pairs = [F.lit(x) for name, paths in splits.items() for p in paths for x in (to_uri(p).toUri().toString(), name)]
    return F.element_at(F.create_map(*pairs), source_path(F.col(SOURCE)))


def read_lines(spark: SparkSession, paths: Sequence[str]) -> DataFrame:
    """One row per line of the text files ``paths`` (\\n, \\r\\n and \\r all end a line), without
    a byte-order mark at its start."""
    value = F.col("value")
    return spark.read.text([spark_path(p) for p in paths]).select(
        _source_column().alias(SOURCE),
        F.col("_metadata.file_block_start").alias(BLOCK),
        # Evaluated on the scan, before any shuffle: rows of one block are consecutive.
        F.monotonically_increasing_id().alias(POS),
        F.when(value.startswith(BOM), F.expr("substring(value, 2)")).otherwise(value).alias(TEXT),
    )


def blank(text: Column) -> Column:
    """The line is empty or holds only white space (a line of ``BLANK_CHARS``)."""
    return F.btrim(text, F.lit(BLANK_CHARS)) == ""


def read_parquet_rows(spark: SparkSession, paths: Sequence[str], columns: Sequence[str],
                      list_separators: dict[str, str] | None = None) -> DataFrame:
    """One row per Parquet row: the lines columns (``_text`` is the row as JSON, which identifies
    it) and ``_cols``, a struct of ``columns`` as strings. A list column is joined with its
    ``list_separators`` entry (the delimiter of the multi-valued field that reads it)."""
    df = spark.read.parquet(*map(spark_path, paths))
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


# ---------------------------------------------------------------------------------------------
# Quoted values holding line breaks


def odd_quotes(text: Column, quote: str) -> Column:
    """The line holds an odd number of ``quote`` characters: a quoted value opens or closes on it
    and goes on over a line break (or the quote is unbalanced)."""
    return (F.length(text) - F.length(F.translate(text, quote, ""))) % 2 == 1


def has_odd_quote_lines(lines: DataFrame, quote: str) -> bool:
    """Whether any line holds an odd number of ``quote`` characters (one pass over the lines)."""
    return bool(lines.select(F.max(odd_quotes(F.col(TEXT), quote).cast("int")).alias("odd")).first()["odd"])


def regex_char(c: str) -> str:
    """``c`` as a Java regex matching that one character literally."""
    return c if c.isalnum() else "\\" + c


def _inside_quotes(quote: str) -> str:
    """Java regex of the text inside a quoted value: a doubled quote is a quote in the value.
    Possessive loops, so that a long value neither backtracks nor overflows the stack."""
    q = regex_char(quote)
    return f"[^{q}]*+(?:{q}{q}[^{q}]*+)*+"


def quoted_value(quote: str) -> str:
    """Java regex of a whole quoted value, quotes included."""
    q = regex_char(quote)
    return f"{q}{_inside_quotes(quote)}{q}"


def _line_ends(quote: str, delimiter: str) -> tuple[str, str]:
    """Java regexes of a line that opens a quoted value it does not close (complete fields, then
    the open value) and of a line that closes a value opened on an earlier line (the rest of the
    value, its closing quote, then complete fields)."""
    q, d = regex_char(quote), regex_char(delimiter)
    inside = _inside_quotes(quote)
    field = f"(?:{quoted_value(quote)}|[^{q}{d}]*+)"
    return f"^(?:{field}{d})*+{q}{inside}$", f"^{inside}{q}(?:{d}{field})*+$"


def join_quoted_lines(lines: DataFrame, quote: str, delimiter: str, max_lines: int = MAX_RECORD_LINES) -> DataFrame:
    """Join the lines of every record whose quoted value holds line breaks: the record's first
    line gets the record's text (its lines joined by \\n) and every later line ``_cont`` true.

    Only lines with an odd number of quotes (``odd_quotes``) open or close such a value; they are
    few, and they alone are numbered and paired, file by file: a line that opens a value pairs
    with the next such line when that one closes it and is less than ``max_lines`` lines below.
    Where pairs overlap (a line that could close one value and open another) the first pair
    wins. An unpaired line stays a record of its own (rejected as an unbalanced quote), so a
    stray quote costs one row, not the rest of the file.

    The pairs are small and cached; every use of the result reads the input twice (once for the
    joined texts), a cost paid only by input that has such lines.
    """
    text = F.col(TEXT)
    opens, closes = _line_ends(quote, delimiter)
    blocks = line_blocks(lines).cache()
    odd = with_line_numbers(lines.filter(odd_quotes(text, quote)), blocks).select(
        SOURCE, LINE, text.rlike(opens).alias("_opens"), text.rlike(closes).alias("_closes"))
    in_file = Window.partitionBy(SOURCE).orderBy(LINE)
    k = F.row_number().over(in_file)
    end = F.lead(LINE).over(in_file)
    paired = odd.select(SOURCE, LINE, k.alias("_k"), end.alias("_end"), F.coalesce(
        F.col("_opens") & F.lead("_closes").over(in_file) & (end - F.col(LINE) < max_lines), F.lit(False)).alias("_ok"))
    # Greedy pairing: in a run of consecutive possible pairs k, k+1, ... the 1st, 3rd, ... win.
    run_start = F.max(F.when(~F.lag("_ok", 1, False).over(in_file), F.col("_k"))).over(
        in_file.rowsBetween(Window.unboundedPreceding, Window.currentRow))
    chosen = paired.select("*", run_start.alias("_run")).filter(F.col("_ok") & ((F.col("_k") - F.col("_run")) % 2 == 0))
    members = chosen.select(SOURCE, F.explode(F.sequence(F.col(LINE), F.col("_end"))).alias(LINE),
                            F.col(LINE).alias("_start")).cache()
    numbered = with_line_numbers(lines, blocks).join(members, [SOURCE, LINE], "left")
    joined = (numbered.filter(F.col("_start").isNotNull())
              .groupBy(SOURCE, "_start")
              .agg(F.sort_array(F.collect_list(F.struct(LINE, text))).alias("_parts"))
              .select(SOURCE, F.col("_start").alias(LINE),
                      F.array_join(F.col("_parts").getField(TEXT), "\n").alias("_joined")))
    return (numbered.join(joined, [SOURCE, LINE], "left")
            .select(SOURCE, BLOCK, POS, F.coalesce(F.col("_joined"), text).alias(TEXT),
                    (F.col("_start").isNotNull() & (F.col(LINE) != F.col("_start"))).alias(CONT)))
