"""The SparkSession for local runs (``python -m dp_spark``) and its settings."""

from __future__ import annotations

import os
import sys

from pyspark.sql import SparkSession

# Settings every dp-spark session needs, also under spark-submit.
REQUIRED_CONF = {
    # Re-running one partition replaces it and nothing else.
    "spark.sql.sources.partitionOverwriteMode": "dynamic",
}


def get_session(app_name: str, master: str | None = None, max_records_per_batch: int = 10_000) -> SparkSession:
    """Under spark-submit, its session; otherwise a local one (``master``,
    default ``$DP_SPARK_MASTER`` or local[2]) bound to loopback."""
    builder = SparkSession.builder.appName(app_name)
    launched_by_spark_submit = "PYSPARK_GATEWAY_PORT" in os.environ
    if master or not launched_by_spark_submit:
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        # Workers must run this interpreter (the one with dp-spark installed),
        # not whatever "python3" is first on the PATH.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = (
            builder.master(master or os.environ.get("DP_SPARK_MASTER", "local[2]"))
            .config("spark.driver.host", "127.0.0.1")
            .config("spark.driver.bindAddress", "127.0.0.1")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.sql.shuffle.partitions", "4")
        )
    for key, value in REQUIRED_CONF.items():
        builder = builder.config(key, value)
    builder = builder.config("spark.sql.execution.arrow.maxRecordsPerBatch", str(max_records_per_batch))
    return builder.getOrCreate()
