"""Raw input records: one path for preprocessing and for scoring raw logs.

``read_records`` reads the files of an input plan (afm_dist/inputs.py) in any format, joins the
side tables and parses every field (afm_dist/spark/parse.py); ``summarize_input`` counts rows,
headers and malformed rows in one pass (and keeps what line numbers need); ``check_rejected``
refuses an input with too many malformed rows, showing examples with file and line;
``write_rejected`` writes them all (source, line, raw text, reason). Rows are accepted or
rejected by ``accepted_row`` / ``rejected_row``: a line that is not an input row (a header, a
blank line, a later line of a record whose quoted value holds line breaks) is neither.

A quoted value may hold line breaks (csv and tsv with a quote character): the lines of such a
record are joined into one (``afm_dist.spark.readers.join_quoted_lines``). Finding them takes a
pass over the lines, so ``read_records`` makes it only when asked or when the input may hold
them: preprocessing reads without joining, and reads again with joining only when the one-pass
``summarize_input`` found a row with an odd number of quotes (``InputSummary.odd_quotes``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import Window
from pyspark.sql import functions as F

from afm_dist.dataset import REJECTED_COLUMNS, DatasetError
from afm_dist.inputs import InputError, InputFiles, Plan
from afm_dist.schema import InputFormat, Schema, SideTable
from afm_dist.spark import parse, readers

log = logging.getLogger(__name__)


class RejectedRowsError(DatasetError):
    """More malformed rows than the job accepts (or no usable row); the message shows examples."""


def read_records(spark: SparkSession, plan: Plan, *, quoted_line_breaks: bool | None = None) -> DataFrame:
    """Every input line with its source, ``_skip``, typed field values and ``_reason``.

    ``quoted_line_breaks``: whether to join the lines of the logs' records whose quoted values
    hold line breaks: True joins them, False reads one record per line, None (default) joins
    them when a pass over the logs finds a line with an odd number of quotes. Side tables (small)
    are always checked with such a pass. Only csv and tsv with a quote character have them.
    """
    schema = plan.schema
    fmt = schema.format
    if fmt.type == "libfm":
        return parse.parse_libfm(readers.read_lines(spark, plan.logs.paths), fmt)
    needed = schema.log_columns()
    lines = _read(spark, fmt, plan.logs, needed, schema, None, quoted_line_breaks)
    records = parse.split_columns(lines, fmt, plan.logs.columns, needed, plan.logs.header_lines)
    joined = [(t, parse.side_table(_table_rows(spark, plan, t), t, _table_values(plan, t))) for t in schema.tables]
    return parse.parse_fields(parse.join_tables(records, joined), schema)


def _table_rows(spark: SparkSession, plan: Plan, table: SideTable) -> DataFrame:
    """Every line of a side table's files, with ``_skip``, ``_problem`` and its columns."""
    files = plan.tables[table.name]
    cols = plan.schema.table_columns(table.name)
    t_lines = _read(spark, table.format, files, cols, plan.schema, table.name, None)
    return parse.split_columns(t_lines, table.format, files.columns, cols, files.header_lines)


def _table_values(plan: Plan, table: SideTable) -> list[str]:
    """The columns a side table adds to a log row: its columns but the key."""
    return [c for c in plan.schema.table_columns(table.name) if c != table.key]


@dataclass
class TableSummary:
    """A side table's rows, its malformed rows and the rows of keys listed again, which the join
    leaves out (``rejected``: source, line, raw, reason, both kinds)."""

    name: str
    rows: int
    rejected_count: int  # malformed rows: what --max-rejected-fraction limits
    duplicate_keys: int  # well-formed rows whose key an earlier-chosen row already has
    rejected: DataFrame


def summarize_tables(spark: SparkSession, plan: Plan) -> list[TableSummary]:
    """Count each side table's rows, malformed rows and rows of a key listed again (one pass
    over each, small); locate them by file and line for ``write_rejected``.

    Of the rows of one key the join keeps the smallest (``parse.side_table``); the others are
    kept aside with the reason ``key 'K' listed again``."""
    out = []
    for t in plan.schema.tables:
        rows = _table_rows(spark, plan, t).withColumn(parse.REASON, parse.side_table_problem(t))
        key, values = parse.side_table_key(t), parse.side_table_values(_table_values(plan, t))
        # Rank the well-formed rows of each key as side_table chooses (smallest first).
        good = F.col(parse.SKIP).isNull() & F.col(parse.REASON).isNull()
        rank = F.row_number().over(Window.partitionBy(key).orderBy(values, readers.SOURCE, readers.BLOCK, readers.POS))
        rows = (rows.withColumn("_rank", F.when(good, rank))
                .withColumn(parse.REASON, F.when(F.col("_rank") > 1, F.concat(
                    F.lit(f"table '{t.name}': key '"), key, F.lit("' listed again; the join uses one row of it")))
                    .otherwise(F.col(parse.REASON))))
        blocks = readers.line_blocks(rows, F.count(F.col(parse.SKIP)).alias("skipped"),
                                     F.sum(rejected_row().cast("long")).alias("rejected"),
                                     F.count(F.when(F.col("_rank") > 1, 1)).alias("duplicates"))
        totals = blocks.agg(*[F.sum(c).alias(c) for c in ("_n", "skipped", "rejected", "duplicates")]).first()
        rejected = _rejected_columns(rows.filter(rejected_row()), blocks)
        duplicates = int(totals["duplicates"] or 0)
        out.append(TableSummary(name=t.name, rows=int(totals["_n"] or 0) - int(totals["skipped"] or 0),
                                rejected_count=int(totals["rejected"] or 0) - duplicates, duplicate_keys=duplicates,
                                rejected=rejected))
    return out


def check_tables(tables: Sequence[TableSummary], max_fraction: float) -> None:
    """Refuse a side table with more than ``max_fraction`` of its rows malformed.

    Raises:
        RejectedRowsError: naming the table, with counts, what to do and up to five rows (file:line).
    """
    for t in tables:
        if t.rejected_count > max_fraction * t.rows:
            raise RejectedRowsError(
                f"table '{t.name}': {t.rejected_count} of {t.rows} rows ({t.rejected_count / max(t.rows, 1):.2%}) are "
                f"malformed, more than --max-rejected-fraction {max_fraction:g}; fix the table or the schema's "
                f"columns for it, or raise the limit." + _examples(t.rejected.orderBy("source", "line")))


def _read(spark: SparkSession, fmt: InputFormat, files: InputFiles, columns: Sequence[str], schema: Schema,
          table: str | None, quoted_line_breaks: bool | None) -> DataFrame:
    if fmt.type == "parquet":
        seps = {f.column: f.delimiter for f in schema.fields if f.kind == "multi_categorical" and f.table == table}
        try:
            return readers.read_parquet_rows(spark, files.paths, columns, seps)
        except ValueError as e:
            raise InputError(f"{'table ' + repr(table) if table else 'input'}: {e}") from e
    lines = readers.read_lines(spark, files.paths)
    if not (fmt.delimited and fmt.quote) or quoted_line_breaks is False:
        return lines
    if quoted_line_breaks or readers.has_odd_quote_lines(lines, fmt.quote):
        return readers.join_quoted_lines(lines, fmt.quote, fmt.delimiter)
    return lines


def kept(records: DataFrame) -> DataFrame:
    """``records`` as a job keeps them (cached) for its passes: the raw columns, whose values the
    fields hold (``parse.parse_fields``), dropped. What the job computes from them is the same."""
    dropped = {parse.COLS, parse.PROBLEM, *[c for c in records.columns if c.startswith(parse.TABLE_PREFIX)]}
    return records.select(*[c for c in records.columns if c not in dropped])


def accepted_row() -> Column:
    """An input row (not a header, blank or continued line) with no reason to reject it."""
    return F.col(parse.SKIP).isNull() & F.col(parse.REASON).isNull()


def rejected_row() -> Column:
    """An input row (not a header, blank or continued line) with a reason to reject it."""
    return F.col(parse.SKIP).isNull() & F.col(parse.REASON).isNotNull()


@dataclass
class InputSummary:
    """Totals of one pass over the records, and the (cached) line blocks for line numbers.

    ``totals`` has the label range (``label_min``, ``label_max``) of an explicit target's
    accepted rows, and for libFM input the widest row (``width``) and largest id (``max_id``).
    ``truncated``: for each multi-valued field, its accepted rows that had more distinct values
    than its ``max_values`` (``rows``), the values cut (``values``), the most distinct values of a
    row (``widest``) and the field's ``max_values``.
    """

    blocks: DataFrame
    rows: int  # input rows: lines that are not headers, blank or continued lines
    rejected: int
    totals: dict[str, Any]
    truncated: dict[str, dict[str, int]] = field(default_factory=dict)  # see ``summarize_input``
    blank: int = 0  # blank lines (not rows)
    continued: int = 0  # lines joined into the record of an earlier line (not rows)
    odd_quotes: int = 0  # rows with an odd number of quotes: records may hold quoted line breaks

    @property
    def accepted(self) -> int:
        return self.rows - self.rejected


def summarize_input(records: DataFrame, schema: Schema) -> InputSummary:
    """One pass over the records: rows, headers, rejected rows, and the per-format extras of
    ``InputSummary.totals``; the line blocks stay cached (``unpersist`` them when done)."""
    skip = F.col(parse.SKIP)
    extras = [F.count(skip).alias("skipped"), F.count(F.when(skip == parse.BLANK, 1)).alias("blank"),
              F.count(F.when(skip == parse.CONTINUATION, 1)).alias("continued"),
              F.sum(rejected_row().cast("long")).alias("rejected")]
    fmt = schema.format
    if fmt.delimited and fmt.quote:
        extras.append(F.count(F.when(skip.isNull() & readers.odd_quotes(F.col(readers.TEXT), fmt.quote), 1))
                      .alias("odd_quotes"))
    if schema.format.type == "libfm":
        extras += [F.max(F.when(accepted_row(), F.size(parse.LIBFM_IDS))).alias("width"),
                   F.max(F.when(accepted_row(), F.array_max(parse.LIBFM_IDS))).alias("max_id")]
    if schema.target.kind == "explicit":
        extras += [F.min(F.when(accepted_row(), F.col(parse.LABEL))).alias("label_min"),
                   F.max(F.when(accepted_row(), F.col(parse.LABEL))).alias("label_max")]
    multi = [f for f in schema.fields if f.kind == "multi_categorical"]
    for i, f in enumerate(multi):
        width = F.when(accepted_row(), F.col(parse.WIDTH_PREFIX + f.name))
        extras += [F.count(F.when(width > f.max_values, 1)).alias(f"_cut_rows_{i}"),
                   F.sum(F.when(width > f.max_values, width - f.max_values)).alias(f"_cut_values_{i}"),
                   F.max(width).alias(f"_widest_{i}")]
    blocks = readers.line_blocks(records, *extras).cache()
    counted = ("_n", "skipped", "blank", "continued", "rejected", "odd_quotes",
               *(f"_cut_{what}_{i}" for i in range(len(multi)) for what in ("rows", "values")))
    totals = blocks.agg(*[F.sum(c).alias(c) for c in counted if c in blocks.columns],
                        *[(F.min if c.endswith("min") else F.max)(c).alias(c)
                          for c in ("width", "max_id", "label_min", "label_max", *(f"_widest_{i}" for i in range(len(multi))))
                          if c in blocks.columns]).first()
    totals = totals.asDict()
    n = {c: int(totals.get(c) or 0) for c in counted}
    truncated = {f.name: {"rows": n[f"_cut_rows_{i}"], "values": n[f"_cut_values_{i}"],
                          "widest": int(totals.get(f"_widest_{i}") or 0), "max_values": f.max_values}
                 for i, f in enumerate(multi)}
    return InputSummary(blocks=blocks, rows=n["_n"] - n["skipped"], rejected=n["rejected"], totals=totals,
                        truncated=truncated, blank=n["blank"], continued=n["continued"], odd_quotes=n["odd_quotes"])


def log_truncated(summary: InputSummary, what: str) -> None:
    """A warning for each multi-valued field whose lists were cut at ``max_values`` (``what``:
    the input, as the log names it)."""
    for name, t in summary.truncated.items():
        if t["rows"]:
            log.warning("%s: field '%s': %d row(s) had more than max_values %d distinct values (at most %d): %d "
                        "value(s) past the first %d were dropped; raise max_values in the schema to keep them",
                        what, name, t["rows"], t["max_values"], t["widest"], t["values"], t["max_values"])


def check_rejected(records: DataFrame, summary: InputSummary, max_fraction: float, *, require_rows: bool) -> None:
    """Refuse the input when more than ``max_fraction`` of its rows are malformed or, with
    ``require_rows``, when no row is usable.

    Raises:
        RejectedRowsError: with counts, what to do, and up to five rejected rows (file:line).
    """
    rejected = records.filter(rejected_row())
    if require_rows and summary.accepted == 0:
        raise RejectedRowsError(f"no usable input row ({summary.rows} rows, {summary.rejected} malformed)"
                                + _examples(_rejected_columns(rejected.limit(5), summary.blocks)))
    if summary.rejected > max_fraction * summary.rows:
        raise RejectedRowsError(
            f"{summary.rejected} of {summary.rows} input rows ({summary.rejected / summary.rows:.2%}) are malformed, "
            f"more than --max-rejected-fraction {max_fraction:g}; fix the input or the schema, or raise "
            f"the limit." + _examples(_rejected_columns(rejected.limit(5), summary.blocks)))


def write_rejected(spark: SparkSession, records: DataFrame, summary: InputSummary, path: Path,
                   tables: Sequence[TableSummary] = ()) -> None:
    """Write the malformed rows (``source, line, raw, reason``: the file as a path, the 1-based
    line) of the logs and of the side ``tables`` as one Parquet file sorted by source and line;
    an empty file when there are none (without reading the input again)."""
    parts = [t.rejected for t in tables if t.rejected_count or t.duplicate_keys]
    if summary.rejected:
        parts.append(_rejected_columns(records.filter(rejected_row()), summary.blocks))
    if not parts:
        spark.createDataFrame([], REJECTED_COLUMNS).write.parquet(str(path))
        return
    union = parts[0]
    for part in parts[1:]:
        union = union.unionByName(part)
    union.repartition(1).sortWithinPartitions("source", "line").write.parquet(str(path))


def _located(rows: DataFrame, blocks: DataFrame) -> DataFrame:
    """``rows`` with their 1-based ``_line`` and ``_source`` as a plain path."""
    return (readers.with_line_numbers(rows, blocks)
            .withColumn(readers.SOURCE, readers.source_path(F.col(readers.SOURCE))))


def _rejected_columns(rows: DataFrame, blocks: DataFrame) -> DataFrame:
    """Rejected ``rows`` as ``rejected/`` holds them: ``source, line, raw, reason``."""
    return (_located(rows, blocks)
            .select(F.col(readers.SOURCE).alias("source"), F.col(readers.LINE).alias("line"),
                    F.col(readers.TEXT).alias("raw"), F.col(parse.REASON).alias("reason")))


def _examples(rejected: DataFrame, n: int = 5) -> str:
    """Up to ``n`` rows of ``rejected`` (``_rejected_columns``) as file:line: reason: text lines."""
    rows = rejected.limit(n).collect()
    if not rows:
        return ""
    shown = "\n".join(f"  {r['source']}:{r['line']}: {r['reason']}: {r['raw'][:120]!r}" for r in rows)
    return f"\nExamples:\n{shown}"
