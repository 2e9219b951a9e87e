"""History bag fields (schema kind ``history``): every instance gets the other values of field
``items`` that its ``of`` value (a user) has in the training split, capped; each is weighted
1/sqrt(n) where the bag enters the rows' slots (``batch.with_bags`` for a data set's splits, whose
bags are columns of their own; ``encode.assemble`` for raw logs scored).

Two steps, both DataFrame operations (nothing is collected but the per-split counts): a group-by
makes one bag per ``of`` value from the rows that may feed bags (training split; positives only
for an implicit target), and a join hands it to every instance of every split. A value's
occurrences are counted, so that a training row leaves out of its own bag only its own
occurrence: an item the user has in another training row stays. The cap is a seeded sample: a
bag keeps the values first in the order of xxhash64(seed, of id, item id) (with ``order_by``:
latest first, that order breaking ties), the same order for every row of a user, so a training
row's bag differs from the others' at most by its own item. The bags of rows that fed none are
written once per owner (``bag_table``, a data set's ``history/``), so raw logs scored later get
the bag a test row got (``join_training_bags``).
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

from pyspark.sql import Column, DataFrame, Observation
from pyspark.sql import functions as F

from afm_dist.dataset import HISTORY_BAG, HISTORY_FIELD, HISTORY_OWNER, SPLITS, TRAIN
from afm_dist.schema import Field
from afm_dist.spark.encode import LABEL, POSITIVE, SPLIT
from afm_dist.spark.parse import ORDER_PREFIX

CUT_PREFIX = "_cut_"  # + field name: true when the cap left values of the row's bag out
# An owner's values, in the cap's order: minus the latest time (order_by; else 0), seeded rank, local id, occurrences.
BAG_TYPE = "array<struct<_t:double,_k:bigint,_v:int,_n:bigint>>"
# Columns of ``owner_bags``: the owner's local id, its distinct values before the cap, its first cap + 1 values.
OWNER, DISTINCT, BAG = "_owner", "_distinct", "_bag"
# Columns of ``joinable``: the bag's item ids (first cap + 1, in the cap's order), and those of them
# that one feeding row alone put there (occurrences 1: that row leaves them out of its own bag).
IDS, SINGLES = "_ids", "_singles"
# ``add_history`` broadcasts the owners' bags to the rows (a map-side join: the rows keep their
# partitions and order, no shuffle) when owners x (max_values + 1) is at most this many item ids
# (two int arrays: at most 8 bytes an id, 128 MB, which a default 1 GB driver collects and builds into a
# hash table); larger ones are joined by a shuffle on the owner.
BROADCAST_IDS = 16 * 1024 * 1024


def _feeds(history: Field, of: Field, *, positives_only: bool) -> Column:
    """True for a row whose item enters its owner's bag: a training row with both values (a
    positive, for ``positives_only``), its owner not the out-of-vocabulary id."""
    owner, items = of.name, history.items
    feeds = (F.col(SPLIT) == TRAIN) & F.col(owner).isNotNull() & F.col(items).isNotNull()
    if positives_only:
        feeds &= F.col(LABEL) == POSITIVE
    if of.first_id > 0:  # the out-of-vocabulary id stands for many values: no bag of its own
        feeds &= F.col(owner) != 0
    return feeds


def _entry(owner: str, items: str, latest: Column, seed: int) -> list[Column]:
    """The fields of a bag entry (``BAG_TYPE``) but its count ``_n``: minus the latest time of the
    pair (``latest``), the seeded rank, the item's local id."""
    return [(-latest).cast("double").alias("_t"),
            F.xxhash64(F.lit("afm-history"), F.lit(seed), F.col(owner), F.col(items)).alias("_k"),
            F.col(items).cast("int").alias("_v")]


def owner_bags(instances: DataFrame, history: Field, of: Field, *, seed: int, positives_only: bool) -> DataFrame:
    """One row per owner (an ``of`` local id) with at least one training value: ``OWNER`` (int),
    ``DISTINCT`` (its distinct values, before the cap) and ``BAG`` (``BAG_TYPE``: its first
    ``max_values + 1`` values in the cap's order, enough for a training row whose own item is
    among them). The single place the cap's order is made; ``add_history`` and ``bag_table``
    both read it. Arguments as ``add_history``.
    """
    owner, items = of.name, history.items
    latest = F.max(ORDER_PREFIX + history.name) if history.order_by else F.lit(0.0)
    occurrences = (instances.filter(_feeds(history, of, positives_only=positives_only)).groupBy(owner, items)
                   .agg(F.count(F.lit(1)).alias("_n"), latest.alias("_latest"))
                   .select(owner, F.struct(*_entry(owner, items, F.col("_latest"), seed), "_n").alias("_e")))
    return occurrences.groupBy(F.col(owner).cast("int").alias(OWNER)).agg(
        F.count(F.lit(1)).alias(DISTINCT),
        F.slice(F.sort_array(F.collect_list("_e")), 1, history.max_values + 1).alias(BAG))


def bag_table(bags: DataFrame, history: Field) -> DataFrame:
    """``owner_bags`` as written to a data set's ``history/`` (columns ``dataset.HISTORY_*``): the
    owner's local id, the field's name, and the bag of a row that fed none (a validation or test
    row, or a raw log scored later): array<int> of item local ids, the first ``max_values`` in the
    cap's order."""
    return bags.select(F.col(OWNER).alias(HISTORY_OWNER), F.lit(history.name).alias(HISTORY_FIELD),
                       F.transform(F.slice(BAG, 1, history.max_values), lambda e: e["_v"]).alias(HISTORY_BAG))


def joinable(bags: DataFrame, history: Field) -> DataFrame:
    """``owner_bags`` as the rows' join needs them: ``OWNER``, ``DISTINCT``, ``IDS`` (array<int>:
    the first ``max_values + 1`` item ids in the cap's order) and ``SINGLES`` (array<int>: those
    of them with one occurrence). Two int arrays a bag, a quarter of ``BAG_TYPE``'s bytes: what
    ``add_history`` broadcasts."""
    first = F.slice(BAG, 1, history.max_values + 1)
    return bags.select(OWNER, DISTINCT, F.transform(first, lambda e: e["_v"]).alias(IDS),
                       F.transform(F.filter(first, lambda e: e["_n"] == 1), lambda e: e["_v"]).alias(SINGLES))


def broadcasts(owners: int, history: Field, limit: int = BROADCAST_IDS) -> bool:
    """Whether ``add_history`` broadcasts the bags of ``owners`` owners (see ``BROADCAST_IDS``;
    ``limit`` 0: never)."""
    return limit > 0 and owners * (history.max_values + 1) <= limit


def add_history(instances: DataFrame, history: Field, of: Field, *, seed: int, positives_only: bool,
                bags: DataFrame | None = None, broadcast: bool = False) -> DataFrame:
    """Add column ``history.name``: the row's bag, array<int> of ``history.items``' local ids (at
    most ``history.max_values``, in the cap's order; empty when the row has none), and
    ``CUT_PREFIX + history.name``: true when the cap left some of the row's values out.

    ``instances``: encoded instances with ``of`` and ``items`` as local ids (int), ``split`` and,
    for ``positives_only`` (an implicit target: its negatives feed no bag), ``LABEL`` (+1 / -1).
    ``of``: the owner field (its out-of-vocabulary id 0, if it has one, owns no bag: those rows
    get an empty bag and feed none). ``seed``: the schema's, which orders the cap's sample. With
    ``history.order_by``, column ``ORDER_PREFIX + history.name`` (a time) puts the values of the
    latest training rows first. ``bags``: ``owner_bags`` of the same arguments, when the caller
    keeps them (to write them too); computed here otherwise. ``broadcast``: join by broadcasting
    the bags (``broadcasts``), which keeps ``instances``' partitions and order; otherwise by a
    shuffle on the owner.
    """
    owner, items, cap = of.name, history.items, history.max_values
    if bags is None:
        bags = owner_bags(instances, history, of, seed=seed, positives_only=positives_only)
    small = joinable(bags, history)
    feeds = _feeds(history, of, positives_only=positives_only)
    # Not broadcast: a shuffle (sort-merge) join, which Spark would otherwise replace by its own
    # broadcast of a table under spark.sql.autoBroadcastJoinThreshold.
    joined = instances.join(F.broadcast(small) if broadcast else small.hint("merge"), F.col(owner) == F.col(OWNER),
                            "left")
    bag = F.coalesce(F.col(IDS), F.array().cast("array<int>"))
    # A row that fed the bags leaves out its own occurrence: its item, unless another feeding row
    # has the pair too (the item is then not among the singles). Items are distinct within a bag,
    # so the entry is removed by value (compiled; F.array_remove takes a literal only).
    own = F.col(items).cast("int")
    kept = (F.when(feeds & F.array_contains(F.col(SINGLES), own), F.call_function("array_remove", bag, own))
            .otherwise(bag))
    available = F.coalesce(F.col(DISTINCT), F.lit(0)) - (F.size(bag) - F.size(kept))  # before the cap
    return (joined.withColumn(history.name, F.slice(kept, 1, cap))
            .withColumn(CUT_PREFIX + history.name, available > cap)
            .drop(OWNER, DISTINCT, IDS, SINGLES))


def add_histories(instances: DataFrame, histories: Sequence[Field], fields_by_name: Mapping[str, Field], *,
                  seed: int, positives_only: bool, bags: Mapping[str, DataFrame] | None = None,
                  broadcast: Sequence[str] = ()) -> DataFrame:
    """``add_history`` for each history field in turn (``bags``: their ``owner_bags`` by field
    name; ``broadcast``: the names of those whose bags are broadcast)."""
    for h in histories:
        instances = add_history(instances, h, fields_by_name[h.of], seed=seed, positives_only=positives_only,
                                bags=(bags or {}).get(h.name), broadcast=h.name in broadcast)
    return instances


def join_training_bags(rows: DataFrame, bag_tables: DataFrame, histories: Sequence[Field]) -> DataFrame:
    """Add to ``rows`` (encoded rows to score, ``of`` as local ids) column ``h.name`` for each
    history field ``h``: its owner's training bag from ``bag_tables`` (a data set's ``history/``,
    ``bag_table``'s columns), the bag a validation or test row got at preprocessing; an empty
    array<int> for an owner without one (no training value, or the out-of-vocabulary id)."""
    for h in histories:
        bags = bag_tables.filter(F.col(HISTORY_FIELD) == h.name).select(
            F.col(HISTORY_OWNER).alias(OWNER), F.col(HISTORY_BAG).alias(BAG))
        rows = (rows.join(bags, F.col(h.of) == F.col(OWNER), "left")
                .withColumn(h.name, F.coalesce(F.col(BAG), F.array().cast("array<int>"))).drop(OWNER, BAG))
    return rows


def observe_counts(instances: DataFrame, histories: Sequence[Field]
                   ) -> tuple[DataFrame, Callable[[], dict[str, dict[str, dict[str, int]]]]]:
    """``instances`` (after ``add_histories``) with metrics observed by whatever action reads them
    next (``DataFrame.observe``: the splits' write, so no pass of its own), and a function that
    returns them once that action has run: per history field and split, ``rows_empty`` (rows with
    an empty bag) and ``rows_capped`` (rows whose bag the cap cut)."""
    observed = Observation("history")
    aggs = []
    for i, h in enumerate(histories):
        for s in SPLITS:
            in_split = F.col(SPLIT) == s
            aggs += [F.sum((in_split & (F.size(h.name) == 0)).cast("long")).alias(f"_e{i}_{s}"),
                     F.sum((in_split & F.col(CUT_PREFIX + h.name)).cast("long")).alias(f"_c{i}_{s}")]

    def counts() -> dict[str, dict[str, dict[str, int]]]:
        got = observed.get
        return {h.name: {s: {"rows_empty": int(got[f"_e{i}_{s}"] or 0), "rows_capped": int(got[f"_c{i}_{s}"] or 0)}
                         for s in SPLITS} for i, h in enumerate(histories)}

    return instances.observe(observed, *aggs), counts
