"""Reading the input, writing the perturbed table atomically, and small files
(manifests, result tables, plots) on whatever filesystem the output lives on
(local, HDFS, S3...)."""

from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from dp_spark.config import InputConfig, OutputConfig

log = logging.getLogger(__name__)


class HadoopFileSystem:
    """The Hadoop FileSystem of a path, through Spark's JVM."""

    def __init__(self, spark: SparkSession, path: str) -> None:
        jvm = spark.sparkContext._jvm
        self._jvm = jvm
        self._conf = spark.sparkContext._jsc.hadoopConfiguration()
        self._fs = jvm.org.apache.hadoop.fs.Path(path).getFileSystem(self._conf)

    def _path(self, path: str) -> Any:
        return self._jvm.org.apache.hadoop.fs.Path(path)

    def exists(self, path: str) -> bool:
        return bool(self._fs.exists(self._path(path)))

    def delete(self, path: str) -> None:
        self._fs.delete(self._path(path), True)

    def rename(self, source: str, target: str) -> None:
        parent = self._path(target).getParent()
        if parent is not None:
            self._fs.mkdirs(parent)
        if not self._fs.rename(self._path(source), self._path(target)):
            raise OSError(f"could not rename {source} to {target}")

    def write_text(self, path: str, text: str) -> None:
        self.write_bytes(path, text.encode("utf-8"))

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write a small file whole: to a temporary name, then renamed into place."""
        temporary = f"{path}.tmp"
        stream = self._fs.create(self._path(temporary), True)
        try:
            stream.write(bytearray(data))
        finally:
            stream.close()
        if self.exists(path):
            self.delete(path)
        self.rename(temporary, path)

    def read_text(self, path: str) -> str:
        stream = self._fs.open(self._path(path))
        try:
            reader = self._jvm.java.io.BufferedReader(self._jvm.java.io.InputStreamReader(stream, "UTF-8"))
            lines = []
            line = reader.readLine()
            while line is not None:
                lines.append(line)
                line = reader.readLine()
            return "\n".join(lines)
        finally:
            stream.close()


def write_result_table(spark: SparkSession, frame: pd.DataFrame, location: str) -> None:
    """A small driver-side result table as one Parquet file at ``location``
    and one CSV file at ``location``.csv. Infinities are written as null, and
    a column with no value at all (which has no type) as strings."""
    df = spark.createDataFrame(frame.replace([np.inf], np.nan))
    df = df.select([
        df[f.name].cast("string") if isinstance(f.dataType, T.NullType) else df[f.name] for f in df.schema
    ]).coalesce(1)
    df.write.mode("overwrite").parquet(location)
    df.write.mode("overwrite").option("header", "true").csv(location + ".csv")


def write_plot(fs: HadoopFileSystem, location: str, render: Callable[[], bytes]) -> bool:
    """Write the PNG that ``render`` draws; without matplotlib, warn and
    return False."""
    try:
        png = render()
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'dp-spark[plot]'): no plot written")
        return False
    fs.write_bytes(location, png)
    return True


def read_input(spark: SparkSession, config: InputConfig, partitions: dict[str, str]) -> DataFrame:
    """The input table, restricted to ``partitions`` (column = value each)."""
    if config.table:
        df = spark.table(config.table)
    else:
        reader = spark.read.format(config.format).options(**config.options)
        if config.schema:
            reader = reader.schema(config.schema)
        df = reader.load(config.path)
    for key, value in partitions.items():
        if key not in df.columns:
            raise ValueError(
                f"--partition {key}={value}: the input has no column {key!r} "
                f"(columns: {', '.join(df.columns)})"
            )
        df = df.where(F.col(key) == F.lit(value))
    return df


def write_table(spark: SparkSession, df: DataFrame, config: OutputConfig, run_id: str) -> str:
    """Write the perturbed table so that a failed run leaves nothing half-written.

    Partitioned output: Spark's dynamic partition overwrite, which stages the
    files and moves each written partition into place at job commit, replacing
    only the partitions this run wrote. Unpartitioned output: written to a
    staging directory, then swapped in by renames after the write succeeded.
    """
    table = config.location("table")
    fs = HadoopFileSystem(spark, table)
    if config.mode == "error" and fs.exists(table):
        raise FileExistsError(f"output table {table} exists and output.mode is 'error'")
    writer = df.write.format(config.format).options(**config.options)
    if config.partition_by:
        writer.partitionBy(*config.partition_by).mode("overwrite").option(
            "partitionOverwriteMode", "dynamic"
        ).save(table)
        return table
    staging = config.location(f"_staging-{run_id}")
    try:
        writer.mode("errorifexists").save(f"{staging}/table")
    except Exception:
        fs.delete(staging)
        raise
    if fs.exists(table):
        fs.rename(table, f"{staging}/previous")
    fs.rename(f"{staging}/table", table)
    fs.delete(staging)
    return table
