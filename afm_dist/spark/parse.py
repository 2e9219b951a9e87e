"""Raw rows -> typed field values, and the reason of every malformed row.

All functions are pure ``DataFrame -> DataFrame`` transforms of the lines DataFrame of
``afm_dist.spark.readers``. After ``parse_fields`` a row has one column per schema field, named
after it:

    categorical        string           the trimmed value (null when missing)
    multi_categorical  array<string>    distinct non-empty values, in input order, at most
                                        max_values (null when there is none); and
                                        ``_width_NAME`` (int), their number before that cut
    numeric            double           the value after the field's transform (log, log1p)

plus ``_label`` (double, explicit targets) and ``_reason`` (string; null for a good row).
A row is malformed when its column count is wrong, a quote is unbalanced, a JSON line is not
an object, a numeric field (after its transform) or the label is not a number float32 can hold,
a required value is empty, a required side-table field finds no row for its key, or a libFM line
is not ``label id:value ...`` or names an id twice. The reason names the field and shows the
offending value.

A line that is not an input row has ``_skip`` set (null for a row): ``header`` (the exact text
of the files' header), ``blank`` (empty or only white space, in every format) or
``continuation`` (a later line of a record whose quoted value holds line breaks, joined into
the record's first line by ``afm_dist.spark.readers.join_quoted_lines``).
"""
from __future__ import annotations

from typing import Sequence

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from afm_dist.schema import Field, InputFormat, Schema, SideTable
from afm_dist.spark.readers import CONT, MAX_RECORD_LINES, TEXT, blank, quoted_value, regex_char

SKIP, COLS, REASON, LABEL, PROBLEM = "_skip", "_cols", "_reason", "_label", "_problem"
HEADER, BLANK, CONTINUATION = "header", "blank", "continuation"  # the values of ``_skip``
LIBFM_IDS, LIBFM_VALS = "_fids", "_fvals"
ORDER_PREFIX = "_order_"  # + a history field's name: its order_by column as a number
WIDTH_PREFIX = "_width_"  # + a multi-valued field's name: its distinct values before the cut at max_values

# A decimal number as text: what a numeric field or a label may hold (no NaN, no Infinity).
_NUMBER = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_SHOWN = 60  # characters of an offending value quoted in a reason
# The largest magnitude a float32 holds: data sets store values and labels as float32.
FLOAT32_MAX = 3.4028234663852886e38
BEYOND_FLOAT32 = "beyond the float32 range (+-3.4e38) of the data set"
UNBALANCED_QUOTE = (f"unbalanced quote: a quoted value is not closed within {MAX_RECORD_LINES} lines, or is "
                    "closed without being opened (a quote inside a quoted value is written twice)")


def _shown(value: Column) -> Column:
    return F.substring(value, 1, _SHOWN)


TABLE_PREFIX = "_t_"  # + a side table's name: the struct of its values joined to a log row


def _table_column(name: str) -> str:
    return TABLE_PREFIX + name


def skip_line(lines: DataFrame, header_lines: Sequence[str] = ()) -> Column:
    """Why a line is not an input row (``_skip``), or null: see the module's docstring."""
    text = F.col(TEXT)
    skip = F.when(blank(text), F.lit(BLANK))
    if header_lines:
        skip = skip.when(text.isin(list(header_lines)), F.lit(HEADER))
    if CONT in lines.columns:
        skip = F.when(F.col(CONT), F.lit(CONTINUATION)).otherwise(skip)
    return skip


def split_columns(lines: DataFrame, fmt: InputFormat, columns: Sequence[str] | None,
                  needed: Sequence[str], header_lines: Sequence[str] = ()) -> DataFrame:
    """Add ``_skip`` (why the line is not an input row, or null), ``_problem`` (a structural
    problem, or null) and ``_cols``, a struct with the ``needed`` columns as strings.

    ``columns`` are the delimited file's columns in order; ``header_lines`` the exact text of
    the files' header (without byte-order mark): a line equal to it is a header, wherever it is
    (files concatenated with their headers are common), and is not an input row. Parquet rows
    already have ``_cols``.
    """
    text = F.col(TEXT)
    if fmt.type == "parquet":
        return lines.withColumn(SKIP, F.lit(None).cast("string")).withColumn(PROBLEM, F.lit(None).cast("string"))
    skip = skip_line(lines, header_lines)
    if fmt.type == "json":
        ddl = T.StructType([T.StructField(c, T.StringType()) for c in needed]
                           + [T.StructField("_corrupt", T.StringType())])
        # A blank line (not a row) parses as an empty object: from_json gives null for it, which
        # the struct below would dereference.
        parsed = F.from_json(F.when(blank(text), F.lit("{}")).otherwise(text), ddl,
                             {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": "_corrupt"})
        problem = F.when(parsed.getField("_corrupt").isNotNull(), F.lit("not a JSON object"))
        cols = F.struct(*[parsed.getField(c).alias(c) for c in needed])
    elif fmt.delimited:
        assert columns is not None
        index = {c: i for i, c in enumerate(columns)}
        delim = regex_char(fmt.delimiter)
        # Intermediate columns are their own projection, so that Spark computes them once.
        if fmt.quote is None:
            lines = lines.withColumn("_parts", F.split(text, delim, -1))
            parts = F.col("_parts")
            count = F.size(parts)
            cols = F.struct(*[parts.getItem(index[c]).alias(c) for c in needed])
            unbalanced = F.lit(False)
        else:
            ddl = ", ".join(f"`_c{i}` STRING" for i in range(len(columns)))
            lines = lines.select(
                "*",
                # Quoted values (a doubled quote inside one is a quote) hide their delimiters.
                F.when(F.instr(text, fmt.quote) > 0, F.regexp_replace(text, quoted_value(fmt.quote), ""))
                .otherwise(text).alias("_unquoted"),
                F.from_csv(text, ddl, {"sep": fmt.delimiter, "quote": fmt.quote, "escape": fmt.quote,
                                       "mode": "PERMISSIVE"}).alias("_csv"))
            count = F.size(F.split(F.col("_unquoted"), delim, -1))
            unbalanced = F.instr(F.col("_unquoted"), fmt.quote) > 0
            cols = F.struct(*[F.col("_csv").getField(f"_c{index[c]}").alias(c) for c in needed])
        problem = (F.when(unbalanced, F.lit(UNBALANCED_QUOTE))
                   .when(count != len(columns),
                         F.concat(F.lit("found "), count.cast("string"),
                                  F.lit(f" columns, expected {len(columns)}"))))
    else:
        raise ValueError(f"split_columns does not read {fmt.type} input")
    return lines.select(*[c for c in lines.columns if c not in ("_parts", "_unquoted", "_csv", CONT)],
                        skip.alias(SKIP), problem.alias(PROBLEM), cols.alias(COLS))


def side_table_key(table: SideTable) -> Column:
    """A side-table row's key (after ``split_columns``), trimmed: what a log row's ``log_key`` is
    matched against."""
    return F.trim(F.col(COLS).getField(table.key))


def side_table_values(value_columns: Sequence[str]) -> Column:
    """A side-table row's ``value_columns`` as one struct: of the rows of one key, the join keeps
    the smallest (``side_table``), and ``summarize_tables`` sets the others aside by the same order."""
    return F.struct(*[F.col(COLS).getField(c).alias(c) for c in value_columns])


def side_table_problem(table: SideTable) -> Column:
    """Why a side-table row (after ``split_columns``) is malformed, naming the table, or null:
    its structure (e.g. the number of columns) or an empty key."""
    key = side_table_key(table)
    return (F.when(F.col(PROBLEM).isNotNull(), F.concat(F.lit(f"table '{table.name}': "), F.col(PROBLEM)))
            .when(key.isNull() | (key == ""), F.lit(f"table '{table.name}': key column '{table.key}' is empty")))


def side_table(rows: DataFrame, table: SideTable, value_columns: Sequence[str]) -> DataFrame:
    """Side-table rows (after ``split_columns``) -> one row per key: ``_k_NAME`` (the trimmed
    key) and ``_t_NAME`` (a struct of ``value_columns``). Headers and malformed rows (those of
    ``side_table_problem``, which the jobs count and write to rejected/) are left out; a key
    listed twice keeps its smallest row, so the choice does not depend on order."""
    good = rows.filter(F.col(SKIP).isNull() & side_table_problem(table).isNull())
    return (good.select(side_table_key(table).alias(f"_k_{table.name}"), side_table_values(value_columns).alias("_row"))
            .groupBy(f"_k_{table.name}").agg(F.min("_row").alias(_table_column(table.name))))


def join_tables(records: DataFrame, tables: Sequence[tuple[SideTable, DataFrame]]) -> DataFrame:
    """Left-join each side table (from ``side_table``) on its ``log_key`` column: ``_t_NAME`` is null
    where the key has no row."""
    for table, rows in tables:
        key = f"_k_{table.name}"
        records = records.join(rows, F.trim(records[COLS].getField(table.log_key)) == rows[key], "left").drop(key)
    return records


def _empty(field: Field) -> str:
    return f"field '{field.name}': empty value"


def _to_double(text: Column) -> Column:
    """``text`` as a double, null unless it is a number (so no cast ever fails, ANSI mode or not)."""
    return F.when(text.rlike(_NUMBER), text.cast("double"))


def _number_problem(value: Column, what: str) -> Column:
    """Why ``value`` (trimmed text, non-null) is not a finite number, or null."""
    number = _to_double(value)
    return (F.when(~value.rlike(_NUMBER), F.concat(F.lit(f"{what}: '"), _shown(value), F.lit("' is not a number")))
            .when(F.abs(number) == float("inf"),
                  F.concat(F.lit(f"{what}: '"), _shown(value), F.lit("' is out of range"))))


def _float32_problem(number: Column, value: Column, what: str, advice: str) -> Column:
    """Why ``number`` (the double stored for ``value``, its text) does not fit in a float32, or
    null: beyond +-3.4e38 it would be stored as infinity."""
    return F.when(F.abs(number) > FLOAT32_MAX, F.concat(
        F.lit(f"{what}: '"), _shown(value), F.lit(f"' is {BEYOND_FLOAT32}; {advice}")))


_SCALE_FIELD = "scale the column, or add transform: log"
_SCALE_LABEL = "rescale the labels"


def parse_fields(records: DataFrame, schema: Schema) -> DataFrame:
    """Add a typed column per field, ``ORDER_PREFIX + name`` (double) per history field with an
    ``order_by`` column, ``_label`` for an explicit target, and ``_reason``."""
    # The trimmed text of every field (null when missing or empty), computed once.
    texts = []
    for f in schema.source_fields:
        src = F.col(COLS) if f.table is None else F.col(_table_column(f.table))
        trimmed = F.trim(src.getField(f.column))
        texts.append(F.when(trimmed != "", trimmed).alias(f"_s_{f.name}"))
    records = records.select("*", *texts)
    problems: list[Column] = [F.col(PROBLEM)]
    values: list[Column] = []
    for f in schema.source_fields:
        text = F.col(f"_s_{f.name}")
        if f.required and f.table is not None:
            t = schema.table(f.table)
            key = F.trim(F.col(COLS).getField(t.log_key))
            problems.append(
                F.when(key.isNull() | (key == ""), F.lit(f"field '{f.name}': join column '{t.log_key}' is empty"))
                .when(F.col(_table_column(t.name)).isNull(),
                      F.concat(F.lit(f"field '{f.name}': {t.log_key} '"), _shown(key),
                               F.lit(f"' not found in table '{t.name}'"))))
        if f.required:
            problems.append(F.when(text.isNull(), F.lit(_empty(f))))
        if f.kind == "categorical":
            values.append(text.alias(f.name))
        elif f.kind == "multi_categorical":
            fmt = schema.format if f.table is None else schema.table(f.table).format
            if fmt.type == "json":  # a JSON array, or a delimited string
                items = F.when(text.startswith("["), F.from_json(text, T.ArrayType(T.StringType()))).otherwise(
                    F.split(text, regex_char(f.delimiter), -1))
            else:
                items = F.split(text, regex_char(f.delimiter), -1)
            # a lambda of one argument: Spark 4's F.trim(col, trim) takes two, and F.transform passes a
            # two-argument function each element's index too, which trimmed "g1" to "g" as its characters
            every = F.array_distinct(F.filter(F.transform(items, lambda v: F.trim(v)),
                                              lambda v: v.isNotNull() & (v != "")))
            items = F.slice(every, 1, f.max_values)
            values.append(F.when(F.size(items) > 0, items).alias(f.name))
            # values before the cut at max_values: truncation is counted (records.summarize_input)
            values.append(F.when(every.isNotNull(), F.size(every)).otherwise(F.lit(0)).alias(WIDTH_PREFIX + f.name))
            if f.required:
                problems.append(F.when(text.isNotNull() & ~(F.size(items) > 0), F.lit(_empty(f))))
        else:
            what = f"field '{f.name}'"
            problems.append(F.when(text.isNotNull(), _number_problem(text, what)))
            x = _to_double(text)
            if f.transform == "log":
                problems.append(F.when(x <= 0, F.concat(F.lit(f"{what}: log needs a positive value, got '"),
                                                        _shown(text), F.lit("'"))))
                x = F.when(x > 0, F.log(x))
            elif f.transform == "log1p":
                problems.append(F.when(x <= -1, F.concat(F.lit(f"{what}: log1p needs a value above -1, got '"),
                                                         _shown(text), F.lit("'"))))
                x = F.when(x > -1, F.log1p(x))
            problems.append(_float32_problem(x, text, what, _SCALE_FIELD))
            values.append(x.alias(f.name))
    for f in schema.history_fields:
        if f.order_by:  # the time that orders the history's cap
            trimmed = F.trim(F.col(COLS).getField(f.order_by))
            what = f"field '{f.name}': order_by column '{f.order_by}'"
            problems.append(F.when(trimmed.isNull() | (trimmed == ""), F.lit(f"{what}: empty value"))
                            .otherwise(_number_problem(trimmed, what)))
            values.append(_to_double(trimmed).alias(ORDER_PREFIX + f.name))
    if schema.target.kind == "explicit":
        trimmed = F.trim(F.col(COLS).getField(schema.target.column))
        what = f"label '{schema.target.column}'"
        problems.append(F.when(trimmed.isNull() | (trimmed == ""), F.lit(f"{what}: empty value"))
                        .otherwise(F.coalesce(_number_problem(trimmed, what),
                                              _float32_problem(_to_double(trimmed), trimmed, what, _SCALE_LABEL))))
        values.append(_to_double(trimmed).alias(LABEL))
    kept = [c for c in records.columns if not c.startswith("_s_")]
    return records.select(*kept, *values, F.coalesce(*problems).alias(REASON))


_LIBFM_TOKEN = r"^[0-9]+:[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
LIBFM_ID_DIGITS = 18  # ids are read as int64: up to 18 digits always fit (hashed 32-bit and 60-bit spaces)
INT32_MAX = 2**31 - 1  # the largest id a data set can keep as it is (ids: keep): ids are int32 in the splits


def parse_libfm(lines: DataFrame, fmt: InputFormat) -> DataFrame:
    """libFM lines ``label id:value ...`` -> ``_label``, ``_fids`` (array<bigint>, as in the file),
    ``_fvals`` (array<double>), ``_skip`` (blank lines) and ``_reason``. A line that gives an id
    twice is rejected: the id would take two slots and interact with itself."""
    text = F.regexp_replace(F.col(TEXT), r"^\s+|\s+$", "")
    tokens = F.split(text, r"\s+", -1)
    label = tokens.getItem(0)
    feats = F.slice(tokens, 2, F.greatest(F.size(tokens) - 1, F.lit(1)))
    feats = F.when(F.size(tokens) > 1, feats).otherwise(F.array().cast("array<string>"))
    bad = F.filter(feats, lambda t: ~t.rlike(_LIBFM_TOKEN))
    long_ids = F.filter(feats, lambda t: F.length(F.substring_index(t, ":", 1)) > LIBFM_ID_DIGITS)
    ids = F.transform(feats, lambda t: F.when(t.rlike(_LIBFM_TOKEN) & (F.length(F.substring_index(t, ":", 1))
                                                                       <= LIBFM_ID_DIGITS),
                                              F.substring_index(t, ":", 1).cast("long")))
    vals = F.transform(feats, lambda t: F.when(t.rlike(_LIBFM_TOKEN), F.substring_index(t, ":", -1).cast("double")))
    huge = F.filter(feats, lambda t: F.abs(_to_double(F.substring_index(t, ":", -1))) > FLOAT32_MAX)
    ordered = F.array_sort(ids)
    repeated = F.filter(F.sequence(F.lit(2), F.greatest(F.size(ids), F.lit(2))),
                        lambda i: F.element_at(ordered, i) == F.element_at(ordered, i - 1))
    problem = (F.when(F.size(bad) > 0, F.concat(F.lit("libfm: token '"), _shown(bad.getItem(0)),
                                                F.lit("' is not id:value")))
               .when(F.size(long_ids) > 0, F.concat(F.lit("libfm: token '"), _shown(long_ids.getItem(0)),
                                                    F.lit(f"' has an id of more than {LIBFM_ID_DIGITS} digits; "
                                                          "hash the ids into a smaller space")))
               .when(F.size(feats) == 0, F.lit("libfm: no features"))
               .when(F.size(F.array_distinct(ids)) < F.size(ids),
                     F.concat(F.lit("libfm: feature id "),
                              F.element_at(ordered, F.element_at(repeated, 1)).cast("string"),
                              F.lit(" appears more than once on the line; give each id once (sum its values)")))
               .when(F.size(huge) > 0, F.concat(F.lit("libfm: token '"), _shown(huge.getItem(0)),
                                                F.lit(f"' has a value {BEYOND_FLOAT32}; scale the values")))
               .otherwise(F.coalesce(_number_problem(label, "label"),
                                     _float32_problem(_to_double(label), label, "label", _SCALE_LABEL))))
    if fmt.max_features is not None:
        problem = F.coalesce(problem, F.when(
            F.size(feats) > fmt.max_features,
            F.concat(F.size(feats).cast("string"), F.lit(f" features, more than max_features {fmt.max_features}"))))
    parsed_ok = (F.size(bad) == 0) & (F.size(long_ids) == 0)
    if fmt.ids != "remap":  # kept ids index the feature tables: int32
        problem = F.coalesce(problem, F.when(
            parsed_ok & (F.array_max(ids) > INT32_MAX),
            F.concat(F.lit("libfm: feature id "), F.array_max(ids).cast("string"),
                     F.lit(f" is above {INT32_MAX}, the largest id kept as it is; set format.ids: remap in the "
                           "schema to number the ids used 0, 1, ..."))))
    if fmt.num_features is not None:
        problem = F.coalesce(problem, F.when(
            parsed_ok & (F.array_max(ids) >= fmt.num_features),
            F.concat(F.lit("libfm: feature id "), F.array_max(ids).cast("string"),
                     F.lit(f" is not below num_features {fmt.num_features}"))))
    return lines.select(
        "*",
        skip_line(lines).alias(SKIP),
        _to_double(label).alias(LABEL),
        ids.alias(LIBFM_IDS),
        vals.alias(LIBFM_VALS),
        problem.alias(REASON),
    )
