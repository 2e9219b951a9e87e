"""Typed records -> instances: vocabulary, feature ids, row ids, negatives, splits, arrays.

Every choice is a function of the data, the schema and the seed, never of partitioning or
order: row ids hash the row's text and its copy number among identical rows, vocabulary ids
follow (count descending, value ascending), and negative sampling and the split hash the row id
with the seed. No ``rand()``: a recomputed partition gives the same rows.

Vocabulary basis: categorical values are counted over all accepted logs (before the split and
before negatives), as the paper's one-hot encoding of the whole data; numeric standardisation
uses training-split statistics only (``train_statistics``).

Shuffles: an explicit target needs one (rows are hash-partitioned by their text, which numbers
identical rows and spreads them over the output files); implicit feedback needs two (a window
over each context of the replaced field, then the output files by row id). Categorical values
are encoded by broadcast joins, multi-valued lists by a broadcast table of the distinct lists.
"""
from __future__ import annotations

from decimal import Decimal
from typing import Mapping, Sequence

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from afm_dist.dataset import (BAG_PREFIX, IDS, LABEL as OUT_LABEL, MASK, ROW_ID, TEST, TRAIN, VALIDATION, VALS,
                              DatasetError, FieldLayout)
from afm_dist.schema import Field, Split
from afm_dist.spark.parse import LABEL, LIBFM_IDS, LIBFM_VALS
from afm_dist.spark.readers import BLOCK, POS, SOURCE, TEXT

# Vocabularies (and a multi-valued field's distinct lists) up to this many rows are broadcast for
# encoding (a map-side join); larger ones are joined with a shuffle.
BROADCAST_LIMIT = 5_000_000
# Negative sampling with up to this many draws (target.negatives.max_tries) and negatives per
# positive is unrolled into compiled expressions; more goes through interpreted lambdas.
UNROLLED_DRAWS = 16
SPLIT = "split"  # split name column of the instances table (becomes the directory)
GIVEN_SPLIT = "_given_split"  # with given splits: the split of the row's file, carried to assign_splits
POSITIVE, NEGATIVE = 1.0, -1.0  # implicit-feedback targets, as the paper
LISTS = "\u0000lists"  # suffix of the pseudo-field counting a multi-valued field's distinct lists
# Exact sums for mean and standard deviation, so that they do not depend on summation order:
# each double (x and x*x) becomes a decimal with 18 decimals, and decimals add exactly.
_EXACT = "decimal(38,18)"


# A log's text stands for it as two independent 64-bit hashes (a collision of both among
# billions of distinct logs is improbable), so shuffles and sorts carry two longs, not text.
TEXT_KEY = ("_h1", "_h2")


def with_text_key(records: DataFrame) -> DataFrame:
    return records.select("*", F.xxhash64(F.col(TEXT)).alias("_h1"),
                          F.xxhash64(F.lit("afm-text"), F.col(TEXT)).alias("_h2"))


def _row_id(copy: Column) -> Column:
    """The id of a log: its text and its copy number (1, 2, ...) among identical logs."""
    return F.xxhash64(F.lit("afm-row"), *[F.col(c) for c in TEXT_KEY], copy)


# ---------------------------------------------------------------------------------------------
# Vocabulary


def _tagged(tag: int):
    return lambda v: F.struct(F.lit(tag).alias("tag"), v.alias("value"))


def value_counts(records: DataFrame, fields: Sequence[Field]) -> DataFrame:
    """``field``, ``value``, ``count``: occurrences of every value of the indexed fields.

    A multi-valued field ``f`` also gets rows ``f + LISTS`` whose values are its distinct lists
    (as JSON), from which ``encoded_lists`` builds its lookup table without another pass.
    """
    names: list[str] = []
    entries: list[Column] = []
    for f in fields:
        if not f.indexed:
            continue
        if f.kind == "categorical":
            entries.append(F.array(_tagged(len(names))(F.col(f.name))))
            names.append(f.name)
        else:
            entries.append(F.transform(F.coalesce(F.col(f.name), F.array().cast("array<string>")),
                                       _tagged(len(names))))
            entries.append(F.array(_tagged(len(names) + 1)(F.to_json(F.col(f.name)))))
            names += [f.name, f.name + LISTS]
    if not entries:
        raise ValueError("no field has a vocabulary")
    # Counted under a small integer tag (cheap to hash), named after the aggregation.
    exploded = records.select(F.explode(F.concat(*entries)).alias("_e")).select("_e.tag", "_e.value")
    counts = exploded.filter(F.col("value").isNotNull()).groupBy("tag", "value").agg(F.count(F.lit(1)).alias("count"))
    return counts.select(F.element_at(F.array(*[F.lit(n) for n in names]), F.col("tag") + 1).alias("field"),
                         "value", "count")


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
    kept = counts.filter(F.col("field").isin([f.name for f in indexed])
                         & (F.col("count") >= _per_field(indexed, lambda f: f.min_count)))
    order = Window.partitionBy("field").orderBy(F.desc("count"), F.asc("value"))
    local_id = F.row_number().over(order) - 1 + _per_field(indexed, lambda f: f.first_id)
    return kept.select("field", "value", local_id.cast("int").alias("local_id"), "count")


def rare_counts(counts: DataFrame, fields: Sequence[Field]) -> DataFrame:
    """``field``, ``count``: occurrences of values below ``min_count`` (they map to id 0)."""
    indexed = [f for f in fields if f.indexed]
    rare = counts.filter(F.col("field").isin([f.name for f in indexed])
                         & (F.col("count") < _per_field(indexed, lambda f: f.min_count)))
    return rare.groupBy("field").agg(F.sum("count").alias("count"))


def field_layouts(fields: Sequence[Field], vocabulary_sizes: Mapping[str, int]) -> list[FieldLayout]:
    """Offsets and slots of the fields, in schema order.

    ``vocabulary_sizes`` holds the number of indexed values of every indexed field; its size
    adds the out-of-vocabulary id when the field has one. A history field has its ``items``
    field's size (the same local ids, its own range of global ids) and is pooled.
    """
    by_name = {f.name: f for f in fields}

    def size_of(f: Field) -> int:
        if f.kind == "history":
            return size_of(by_name[f.items])
        if f.kind == "numeric":
            return 1
        if f.hash_buckets is not None:
            return f.hash_buckets
        return vocabulary_sizes.get(f.name, 0) + f.first_id

    layouts, offset, slot = [], 0, 0
    for f in fields:
        size = size_of(f)
        if size == 0:
            raise DatasetError(f"field '{f.name}': no value to index (every row lacks it, and it has no "
                             "out-of-vocabulary id)")
        layouts.append(FieldLayout(name=f.name, kind=f.kind, offset=offset, size=size, slot=slot, width=f.width,
                                   pooled=f.kind == "history"))
        offset += size
        slot += f.width
    return layouts


def vocabulary_table(vocabulary: DataFrame, rare: DataFrame, fields: Sequence[Field],
                     layouts: Sequence[FieldLayout]) -> DataFrame:
    """The vocabulary as written: ``field``, ``value``, ``id`` (global), ``count``. A field with
    an out-of-vocabulary id has a row with a null value for it, counting its rare values. A
    history field lists its ``items`` field's values at its own ids (count: as the items')."""
    spark = vocabulary.sparkSession
    for f in fields:
        if f.kind == "history" and next(g for g in fields if g.name == f.items).indexed:
            vocabulary = vocabulary.unionByName(vocabulary.filter(F.col("field") == f.items)
                                                .withColumn("field", F.lit(f.name)))
    offsets = spark.createDataFrame([(lay.name, lay.offset) for lay in layouts if lay.kind != "numeric"],
                                    "field string, offset int")
    known = vocabulary.join(F.broadcast(offsets), "field").select(
        "field", "value", (F.col("offset") + F.col("local_id")).cast("int").alias("id"), "count")
    oov_fields = [f.name for f in fields if f.indexed and f.oov]
    oov = (offsets.filter(F.col("field").isin(oov_fields)).join(rare, "field", "left")
           .select("field", F.lit(None).cast("string").alias("value"), F.col("offset").cast("int").alias("id"),
                   F.coalesce(F.col("count"), F.lit(0)).cast("bigint").alias("count")))
    return known.unionByName(oov)


def _lookup(vocabulary: DataFrame, field: Field) -> DataFrame:
    return vocabulary.filter(F.col("field") == field.name).select(
        F.col("value").alias("_v"), F.col("local_id").alias("_id"))


def encoded_lists(counts: DataFrame, vocabulary: DataFrame, field: Field) -> DataFrame:
    """The distinct lists of a multi-valued field (from ``value_counts``) -> ``_list``
    (array<string>) and ``_ids`` (array<int>, same order; 0 for an out-of-vocabulary value)."""
    lists = counts.filter(F.col("field") == field.name + LISTS).select(
        F.from_json("value", "array<string>").alias("_list"))
    unknown = F.lit(0) if field.oov else F.lit(None).cast("int")
    entries = lists.select("_list", F.posexplode("_list").alias("_p", "_v")).join(
        F.broadcast(_lookup(vocabulary, field)), "_v", "left").select(
        "_list", F.struct("_p", F.coalesce(F.col("_id"), unknown).alias("_id")).alias("_e"))
    return entries.groupBy("_list").agg(F.sort_array(F.collect_list("_e")).alias("_es")).select(
        "_list", F.col("_es._id").alias("_ids"))


def _bucket(buckets: int):
    return lambda v: F.pmod(F.xxhash64(v), F.lit(buckets)).cast("int")


def _shift(offset: int):
    return lambda v: v + offset


def encode_fields(records: DataFrame, fields: Sequence[Field], vocabulary: DataFrame | None,
                  sizes: Mapping[str, int], *, broadcast_limit: int = BROADCAST_LIMIT,
                  lists: Mapping[str, DataFrame] | None = None) -> DataFrame:
    """Replace each categorical value by its local id (int; 0 when out of vocabulary) and each
    multi-valued list by a list of ids; numeric fields are left as they are.

    ``vocabulary`` has ``field``, ``value``, ``local_id``. ``lists`` holds the ``encoded_lists``
    of the multi-valued fields (built from ``records`` when not given). ``sizes`` bounds the rows
    of each lookup (a field's vocabulary; ``FIELD + LISTS``: its distinct lists): lookups up to
    ``broadcast_limit`` rows are broadcast to the executors (a map-side join), larger ones are
    joined by shuffle.
    """
    for f in fields:
        if f.kind in ("numeric", "history"):
            continue
        if f.hash_buckets is not None:
            bucket = _bucket(f.hash_buckets)
            if f.kind == "categorical":  # a missing value of an optional field: bucket 0
                records = records.withColumn(f.name, F.when(F.col(f.name).isNull(), F.lit(0))
                                             .otherwise(bucket(F.col(f.name))))
            else:
                records = records.withColumn(f.name, F.transform(F.col(f.name), bucket))
            continue
        if f.kind == "categorical":
            lookup = _lookup(vocabulary, f)
            if sizes.get(f.name, 0) <= broadcast_limit:
                lookup = F.broadcast(lookup)
            unknown = F.lit(0) if f.oov else F.lit(None).cast("int")
            records = (records.join(lookup, records[f.name] == lookup["_v"], "left")
                       .withColumn(f.name, F.coalesce(F.col("_id"), unknown)).drop("_v", "_id"))
        else:
            lookup = (lists or {}).get(f.name)
            if lookup is None:
                lookup = encoded_lists(records.select(F.to_json(f.name).alias("value"))
                                       .filter(F.col("value").isNotNull()).distinct()
                                       .withColumn("field", F.lit(f.name + LISTS)), vocabulary, f)
            if sizes.get(f.name + LISTS, sizes.get(f.name, 0)) <= broadcast_limit:
                lookup = F.broadcast(lookup)
            records = (records.join(lookup, records[f.name] == lookup["_list"], "left")
                       .withColumn(f.name, F.col("_ids")).drop("_list", "_ids"))
    return records


# ---------------------------------------------------------------------------------------------
# Row ids and instances


def with_row_ids(records: DataFrame, value_columns: Sequence[str], partitions: int | None = None) -> DataFrame:
    """Records -> ``row_id`` and ``value_columns``, one row per record (see ``explicit_instances``;
    without ``partitions`` the rows are partitioned by text into the session's shuffle partitions)."""
    if "_h1" not in records.columns:
        records = with_text_key(records)
    records = records.select(*TEXT_KEY, *value_columns)  # the text itself is not shuffled
    if partitions is not None:
        records = records.repartition(partitions, *TEXT_KEY)
    # Identical logs of different given splits are numbered in split order (deterministic ids).
    order = [*TEXT_KEY, *([GIVEN_SPLIT] if GIVEN_SPLIT in value_columns else [])]
    by_text = Window.partitionBy(*TEXT_KEY).orderBy(*order)
    return records.select(_row_id(F.row_number().over(by_text)).alias(ROW_ID), *value_columns)


def explicit_instances(encoded: DataFrame, value_columns: Sequence[str], partitions: int) -> DataFrame:
    """Encoded logs -> ``row_id`` and ``value_columns``, hash-partitioned by text into
    ``partitions`` (the output files), one instance per log.

    ``row_id`` hashes the log's text (``TEXT_KEY``) and its copy number among identical logs,
    so it does not depend on file names, line positions or partitioning: the same logs split
    into more files give the same ids. Identical logs meet in one partition, where they are numbered.
    """
    return with_row_ids(encoded, value_columns, partitions)


def implicit_instances(encoded: DataFrame, fields: Sequence[Field], replaced: Field, replaced_size: int, *,
                       per_positive: int, max_tries: int, seed: int, partitions: int | None = None,
                       carry: Sequence[str] = ()) -> DataFrame:
    """Encoded logs -> instances: each log as a positive (label +1) followed by
    ``per_positive`` negatives (label -1), copies of it with ``replaced`` set to another id.

    The replacement is drawn uniformly over the field's vocabulary (ids, not occurrences, so
    popular values are not favoured) by hashing (row_id, seed, k, try). A draw that makes an
    observed positive (the log's other fields occur in a log with that id) is refused and the
    next try hashed; after ``max_tries`` refusals the first free id after one more draw is taken.
    A negative is dropped only if every id of the field is observed in that context.

    One pass: a window over each context (the other fields) gives the ids observed with it and
    numbers identical logs (same text) for their row ids; a log's positive and negatives are
    exploded from one row. ``partitions``: how many partitions the contexts are hashed into;
    ``carry``: more columns kept as they are (a negative has its positive's).
    """
    context = [f.name for f in fields if f.name != replaced.name]
    keys = context or [F.lit(0)]
    encoded = with_text_key(encoded).select(*TEXT_KEY, *[f.name for f in fields], *carry)
    if partitions is not None:
        encoded = encoded.repartition(partitions, *keys)
    by_context = Window.partitionBy(*keys)
    by_text = Window.partitionBy(*keys).orderBy(*TEXT_KEY)
    numbered = Window.partitionBy(*keys).orderBy(*TEXT_KEY, *carry)  # copies in a deterministic order
    copy = F.row_number().over(numbered) - F.rank().over(by_text) + 1  # 1, 2, ... among identical logs
    logs = encoded.select(_row_id(copy).alias(ROW_ID), *[f.name for f in fields], *carry,
                          F.collect_set(replaced.name).over(by_context).alias("_observed"))
    first = replaced.first_id
    n = replaced_size - first
    if per_positive < 1:
        raise ValueError("implicit_instances makes at least one negative per positive")
    if n <= 0:
        raise DatasetError(f"field '{replaced.name}': no value to sample negatives from")

    def draw(k: str, t: str) -> str:
        return f"CAST({first} + pmod(xxhash64({ROW_ID}, {seed}, {k}, {t}), {n}) AS INT)"

    free = "c -> NOT array_contains(_observed, c)"

    def fallback(k: str) -> str:  # after max_tries taken draws: the first free id after one more draw
        return (f"try_element_at(filter(transform(sequence(0, size(_observed)), "
                f"j -> CAST({first} + pmod({draw(k, str(max_tries))} - {first} + j, {n}) AS INT)), {free}), 1)")

    if max_tries <= UNROLLED_DRAWS and per_positive <= UNROLLED_DRAWS:
        # The same draws unrolled into a CASE, compiled with the stage's code, that stops at the
        # first free draw (usually the first); the lambdas below are interpreted, every draw made.
        def pick(k: int) -> str:
            draws = [draw(str(k), str(t)) for t in range(max_tries)]
            tries = " ".join(f"WHEN NOT array_contains(_observed, {d}) THEN {d}" for d in draws)
            return f"coalesce(CASE {tries} END, {fallback(str(k))})"

        negatives = ", ".join(f"named_struct('k', {k}, 'id', {pick(k)})" for k in range(per_positive))
        # k = -1 is the log itself (the positive); k >= 0 are its negatives.
        instances = F.expr(f"array(named_struct('k', -1, 'id', `{replaced.name}`), {negatives})")
    else:
        pick = (f"coalesce(try_element_at(filter(transform(sequence(0, {max_tries - 1}), t -> {draw('k', 't')}), "
                f"{free}), 1), {fallback('k')})")
        instances = F.expr(f"concat(array(named_struct('k', -1, 'id', `{replaced.name}`)), "
                           f"transform(sequence(0, {per_positive - 1}), k -> named_struct('k', k, 'id', {pick})))")
    exploded = logs.select("*", F.explode(instances).alias("_n")).filter(F.col("_n.id").isNotNull())
    k = F.col("_n.k")
    columns = [F.col("_n.id").alias(f.name) if f.name == replaced.name else F.col(f.name) for f in fields]
    return exploded.select(
        F.when(k < 0, F.col(ROW_ID)).otherwise(F.xxhash64(F.col(ROW_ID), F.lit("negative"), k)).alias(ROW_ID),
        *columns,
        F.when(k < 0, F.lit(POSITIVE)).otherwise(F.lit(NEGATIVE)).alias(LABEL),
        *carry,
    )


# ---------------------------------------------------------------------------------------------
# Split and numeric statistics


def with_label(instances: DataFrame, value: float | None) -> DataFrame:
    return instances.withColumn(LABEL, F.lit(value).cast("double"))


def assign_splits(instances: DataFrame, split: Split, seed: int, *,
                  given: Sequence[str] | None = None) -> DataFrame:
    """Add ``split`` (train / validation / test) from a hash of the row id and the seed, so each
    instance lands in a split with the schema's probabilities, whatever the partitioning.

    ``given`` (the splits that came as files): each instance keeps the split of its file, column
    ``GIVEN_SPLIT`` (then dropped). Without validation files, the train files' instances are
    drawn into train and validation by the same hash, in the schema's train : validation ratio.
    """
    scale = 1 << 53
    u = F.pmod(F.xxhash64(F.lit("split"), F.lit(seed), F.col(ROW_ID)), F.lit(scale)) / float(scale)
    if given:
        from_file = F.col(GIVEN_SPLIT)
        if VALIDATION not in given:
            cut = split.train / (split.train + split.validation)
            from_file = F.when(from_file == TRAIN, F.when(u < cut, F.lit(TRAIN)).otherwise(F.lit(VALIDATION))) \
                .otherwise(from_file)
        return instances.withColumn(SPLIT, from_file).drop(GIVEN_SPLIT)
    return instances.withColumn(
        SPLIT,
        F.when(u < split.train, F.lit(TRAIN))
        .when(u < split.train + split.validation, F.lit(VALIDATION))
        .otherwise(F.lit(TEST)),
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
        x = F.col(f.name)
        aggs += [F.sum(x.cast(_EXACT)).alias(f"{f.name}__s"), F.sum((x * x).cast(_EXACT)).alias(f"{f.name}__q"),
                 F.count(f.name).alias(f"{f.name}__n")]
    row = instances.filter(F.col(SPLIT) == TRAIN).agg(*aggs).first()
    stats = {}
    for f in std_fields:
        s, q, n = row[f"{f.name}__s"], row[f"{f.name}__q"], row[f"{f.name}__n"]
        if n and (s is None or q is None):
            raise DatasetError(f"field '{f.name}': values too large (beyond 1e10) to standardise exactly; "
                               "add transform: log, or scale the column")
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


def _final(ids: Column, vals: Column, mask: Column, bags: Sequence[Column] = ()) -> list[Column]:
    return [
        F.col(ROW_ID),
        ids.cast("array<int>").alias(IDS),
        vals.cast("array<float>").alias(VALS),
        mask.cast("array<tinyint>").alias(MASK),
        F.col(LABEL).cast("float").alias(OUT_LABEL),
        *bags,
        F.col(SPLIT),
    ]


def assemble(instances: DataFrame, fields: Sequence[Field], layouts: Sequence[FieldLayout], *,
             bags_apart: bool = False) -> DataFrame:
    """Encoded instances -> ``row_id, ids, vals, mask, label, split`` with ids, vals and mask of
    width M = sum of the fields' widths. Padded slots hold id 0, value 0.0 and mask 0. A history
    field's column holds its bag's local ids (afm_dist/spark/history.py); each of its n values
    is weighted 1/sqrt(n). ``bags_apart``: a history field F's bag goes to column ``bag_F``
    instead (its global ids, unpadded; ``dataset.BAG_PREFIX``), and its slots are left out of
    ids, vals and mask: a data set's split format (afm_dist/dataset.py)."""
    ids, vals, mask, bags = [], [], [], []
    one, zero = F.lit(1), F.lit(0)
    for f, lay in zip(fields, layouts):
        col = F.col(f.name)
        if f.kind == "history" and bags_apart:
            values = F.coalesce(col, F.array().cast("array<int>"))
            bags.append(F.transform(values, _shift(lay.offset)).cast("array<int>").alias(BAG_PREFIX + f.name))
        elif f.kind == "categorical":
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
            if f.kind == "history":
                value = F.lit(1.0) / F.sqrt(n)
            else:
                value = F.lit(1.0) / n if f.normalize else F.lit(1.0)
            ids.append(_padded(F.transform(values, _shift(lay.offset)), lay.width, zero))
            vals.append(_padded(F.array_repeat(value, n), lay.width, F.lit(0.0)))
            mask.append(_padded(F.array_repeat(one, n), lay.width, zero))
    return instances.select(*_final(F.concat(*ids), F.concat(*vals), F.concat(*mask), bags))


def libfm_id_counts(records: DataFrame) -> DataFrame:
    """``_v`` (a feature id of the file) and ``count``: every id the libFM rows use."""
    return records.select(F.explode(LIBFM_IDS).alias("_v")).groupBy("_v").agg(F.count(F.lit(1)).alias("count"))


def libfm_mapping(id_counts: DataFrame) -> DataFrame:
    """The ids used (``libfm_id_counts``) numbered 0, 1, ... in increasing order: ``_v`` (the
    file's id), ``_id`` (the data set's) and ``count``. The order keeps the file's order of ids;
    one partition holds the distinct ids, as a field's vocabulary."""
    return id_counts.select("_v", (F.row_number().over(Window.orderBy("_v")) - 1).cast("int").alias("_id"), "count")


def remapped_libfm_instances(records: DataFrame, mapping: DataFrame, partitions: int, *,
                             broadcast: bool, carry: Sequence[str] = ()) -> DataFrame:
    """libFM rows -> ``row_id``, ``_label``, ``_fids`` (the ids of ``mapping``, in the line's
    order), ``_fvals``: as ``explicit_instances`` (same row ids, hash-partitioned by text into
    ``partitions``) in the same single shuffle, of the rows' features rather than of the rows.

    A row's features are exploded, mapped (``broadcast``: by a broadcast join) and gathered back
    per line (``_pos`` identifies a line within the scan) after the shuffle by text, which is
    also the partitioning that numbers identical lines. ``carry``: more columns of the lines, kept.
    An id missing from ``mapping`` is left out of its line (callers reject such lines first).
    """
    lookup = F.broadcast(mapping) if broadcast else mapping
    line = [SOURCE, BLOCK, POS]  # identifies a line within the scan, over several files
    features = with_text_key(records).select(*TEXT_KEY, *line, LABEL, LIBFM_VALS, *carry,
                                             F.posexplode(LIBFM_IDS).alias("_p", "_v"))
    mapped = (features.select(*TEXT_KEY, *line, LABEL, *carry, "_p", "_v",
                              F.element_at(LIBFM_VALS, F.col("_p") + 1).alias("_x"))
              .join(lookup.select("_v", "_id"), "_v")
              .repartition(partitions, *TEXT_KEY))
    lines = mapped.groupBy(*TEXT_KEY, *line).agg(
        F.first(LABEL).alias(LABEL), *[F.first(c).alias(c) for c in carry],
        F.sort_array(F.collect_list(F.struct("_p", "_id", "_x"))).alias("_fs"))
    lines = lines.select(*TEXT_KEY, LABEL, *carry, F.col("_fs._id").alias(LIBFM_IDS),
                         F.col("_fs._x").alias(LIBFM_VALS))
    return with_row_ids(lines, [LABEL, LIBFM_IDS, LIBFM_VALS, *carry])


def assemble_libfm(instances: DataFrame, width: int) -> DataFrame:
    """libFM instances (``_fids``, ``_fvals``) -> fixed-width arrays, ids kept as they are."""
    n = F.size(LIBFM_IDS)
    return instances.select(*_final(
        _padded(F.col(LIBFM_IDS), width, F.lit(0)),
        _padded(F.col(LIBFM_VALS), width, F.lit(0.0)),
        _padded(F.array_repeat(F.lit(1), n), width, F.lit(0)),
    ))
