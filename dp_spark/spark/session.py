"""The SparkSession every command runs in: classic or Spark Connect, under
spark-submit or started here, and the settings dp-spark needs in both.

Nothing in dp-spark touches ``SparkContext``: Spark Connect (Databricks
serverless and shared clusters) has none. Phases are named through what
both modes have: job tags (``spark.addTag``) and log lines, plus the job
description in the Spark UI where a SparkContext exists.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Iterator

from pyspark.sql import SparkSession

log = logging.getLogger("dp_spark")

# SQL settings every dp-spark session needs (runtime settings: they can be
# set on a session that spark-submit or a Connect server created).
REQUIRED_CONF = {
    # Catalog and transactional-format outputs replace the partitions a run
    # writes and nothing else.
    "spark.sql.sources.partitionOverwriteMode": "dynamic",
}
DEFAULT_BATCH_RECORDS = 10_000
# Arrow batches sent to Python workers are also capped in bytes, so that a
# batch of very long rows (whole documents) stays bounded in memory.
MAX_BATCH_BYTES = 32 << 20


def is_connect(spark: SparkSession) -> bool:
    """Whether ``spark`` is a Spark Connect client session."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def start_session(
    app_name: str,
    master: str | None = None,
    remote: str | None = None,
    max_records_per_batch: int = DEFAULT_BATCH_RECORDS,
) -> tuple[SparkSession, bool]:
    """A session and whether this call started it (then the caller stops it).

    ``remote``: a Spark Connect URL (``sc://host:15002``, or ``local[N]`` for
    a local Connect server; default ``$SPARK_REMOTE``). Otherwise the session
    spark-submit made, or a local classic one (``master``, default
    ``$DP_SPARK_MASTER`` or local[2]) bound to loopback."""
    remote = remote or os.environ.get("SPARK_REMOTE")
    active = SparkSession.getActiveSession()
    if active is not None and not remote and not master:
        started = False
        spark = active
    elif remote:
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        spark = SparkSession.builder.appName(app_name).remote(remote).getOrCreate()
        started = True
    else:
        launched_by_spark_submit = "PYSPARK_GATEWAY_PORT" in os.environ
        builder = SparkSession.builder.appName(app_name)
        if master or not launched_by_spark_submit:
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
            # Workers must run this interpreter (the one with dp-spark installed),
            # not whatever "python3" is first on the PATH.
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
            builder = (
                builder.master(master or os.environ.get("DP_SPARK_MASTER", "local[2]"))
                .config("spark.driver.host", "127.0.0.1")
                .config("spark.driver.bindAddress", "127.0.0.1")
                .config("spark.sql.shuffle.partitions", "4")
                .config("spark.ui.showConsoleProgress", "true")
            )
        started = SparkSession.getActiveSession() is None
        spark = builder.getOrCreate()
    configure(spark, max_records_per_batch)
    return spark, started


def configure(spark: SparkSession, max_records_per_batch: int = DEFAULT_BATCH_RECORDS) -> None:
    for key, value in REQUIRED_CONF.items():
        spark.conf.set(key, value)
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(max_records_per_batch))
    spark.conf.set("spark.sql.execution.arrow.maxBytesPerBatch", str(MAX_BATCH_BYTES))


@contextlib.contextmanager
def session(
    app_name: str,
    master: str | None = None,
    remote: str | None = None,
    max_records_per_batch: int = DEFAULT_BATCH_RECORDS,
) -> Iterator[SparkSession]:
    """``start_session`` as a context: stops the session afterwards only if it started it."""
    spark, started = start_session(app_name, master, remote, max_records_per_batch)
    try:
        yield spark
    finally:
        if started:
            spark.stop()


@contextlib.contextmanager
def phase(spark: SparkSession, run: str, name: str) -> Iterator[None]:
    """Name the Spark jobs of one phase of a run and log it: under Connect a
    job tag (``dp-spark:<run>:<phase>``, usable with ``spark.interruptTag``),
    under classic Spark the job description shown in the Spark UI. (Classic
    tags are avoided: once a classic session has one, MLlib models that keep
    the session, such as a logistic regression's training summary, can no
    longer be serialised into tasks.)"""
    log.info("%s: %s", run, name)
    connect = is_connect(spark)
    tag = f"dp-spark:{run}:{name}".replace(",", ";")
    if connect:
        spark.addTag(tag)
    else:
        spark.sparkContext.setJobDescription(f"dp-spark {run}: {name}")
    try:
        yield
    finally:
        if connect:
            spark.removeTag(tag)
        else:
            spark.sparkContext.setJobDescription(None)
