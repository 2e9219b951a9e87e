"""Synthetic interaction logs drawn from a planted ground-truth AFM, generated inside Spark.

Every value is a pure function of (seed, row number, field), computed by Spark SQL hash
expressions on executors: the same seed gives the same logs on any cluster, any partitioning,
and nothing is generated on the driver.

Fields (cardinalities scale with the number of rows unless given, popularity is Zipf-like unless
``uniform``):

    user      max(1000, rows / 40)     heavy-tailed activity     (``users``: any cardinality)
    item      max(500, rows / 100)     heavy-tailed popularity   (``items``: any cardinality)
    daytime   7
    weekday   7
    city      200                      heavy-tailed
    device    6

Target (explicit, a rating clipped to [1, 5]):

    rating = 3 + Σ_f b_f(value) + Σ_{(f,g) planted} α_fg · <e_f(value), e_g(value)> + noise

with per-value biases b and embeddings e of size ``TRUE_DIM`` drawn from hashes. Only the
``PLANTED_PAIRS`` interact: a model that learns which pairs matter (AFM's attention) should beat
one that weighs every pair the same (FM).
"""
from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

TRUE_DIM = 4
# (field, field, weight): the only interactions in the ground truth.
PLANTED_PAIRS: tuple[tuple[str, str, float], ...] = (
    ("user", "item", 1.0),
    ("item", "daytime", 0.8),
)
FIELDS = ("user", "item", "daytime", "weekday", "city", "device")
TARGET = "rating"


@dataclass(frozen=True)
class FieldSpec:
    name: str
    cardinality: int
    skew: float  # u ** skew maps a uniform draw onto Zipf-like popularity (1.0 = uniform)
    prefix: str


def field_specs(rows: int, users: int | None = None, items: int | None = None,
                uniform: bool = False) -> list[FieldSpec]:
    """Cardinalities grow with the log, as real user and item counts do, unless ``users`` /
    ``items`` say otherwise; ``uniform``: every user and item equally likely (the most distinct
    values for a number of rows: about ``n (1 - exp(-rows / n))`` of ``n`` occur)."""
    return [
        FieldSpec("user", users or max(1000, rows // 40), 1.0 if uniform else 2.0, "u"),
        FieldSpec("item", items or max(500, rows // 100), 1.0 if uniform else 3.0, "i"),
        FieldSpec("daytime", 7, 1.0, "d"),
        FieldSpec("weekday", 7, 1.0, "w"),
        FieldSpec("city", 200, 2.5, "c"),
        FieldSpec("device", 6, 1.5, "v"),
    ]


def _uniform(*parts: Column | str | int) -> Column:
    """A deterministic uniform draw in [0, 1) from a hash of the given parts."""
    cols = [p if isinstance(p, Column) else F.lit(p) for p in parts]
    h = F.xxhash64(*cols)
    return (F.pmod(h, F.lit(1 << 53)).cast("double")) / float(1 << 53)


def _signed(*parts: Column | str | int) -> Column:
    return _uniform(*parts) * 2.0 - 1.0


def generate_logs(spark: SparkSession, rows: int, *, seed: int = 2017, partitions: int | None = None,
                  noise: float = 0.1, malformed_fraction: float = 0.0, users: int | None = None,
                  items: int | None = None, uniform: bool = False) -> DataFrame:
    """Return a DataFrame of ``rows`` synthetic logs with string columns FIELDS and TARGET.

    ``malformed_fraction`` replaces that share of ratings by a non-number, for exercising
    the preprocessing job's rejected-row handling; ``users``, ``items`` and ``uniform``: see
    ``field_specs``.

    Raises:
        ValueError: rows, users or items below 1.
    """
    if rows <= 0 or (users is not None and users <= 0) or (items is not None and items <= 0):
        raise ValueError(f"rows, users and items must be positive, got {rows}, {users}, {items}")
    specs = field_specs(rows, users, items, uniform)
    parts = partitions or max(2, min(2000, rows // 250_000 + 2))
    df = spark.range(0, rows, numPartitions=parts).withColumnRenamed("id", "row")
    for i, spec in enumerate(specs):
        u = _uniform(seed, F.col("row"), i)
        idx = F.least(F.floor(F.pow(u, spec.skew) * spec.cardinality).cast("long"), F.lit(spec.cardinality - 1))
        df = df.withColumn(spec.name + "_idx", idx)
    rating = F.lit(3.0)
    for i, spec in enumerate(specs):
        rating = rating + 0.3 * _signed(seed, "bias", i, F.col(spec.name + "_idx"))
    for f, g, weight in PLANTED_PAIRS:
        fi, gi = FIELDS.index(f), FIELDS.index(g)
        dot = F.lit(0.0)
        for d in range(TRUE_DIM):
            dot = dot + _signed(seed, "emb", fi, F.col(f + "_idx"), d) * _signed(seed, "emb", gi, F.col(g + "_idx"), d)
        rating = rating + F.lit(weight) * dot
    rating = rating + F.lit(noise) * _signed(seed, "noise", F.col("row"))
    rating = F.round(F.least(F.greatest(rating, F.lit(1.0)), F.lit(5.0)), 3).cast("string")
    if malformed_fraction > 0:
        bad = _uniform(seed, "malformed", F.col("row")) < malformed_fraction
        rating = F.when(bad, F.lit("n/a")).otherwise(rating)
    out = [F.concat(F.lit(s.prefix), F.col(s.name + "_idx").cast("string")).alias(s.name) for s in specs]
    return df.select(*out, rating.alias(TARGET))
