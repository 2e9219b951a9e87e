"""Typed records -> instances: row ids, vocabulary, feature ids, negatives, splits, arrays.

Every choice is a function of the data, the schema and the seed, never of partitioning or
order: row ids hash the row's text and its copy number among identical rows, vocabulary ids
follow (count descending, value ascending), and negative sampling and the split hash the row id
with the seed. No ``rand()``: a recomputed partition gives the same rows.

Vocabulary basis: categorical values are counted over all accepted logs (before the split and
before negatives), as the paper's one-hot encoding of the whole data; numeric standardisation
uses training-split statistics only (``train_statistics``).
"""
from __future__ import annotations

from decimal import Decimal
from typing import Mapping, Sequence

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from afm_dist.dataset import IDS, LABEL as OUT_LABEL, MASK, ROW_ID, VALS, FieldLayout
from afm_dist.schema import Field, Split
from afm_dist.spark.parse import LABEL, LIBFM_IDS, LIBFM_VALS
from afm_dist.spark.readers import TEXT

SPLIT = "split"  # split name column of the instances table (becomes the directory)
POSITIVE, NEGATIVE = 1.0, -1.0  # implicit-feedback targets, as the paper
# Exact sums for mean and standard deviation, so that they do not depend on summation order.
_EXACT = "decimal(38,12)"


# ---------------------------------------------------------------------------------------------
# Row ids


def with_row_ids(records: DataFrame, value_columns: Sequence[str]) -> DataFrame:
    """Accepted records -> ``row_id`` and ``value_columns``, one row per record.

    ``row_id`` is xxhash64 of the row's text and its copy number among rows with the same text,
    so it does not depend on file names, line positions or partitioning: the same logs split
    into more files give the same ids. Identical rows are aggregated then expanded again.
    """
    copies = records.groupBy(TEXT, *value_columns).agg(F.count(F.lit(1)).alias("_copies"))
    expanded = copies.select("*", F.explode(F.sequence(F.lit(1), F.col("_copies"))).alias("_copy"))
    return expanded.select(F.xxhash64(F.lit("afm-row"), F.col(TEXT), F.col("_copy")).alias(ROW_ID),
                           *value_columns)


# ---------------------------------------------------------------------------------------------
# Vocabulary


def _tagged(name: str):
    return lambda v: F.struct(F.lit(name).alias("field"), v.alias("value"))


def value_counts(records: DataFrame, fields: Sequence[Field]) -> DataFrame:
    """``field``, ``value``, ``count``: occurrences of every value of the indexed fields."""
    entries: list[Column] = []
    for f in fields:
        if not f.indexed:
            continue
        if f.kind == "categorical":
            entries.append(F.array(_tagged(f.name)(F.col(f.name))))
        else:
            entries.append(F.transform(F.coalesce(F.col(f.name), F.array().cast("array<string>")), _tagged(f.name)))
    if not entries:
        raise ValueError("no field has a vocabulary")
    exploded = records.select(F.explode(F.concat(*entries)).alias("_e")).select("_e.field", "_e.value")
    return exploded.filter(F.col("value").isNotNull()).groupBy("field", "value").agg(F.count(F.lit(1)).alias("count"))


def _per_field(fields: Sequence[Field], attr) -> Column:
    expr = None
    for f in fields:
        expr = (F.when(F.col("field") == f.name, F.lit(attr(f))) if expr is None
                else expr.when(F.col("field") == f.name, F.lit(attr(f))))
    return expr


def index_vocabulary(counts: DataFrame, fields: Sequence[Field]) -> DataFrame:
    """Value counts -> ``field``, ``value``, ``local_id``, ``count`` for values seen at least
    ``min_count`` times. Ids within a field start after the out-of-vocabulary id 0 (when the
    field has one), most frequent value first, ties by value."""
    indexed = [f for f in fields if f.indexed]
    kept = counts.filter(F.col("count") >= _per_field(indexed, lambda f: f.min_count))
    order = Window.partitionBy("field").orderBy(F.desc("count"), F.asc("value"))
    local_id = F.row_number().over(order) - 1 + _per_field(indexed, lambda f: f.first_id)
    return kept.select("field", "value", local_id.cast("int").alias("local_id"), "count")


def rare_counts(counts: DataFrame, fields: Sequence[Field]) -> DataFrame:
    """``field``, ``count``: occurrences of values below ``min_count`` (they map to id 0)."""
    indexed = [f for f in fields if f.indexed]
    rare = counts.filter(F.col("count") < _per_field(indexed, lambda f: f.min_count))
    return rare.groupBy("field").agg(F.sum("count").alias("count"))


def field_layouts(fields: Sequence[Field], vocabulary_sizes: Mapping[str, int]) -> list[FieldLayout]:
    """Offsets and slots of the fields, in schema order.

    ``vocabulary_sizes`` holds the number of indexed values of every indexed field; its size
    adds the out-of-vocabulary id when the field has one.
    """
    layouts, offset, slot = [], 0, 0
    for f in fields:
        if f.kind == "numeric":
            size = 1
        elif f.hash_buckets is not None:
            size = f.hash_buckets
        else:
            size = vocabulary_sizes.get(f.name, 0) + f.first_id
        if size == 0:
            raise ValueError(f"field '{f.name}': no value to index (every row lacks it, and it has no "
                             "out-of-vocabulary id)")
        layouts.append(FieldLayout(name=f.name, kind=f.kind, offset=offset, size=size, slot=slot, width=f.width))
        offset += size
        slot += f.width
    return layouts


def vocabulary_table(vocabulary: DataFrame, rare: DataFrame, fields: Sequence[Field],
                     layouts: Sequence[FieldLayout]) -> DataFrame:
    """The vocabulary as written: ``field``, ``value``, ``id`` (global), ``count``. A field with
    an out-of-vocabulary id has a row with a null value for it, counting its rare values."""
    spark = vocabulary.sparkSession
    offsets = spark.createDataFrame([(lay.name, lay.offset) for lay in layouts if lay.kind != "numeric"],
                                    "field string, offset int")
    known = vocabulary.join(F.broadcast(offsets), "field").select(
        "field", "value", (F.col("offset") + F.col("local_id")).cast("int").alias("id"), "count")
    oov_fields = [f.name for f in fields if f.indexed and f.oov]
    oov = (offsets.filter(F.col("field").isin(oov_fields)).join(rare, "field", "left")
           .select("field", F.lit(None).cast("string").alias("value"), F.col("offset").cast("int").alias("id"),
                   F.coalesce(F.col("count"), F.lit(0)).cast("bigint").alias("count")))
    return known.unionByName(oov)


def _bucket(buckets: int):
    return lambda v: F.pmod(F.xxhash64(v), F.lit(buckets)).cast("int")


def _shift(offset: int):
    return lambda v: v + offset


def encode_fields(records: DataFrame, fields: Sequence[Field], vocabulary: DataFrame,
                  vocabulary_sizes: Mapping[str, int], *, broadcast_limit: int) -> DataFrame:
    """Replace each categorical value by its local id (int; 0 when out of vocabulary) and each
    multi-valued list by a list of ids; numeric fields are left as they are.

    Vocabularies up to ``broadcast_limit`` values are broadcast to the executors (a map-side
    join); larger ones are joined by shuffle. ``records`` needs a unique ``row_id``.
    """
    for f in fields:
        if f.kind == "numeric":
            continue
        if f.hash_buckets is not None:
            bucket = _bucket(f.hash_buckets)
            if f.kind == "categorical":  # a missing value of an optional field: bucket 0
                records = records.withColumn(f.name, F.when(F.col(f.name).isNull(), F.lit(0))
                                             .otherwise(bucket(F.col(f.name))))
            else:
                records = records.withColumn(f.name, F.transform(F.col(f.name), bucket))
            continue
        lookup = vocabulary.filter(F.col("field") == f.name).select(
            F.col("value").alias("_v"), F.col("local_id").alias("_id"))
        if vocabulary_sizes.get(f.name, 0) <= broadcast_limit:
            lookup = F.broadcast(lookup)
        unknown = F.lit(0) if f.oov else F.lit(None).cast("int")
        if f.kind == "categorical":
            records = (records.join(lookup, records[f.name] == lookup["_v"], "left")
                       .withColumn(f.name, F.coalesce(F.col("_id"), unknown)).drop("_v", "_id"))
        else:
            exploded = records.select(ROW_ID, F.posexplode(f.name).alias("_p", "_v"))
            ids = exploded.join(lookup, "_v", "left").select(
                ROW_ID, F.struct("_p", F.coalesce(F.col("_id"), unknown).alias("_id")).alias("_e"))
            lists = ids.groupBy(ROW_ID).agg(F.sort_array(F.collect_list("_e")).alias("_l")).select(
                ROW_ID, F.col("_l._id").alias("_ids"))
            records = records.join(lists, ROW_ID, "left").withColumn(f.name, F.col("_ids")).drop("_ids")
    return records


# ---------------------------------------------------------------------------------------------
# Implicit feedback: negatives


def with_label(records: DataFrame, value: float) -> DataFrame:
    return records.withColumn(LABEL, F.lit(value))


def sample_negatives(positives: DataFrame, fields: Sequence[Field], replaced: Field, replaced_size: int, *,
                     per_positive: int, max_tries: int, seed: int) -> DataFrame:
    """Encoded positives -> ``per_positive`` negatives per positive (label -1), each a copy of
    its positive with ``replaced`` set to another id of that field.

    The replacement is drawn uniformly over the field's vocabulary (ids, not occurrences, so
    popular values are not favoured) by hashing (row_id, seed, k, try). A draw that makes an
    observed positive (the positive's other fields with that id occur as a log) is refused and
    the next try hashed; after ``max_tries`` refusals the next free id after a last draw is
    taken. A negative is dropped only if every id of the field is observed with that context.
    """
    context = [f.name for f in fields if f.name != replaced.name]
    window = Window.partitionBy(*context) if context else Window.partitionBy(F.lit(0))
    observed = positives.withColumn("_observed", F.collect_set(replaced.name).over(window))
    first = replaced.first_id
    n = replaced_size - first
    if n <= 0:
        raise ValueError(f"field '{replaced.name}': no value to sample negatives from")

    def draw(k: str, t: str) -> str:
        return f"CAST({first} + pmod(xxhash64({ROW_ID}, {seed}, {k}, {t}), {n}) AS INT)"

    free = "c -> NOT array_contains(_observed, c)"
    pick = (
        f"coalesce("
        f"try_element_at(filter(transform(sequence(0, {max_tries - 1}), t -> {draw('k', 't')}), {free}), 1), "
        f"try_element_at(filter(transform(sequence(0, size(_observed)), "
        f"j -> CAST({first} + pmod({draw('k', str(max_tries))} - {first} + j, {n}) AS INT)), {free}), 1))"
    )
    draws = F.expr(f"transform(sequence(0, {per_positive - 1}), k -> named_struct('k', k, 'id', {pick}))")
    negatives = observed.select("*", F.explode(draws).alias("_n")).filter(F.col("_n.id").isNotNull())
    columns = [F.col("_n.id").alias(f.name) if f.name == replaced.name else F.col(f.name) for f in fields]
    return negatives.select(F.xxhash64(F.col(ROW_ID), F.lit("negative"), F.col("_n.k")).alias(ROW_ID),
                            *columns, F.lit(NEGATIVE).alias(LABEL))


# ---------------------------------------------------------------------------------------------
# Split and numeric statistics


def assign_splits(instances: DataFrame, split: Split, seed: int) -> DataFrame:
    """Add ``split`` (train / validation / test) from a hash of the row id and the seed, so each
    instance lands in a split with the schema's probabilities, whatever the partitioning."""
    scale = 1 << 53
    u = F.pmod(F.xxhash64(F.lit("split"), F.lit(seed), F.col(ROW_ID)), F.lit(scale)) / float(scale)
    return instances.withColumn(
        SPLIT,
        F.when(u < split.train, F.lit("train"))
        .when(u < split.train + split.validation, F.lit("validation"))
        .otherwise(F.lit("test")),
    )


def train_statistics(instances: DataFrame, fields: Sequence[Field]) -> dict[str, dict[str, float]]:
    """Mean and standard deviation of each standardised numeric field over the training split
    (a handful of numbers collected to the driver). Sums are exact decimals, so the result does
    not depend on partitioning."""
    std_fields = [f for f in fields if f.kind == "numeric" and f.standardize]
    if not std_fields:
        return {}
    aggs = []
    for f in std_fields:
        x = F.col(f.name).cast(_EXACT)
        aggs += [F.sum(x).alias(f"{f.name}__s"), F.sum(x * x).alias(f"{f.name}__q"),
                 F.count(f.name).alias(f"{f.name}__n")]
    row = instances.filter(F.col(SPLIT) == "train").agg(*aggs).first()
    stats = {}
    for f in std_fields:
        s, q, n = row[f"{f.name}__s"], row[f"{f.name}__q"], row[f"{f.name}__n"]
        if n and (s is None or q is None):
            raise ValueError(f"field '{f.name}': values too large to standardise exactly; add transform: log")
        if not n:
            mean, std = 0.0, 1.0
        else:
            mean_d = Decimal(s) / n
            var = max(Decimal(q) / n - mean_d * mean_d, Decimal(0))
            mean, std = float(mean_d), float(var.sqrt())
        stats[f.name] = {"mean": mean, "std": std if std > 0 else 1.0, "count": int(n)}
    return stats


def standardize(instances: DataFrame, statistics: Mapping[str, Mapping[str, float]]) -> DataFrame:
    for name, s in statistics.items():
        instances = instances.withColumn(name, (F.col(name) - F.lit(s["mean"])) / F.lit(s["std"]))
    return instances


# ---------------------------------------------------------------------------------------------
# Fixed-width arrays


def _padded(values: Column, width: int, pad: Column) -> Column:
    return F.concat(values, F.array_repeat(pad, F.lit(width) - F.size(values)))


def _final(ids: Column, vals: Column, mask: Column) -> list[Column]:
    return [
        F.col(ROW_ID),
        ids.cast("array<int>").alias(IDS),
        vals.cast("array<float>").alias(VALS),
        mask.cast("array<tinyint>").alias(MASK),
        F.col(LABEL).cast("float").alias(OUT_LABEL),
        F.col(SPLIT),
    ]


def assemble(instances: DataFrame, fields: Sequence[Field], layouts: Sequence[FieldLayout]) -> DataFrame:
    """Encoded instances -> ``row_id, ids, vals, mask, label, split`` with ids, vals and mask of
    width M = sum of the fields' widths. Padded slots hold id 0, value 0.0 and mask 0."""
    ids, vals, mask = [], [], []
    one, zero = F.lit(1), F.lit(0)
    for f, lay in zip(fields, layouts):
        col = F.col(f.name)
        if f.kind == "categorical":
            ids.append(F.array(col + lay.offset))
            vals.append(F.array(F.lit(1.0)))
            mask.append(F.array(one))
        elif f.kind == "numeric":
            ids.append(F.array(F.lit(lay.offset)))
            vals.append(F.array(F.coalesce(col, F.lit(0.0))))
            mask.append(F.array(one))
        else:
            values = F.coalesce(col, F.array().cast("array<int>"))
            n = F.size(values)
            value = F.lit(1.0) / n if f.normalize else F.lit(1.0)
            ids.append(_padded(F.transform(values, _shift(lay.offset)), lay.width, zero))
            vals.append(_padded(F.array_repeat(value, n), lay.width, F.lit(0.0)))
            mask.append(_padded(F.array_repeat(one, n), lay.width, zero))
    return instances.select(*_final(F.concat(*ids), F.concat(*vals), F.concat(*mask)))


def assemble_libfm(instances: DataFrame, width: int) -> DataFrame:
    """libFM instances (``_fids``, ``_fvals``) -> fixed-width arrays, ids kept as they are."""
    n = F.size(LIBFM_IDS)
    return instances.select(*_final(
        _padded(F.col(LIBFM_IDS), width, F.lit(0)),
        _padded(F.col(LIBFM_VALS), width, F.lit(0.0)),
        _padded(F.array_repeat(F.lit(1), n), width, F.lit(0)),
    ))
