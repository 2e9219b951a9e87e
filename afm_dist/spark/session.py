"""Build Spark sessions for afm-dist jobs with safe defaults."""
from __future__ import annotations

import os

from pyspark.sql import SparkSession


def build_session(app_name: str, *, master: str | None = None, conf: dict[str, str] | None = None) -> SparkSession:
    """Create (or reuse) a SparkSession.

    The master comes from ``master``, else from what ``spark-submit`` set, else
    ``AFM_SPARK_MASTER``, else ``local[*]``. The Spark UI stays off unless
    ``AFM_SPARK_UI=1``; when on it binds to the loopback address only. Local files are read and
    written by Hadoop's raw local filesystem: no ``.crc`` checksum side files are verified or written.
    """
    builder = SparkSession.builder.appName(app_name)
    chosen = master or os.environ.get("AFM_SPARK_MASTER")
    if chosen:
        builder = builder.master(chosen)
    elif not _launched_by_spark_submit():
        builder = builder.master("local[*]")
    ui_on = os.environ.get("AFM_SPARK_UI", "0") == "1"
    builder = builder.config("spark.ui.enabled", "true" if ui_on else "false")
    if ui_on:
        builder = builder.config("spark.driver.bindAddress", "127.0.0.1")
    defaults = {
        "spark.sql.session.timeZone": "UTC",
        # Spark 4 turns ANSI SQL on by default: a cast of a malformed value then fails the job instead
        # of giving null, which parsing counts and keeps aside as a rejected row. Spark 3.5's default.
        "spark.sql.ansi.enabled": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        # Local paths without Hadoop's checksum layer: a stale ".NAME.crc" beside an input (the file
        # rewritten by a tool other than Hadoop) no longer fails the job with a ChecksumException, and
        # a ':' in a file name no longer fails building the name of that side file (bugcases2 02, 03).
        "spark.hadoop.fs.file.impl": "org.apache.hadoop.fs.RawLocalFileSystem",
        # ... also where spark-submit already cached a checksummed one for file: (its --py-files)
        "spark.hadoop.fs.file.impl.disable.cache": "true",
    }
    for key, value in {**defaults, **(conf or {})}.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def _launched_by_spark_submit() -> bool:
    """spark-submit's PythonRunner starts the driver with a gateway port; its --master then rules."""
    return "PYSPARK_GATEWAY_PORT" in os.environ
