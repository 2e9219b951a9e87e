"""Spark writes Parquet; two Petastorm readers (shards 0 and 1 of 2) read every row exactly once."""
import numpy as np
import pytest
from pyspark.sql import functions as F

from afm_dist import petastorm_patch  # first: makes Petastorm importable on pyarrow >= 16 / NumPy 2
from petastorm import make_batch_reader  # noqa: E402


@pytest.mark.stack
def test_two_petastorm_shards_cover_spark_parquet_exactly_once(spark, tmp_path):
    n = 5000
    df = (spark.range(n).withColumnRenamed("id", "row_id")
          .withColumn("ids", F.array(*[(F.col("row_id") * 7 + i).cast("int") for i in range(3)]))
          .withColumn("label", (F.col("row_id") % 2).cast("float")))
    out = tmp_path / "parquet"
    # 10 files of ~500 rows each: more row groups than readers, so sharding is by row group.
    df.repartition(10).write.option("parquet.block.size", 64 * 1024).parquet(str(out))

    # Petastorm 0.13.1 can end a read one row group early under load; afm-dist's loader applies
    # this fix, and so does this check of the environment it relies on.
    petastorm_patch.apply()
    seen = []
    for shard in (0, 1):
        with make_batch_reader(f"file://{out}", cur_shard=shard, shard_count=2, num_epochs=1,
                               workers_count=1, shuffle_row_groups=False) as reader:
            rows = []
            for batch in reader:
                rows.append(batch.row_id)
                ids = np.asarray(batch.ids)
                assert ids.shape == (len(batch.row_id), 3)
                assert (ids[:, 2] == batch.row_id * 7 + 2).all()
            seen.append(np.concatenate(rows))
    assert len(seen[0]) > 0 and len(seen[1]) > 0, "one shard got no rows"
    assert not set(seen[0]) & set(seen[1]), "a row was read by both shards"
    allrows = np.sort(np.concatenate(seen))
    np.testing.assert_array_equal(allrows, np.arange(n))
