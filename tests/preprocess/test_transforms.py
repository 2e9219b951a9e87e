"""The library's DataFrame -> DataFrame transforms, on small frames built in the test."""
from __future__ import annotations

from collections import Counter

from pyspark.sql import functions as F

from afm_dist.dataset import ROW_ID
from afm_dist.schema import Field, Split
from afm_dist.spark import encode, parse
from afm_dist.spark.readers import TEXT

USER = Field(name="user", kind="categorical", column="user", oov=False)
ITEM = Field(name="item", kind="categorical", column="item", oov=False)


def test_negatives_never_make_an_observed_positive(spark):
    """Context u0 has items 0, 1, 2 of 4 observed: every negative must be item 3, even when the
    hashed tries run out (max_tries=1 leaves the rest to the scan for a free id). Context u1 has
    all 4 observed: it can have no negative at all."""
    logs = [("u0 i0", 0, 0), ("u0 i1", 0, 1), ("u0 i2", 0, 2), ("u0 i2", 0, 2),  # a duplicated log
            ("u1 i0", 1, 0), ("u1 i1", 1, 1), ("u1 i2", 1, 2), ("u1 i3", 1, 3)]
    encoded = spark.createDataFrame(logs, f"{TEXT} string, user int, item int")
    out = encode.implicit_instances(encoded, [USER, ITEM], ITEM, 4, per_positive=3, max_tries=1, seed=5,
                                    partitions=3).collect()
    positives = [r for r in out if r[parse.LABEL] == encode.POSITIVE]
    negatives = [r for r in out if r[parse.LABEL] == encode.NEGATIVE]
    assert Counter((r.user, r.item) for r in positives) == Counter((u, i) for _, u, i in logs)
    assert len(negatives) == 3 * 4 and {(r.user, r.item) for r in negatives} == {(0, 3)}
    ids = [r[ROW_ID] for r in out]
    assert len(set(ids)) == len(ids)  # the two copies of "u0 i2" and all negatives have ids of their own


def test_unrolled_draws_pick_what_the_lambdas_pick_whatever_the_window_partitions(spark, monkeypatch):
    """Negative sampling's draws, unrolled into a CASE (issue 28), give the instances of the
    lambda form, also where a context has seen all but one item (the 3 draws are often all
    taken, so the scan after them decides) or every item (no negative); and the window's
    partition count, no longer the output's, changes nothing."""
    logs = ([(f"u0 i{i}", 0, i) for i in range(1, 10)] + [(f"u1 i{i}", 1, i) for i in range(10)]
            + [(f"u{u} i{u % 10}", u, u % 10) for u in range(2, 60)] + [("u2 i2", 2, 2)])  # a duplicated log
    encoded = spark.createDataFrame(logs, f"{TEXT} string, user int, item int")

    def instances(partitions: int):
        return sorted(tuple(r) for r in encode.implicit_instances(
            encoded, [USER, ITEM], ITEM, 10, per_positive=3, max_tries=3, seed=7, partitions=partitions).collect())

    unrolled = instances(5)
    monkeypatch.setattr(encode, "UNROLLED_DRAWS", 0)
    assert instances(5) == unrolled
    assert instances(1) == instances(13) == unrolled
    u0 = [r for r in unrolled if r[1] == 0 and r[3] == encode.NEGATIVE]
    assert len(u0) == 3 * 9 and {r[2] for r in u0} == {0}  # item 0, the only one u0 has not seen
    assert not [r for r in unrolled if r[1] == 1 and r[3] == encode.NEGATIVE]
    assert len([r for r in unrolled if r[3] == encode.NEGATIVE]) == 3 * (9 + 59)


def test_negatives_draw_across_the_vocabulary_and_skip_the_oov_id(spark):
    item = Field(name="item", kind="categorical", column="item")  # id 0: out of vocabulary
    logs = [(f"u{u} i1", u, 1) for u in range(300)]
    encoded = spark.createDataFrame(logs, f"{TEXT} string, user int, item int")
    negatives = [r.item for r in encode.implicit_instances(encoded, [USER, item], item, 11, per_positive=2,
                                                           max_tries=10, seed=1).collect()
                 if r[parse.LABEL] == encode.NEGATIVE]
    assert len(negatives) == 600 and set(negatives) == set(range(2, 11))  # never 0 (oov) or 1 (observed)
    assert max(Counter(negatives).values()) < 2.5 * 600 / 9  # roughly uniform


def test_splits_follow_the_fractions_and_the_seed(spark):
    rows = spark.range(20000).select(F.xxhash64("id").alias(ROW_ID))
    split = Split(train=0.7, validation=0.2, test=0.1)
    a = {r[ROW_ID]: r.split for r in encode.assign_splits(rows, split, 1).collect()}
    b = {r[ROW_ID]: r.split for r in encode.assign_splits(rows.repartition(7), split, 1).collect()}
    c = {r[ROW_ID]: r.split for r in encode.assign_splits(rows, split, 2).collect()}
    assert a == b  # whatever the partitioning
    shares = Counter(a.values())
    assert abs(shares["train"] / 20000 - 0.7) < 0.01 and abs(shares["test"] / 20000 - 0.1) < 0.01
    moved = sum(a[k] != c[k] for k in a)
    assert 0.3 * 20000 < moved < 0.6 * 20000  # another seed, another split (0.46 expected)


def test_row_ids_number_identical_logs(spark):
    texts = ["a", "b", "a", "a", "c"]
    df = spark.createDataFrame([(t,) for t in texts], f"{TEXT} string")
    one = encode.with_row_ids(df, [TEXT], partitions=1).collect()
    many = encode.with_row_ids(df.repartition(3), [TEXT], partitions=4).collect()
    assert sorted((r[ROW_ID], r[TEXT]) for r in one) == sorted((r[ROW_ID], r[TEXT]) for r in many)
    assert len({r[ROW_ID] for r in one}) == 5
