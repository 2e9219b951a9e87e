"""The baseline of bench/bench_preprocess.py (issue 28): what a Spark engineer writes with MLlib for
the same logs. Read the TSV (header), ``StringIndexer`` over the six categorical fields (fit and
transform), a seeded 70/20/10 ``randomSplit``, three Parquet outputs. ``--implicit``: every log a
positive (label 1) and two negatives (label -1) with the item replaced by a seeded random item index,
before the split. Run with ./spark-submit.sh like the job it is compared with; prints one JSON line
with the seconds from the session's start to the last file written.

    ./spark-submit.sh bench/mllib_preprocess.py --input LOGS --output OUT [--implicit]
"""
from __future__ import annotations

import argparse
import json
import time

from pyspark.ml.feature import StringIndexer
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

FIELDS = ("user", "item", "daytime", "weekday", "city", "device")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--implicit", action="store_true")
    a = p.parse_args()
    spark = SparkSession.builder.appName("mllib-preprocess").config("spark.ui.enabled", "false").getOrCreate()
    started = time.monotonic()
    logs = spark.read.option("header", True).option("sep", "\t").csv(a.input)
    indexer = StringIndexer(inputCols=list(FIELDS), outputCols=[f"{f}_id" for f in FIELDS], handleInvalid="keep")
    encoded = indexer.fit(logs).transform(logs)
    if a.implicit:
        items = encoded.agg(F.max("item_id")).first()[0] + 1
        positives = encoded.withColumn("label", F.lit(1.0))
        negatives = (encoded.crossJoin(spark.range(2).withColumnRenamed("id", "_k"))
                     .withColumn("item_id", F.floor(F.rand(2017) * items).cast("double"))
                     .withColumn("label", F.lit(-1.0)).drop("_k"))
        encoded = positives.unionByName(negatives)
    else:
        encoded = encoded.withColumn("label", F.col("rating").cast("float"))
    kept = encoded.select(*[f"{f}_id" for f in FIELDS], "label")
    for name, part in zip(("train", "validation", "test"), kept.randomSplit([0.7, 0.2, 0.1], seed=2017)):
        part.write.mode("overwrite").parquet(f"{a.output}/{name}")
    print(json.dumps({"seconds": round(time.monotonic() - started, 1)}), flush=True)
    spark.stop()


if __name__ == "__main__":
    main()
