"""History bag fields (schema kind ``history``): every instance gets the other values of field
``items`` that its ``of`` value (a user) has in the training split, capped and weighted 1/sqrt(n)
when assembled (``encode.assemble``).

Two steps, both DataFrame operations (nothing is collected but the per-split counts): a group-by
makes one bag per ``of`` value from the rows that may feed bags (training split; positives only
for an implicit target), and a join hands it to every instance of every split. A value's
occurrences are counted, so that a training row leaves out of its own bag only its own
occurrence: an item the user has in another training row stays. The cap is a seeded sample: a
bag keeps the values first in the order of xxhash64(seed, of id, item id) (with ``order_by``:
latest first, that order breaking ties), the same order for every row of a user, so a training
row's bag differs from the others' at most by its own item.
"""
from __future__ import annotations

from typing import Mapping, Sequence

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from afm_dist.dataset import SPLITS, TRAIN
from afm_dist.schema import Field
from afm_dist.spark.encode import LABEL, POSITIVE, SPLIT
from afm_dist.spark.parse import ORDER_PREFIX

CUT_PREFIX = "_cut_"  # + field name: true when the cap left values of the row's bag out
# An owner's values, in the cap's order: minus the latest time (order_by; else 0), seeded rank, local id, occurrences.
BAG_TYPE = "array<struct<_t:double,_k:bigint,_v:int,_n:bigint>>"


def add_history(instances: DataFrame, history: Field, of: Field, *, seed: int, positives_only: bool) -> DataFrame:
    """Add column ``history.name``: the row's bag, array<int> of ``history.items``' local ids (at
    most ``history.max_values``, in the cap's order; empty when the row has none), and
    ``CUT_PREFIX + history.name``: true when the cap left some of the row's values out.

    ``instances``: encoded instances with ``of`` and ``items`` as local ids (int), ``split`` and,
    for ``positives_only`` (an implicit target: its negatives feed no bag), ``LABEL`` (+1 / -1).
    ``of``: the owner field (its out-of-vocabulary id 0, if it has one, owns no bag: those rows
    get an empty bag and feed none). ``seed``: the schema's, which orders the cap's sample. With
    ``history.order_by``, column ``ORDER_PREFIX + history.name`` (a time) puts the values of the
    latest training rows first.
    """
    owner, items, cap = of.name, history.items, history.max_values
    feeds = (F.col(SPLIT) == TRAIN) & F.col(owner).isNotNull() & F.col(items).isNotNull()
    if positives_only:
        feeds &= F.col(LABEL) == POSITIVE
    if of.first_id > 0:  # the out-of-vocabulary id stands for many values: no bag of its own
        feeds &= F.col(owner) != 0
    rank = F.xxhash64(F.lit("afm-history"), F.lit(seed), F.col(owner), F.col(items))
    latest = F.max(ORDER_PREFIX + history.name) if history.order_by else F.lit(0.0)
    occurrences = (instances.filter(feeds).groupBy(owner, items)
                   .agg(F.count(F.lit(1)).alias("_n"), (-latest).cast("double").alias("_t"))
                   .select(owner, F.struct("_t", rank.alias("_k"), F.col(items).cast("int").alias("_v"), "_n")
                           .alias("_e")))
    # Each owner's first cap + 1 values: enough for the bag of a training row whose own item is among them.
    bags = occurrences.groupBy(owner).agg(
        F.count(F.lit(1)).alias("_distinct"),
        F.slice(F.sort_array(F.collect_list("_e")), 1, cap + 1).alias("_bag"))
    joined = instances.join(bags.withColumnRenamed(owner, "_owner"), F.col(owner) == F.col("_owner"), "left")
    bag = F.coalesce(F.col("_bag"), F.array().cast(BAG_TYPE))
    # A row that fed the bags leaves out its own occurrence: its item unless another training row has it.
    kept = F.filter(bag, lambda e: ~(feeds & (e["_v"] == F.col(items)) & (e["_n"] == 1)))
    available = F.coalesce(F.col("_distinct"), F.lit(0)) - (F.size(bag) - F.size(kept))  # before the cap
    return (joined.withColumn(history.name, F.transform(F.slice(kept, 1, cap), lambda e: e["_v"]))
            .withColumn(CUT_PREFIX + history.name, available > cap)
            .drop("_owner", "_distinct", "_bag"))


def add_histories(instances: DataFrame, histories: Sequence[Field], fields_by_name: Mapping[str, Field], *,
                  seed: int, positives_only: bool) -> DataFrame:
    """``add_history`` for each history field in turn."""
    for h in histories:
        instances = add_history(instances, h, fields_by_name[h.of], seed=seed, positives_only=positives_only)
    return instances


def history_counts(instances: DataFrame, histories: Sequence[Field]) -> dict[str, dict[str, dict[str, int]]]:
    """Per history field and split: ``rows_empty`` (rows with an empty bag) and ``rows_capped``
    (rows whose bag the cap cut), from instances after ``add_histories`` (one job; a few numbers
    collected)."""
    aggs = []
    for i, h in enumerate(histories):
        aggs += [F.sum((F.size(h.name) == 0).cast("long")).alias(f"_e{i}"),
                 F.sum(F.col(CUT_PREFIX + h.name).cast("long")).alias(f"_c{i}")]
    per_split = {r[SPLIT]: r for r in instances.groupBy(SPLIT).agg(*aggs).collect()}
    return {h.name: {s: {"rows_empty": int(per_split[s][f"_e{i}"]) if s in per_split else 0,
                         "rows_capped": int(per_split[s][f"_c{i}"]) if s in per_split else 0} for s in SPLITS}
            for i, h in enumerate(histories)}
