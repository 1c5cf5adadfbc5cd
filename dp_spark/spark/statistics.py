"""Statistics from DataFrame aggregation: each task emits its partial
statistics as rows beside the perturbed rows, and Spark sums them.

Why rows and not an accumulator: an accumulator updated in a transformation
double counts when a stage is recomputed (and Spark Connect has none); rows
of the result are counted once per row of the result, however many times a
task ran. Each task appends, after its data, one row per (output column,
statistic, key) with the partial count: counters (key 0), counts by name (entity types), the histogram of
perturbed tokens per row, words seen and changed (key: word id), and
(original, substitute) pairs (key: original x |V| + substitute). A ``groupBy``
sums them; pairs below ``min_count`` are counted, not collected.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from dp_spark.stats import ColumnStatistics

STAT_COLUMN = "__dp_stat"
STAT_FIELDS = (("output", pa.int32(), T.IntegerType()), ("kind", pa.string(), T.StringType()),
               ("key", pa.int64(), T.LongType()), ("count", pa.int64(), T.LongType()))
STAT_ARROW_TYPE = pa.struct([pa.field(name, arrow) for name, arrow, _ in STAT_FIELDS])
STAT_SPARK_TYPE = T.StructType([T.StructField(name, spark) for name, _, spark in STAT_FIELDS])
PAIRS = "pairs"
SUPPRESSED = "pairs_below_min_count"
# Rows of output -1: the row keys that repeat, and the rows holding them.
REPEATED_KEYS, REPEATED_ROWS = "repeated_keys", "repeated_key_rows"
COUNTER_PREFIX = "n:"

_FIELDS = [f for f in dataclasses.fields(ColumnStatistics) if f.name != "vocab_size"]
_COUNTERS = [f.name for f in _FIELDS if f.type in ("int", int)]
_NAMED = [f.name for f in _FIELDS if str(f.type).startswith("dict")]  # counts by name, e.g. entity types
_SPARSE = [f.name for f in _FIELDS if f.name not in _COUNTERS and f.name not in _NAMED]


def statistics_rows(output: int, statistics: ColumnStatistics) -> pa.StructArray:
    """One task's statistics of one output column, as stat rows."""
    kinds, keys, counts = [], [], []
    for name in _COUNTERS:
        kinds.append(np.array([COUNTER_PREFIX + name], dtype=object))
        keys.append(np.zeros(1, np.int64))
        counts.append(np.array([getattr(statistics, name)], np.int64))
    for name in _NAMED:
        named = getattr(statistics, name)
        kinds.append(np.array([f"{name}:{label}" for label in named], dtype=object))
        keys.append(np.zeros(len(named), np.int64))
        counts.append(np.array(list(named.values()), np.int64))
    for name in _SPARSE:
        key, count = getattr(statistics, name)
        kinds.append(np.full(len(key), name, dtype=object))
        keys.append(np.asarray(key, np.int64))
        counts.append(np.asarray(count, np.int64))
    kind = np.concatenate(kinds)
    return pa.StructArray.from_arrays(
        [pa.array(np.full(len(kind), output, np.int32)), pa.array(kind, pa.string()),
         pa.array(np.concatenate(keys)), pa.array(np.concatenate(counts))],
        fields=list(STAT_ARROW_TYPE),
    )


def statistics_batch(schema: pa.Schema, rows: pa.StructArray) -> pa.RecordBatch:
    """A record batch of the combined schema holding only stat rows (every
    data column null)."""
    columns = [rows if field.name == STAT_COLUMN else pa.nulls(len(rows), field.type) for field in schema]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def collect_statistics(
    stat_rows: DataFrame, outputs: list[str], vocab_size: int, min_count: int
) -> dict[str, tuple[ColumnStatistics, int]]:
    """Sum the stat rows (a DataFrame of the stat struct's fields) per output
    column, bringing back counters, histograms, per-word counts and the pairs
    seen at least ``min_count`` times; returns, per output column, its
    statistics (pairs: the frequent ones only) and how many pairs were
    suppressed."""
    return _statistics(_summed(stat_rows, min_count).toPandas(), outputs, vocab_size)


def collect_statistics_and_repeated_keys(
    stat_rows: DataFrame, outputs: list[str], vocab_size: int, min_count: int, data: DataFrame, id_column: str
) -> tuple[dict[str, tuple[ColumnStatistics, int]], tuple[int, int]]:
    """``collect_statistics``, and in the same Spark job (a small run pays
    a job's fixed cost once) how many values of ``id_column`` repeat in
    ``data`` and over how many rows: (statistics, (keys, rows))."""
    repeated = (repeated_keys(data, id_column)
                .select(F.lit(-1).alias("output"),
                        F.expr(f"stack(2, '{REPEATED_KEYS}', keys, '{REPEATED_ROWS}', rows) AS (kind, count)"))
                .select("output", "kind", F.lit(0).cast("long").alias("key"), F.col("count").cast("long")))
    rows = _summed(stat_rows, min_count).unionByName(repeated).toPandas()
    checks = rows[rows["output"] == -1].set_index("kind")["count"]
    repeated_counts = (int(checks.get(REPEATED_KEYS, 0)), int(checks.get(REPEATED_ROWS, 0)))
    return _statistics(rows, outputs, vocab_size), repeated_counts


def repeated_keys(data: DataFrame, id_column: str) -> DataFrame:
    """One row: how many values of ``id_column`` repeat in ``data``
    (``keys``) and over how many rows (``rows``)."""
    return (data.groupBy(id_column).count().where(F.col("count") > 1)
            .agg(F.count(F.lit(1)).alias("keys"), F.coalesce(F.sum("count"), F.lit(0)).alias("rows")))


def _summed(stat_rows: DataFrame, min_count: int) -> DataFrame:
    """The stat rows summed by (output, kind, key), pairs seen fewer than
    ``min_count`` times replaced by one count per output."""
    totals = stat_rows.groupBy("output", "kind", "key").agg(F.sum("count").alias("count"))
    kept = totals.where((F.col("kind") != PAIRS) | (F.col("count") >= min_count))
    suppressed = (
        totals.where((F.col("kind") == PAIRS) & (F.col("count") < min_count))
        .groupBy("output").count()
        .select("output", F.lit(SUPPRESSED).alias("kind"), F.lit(0).cast("long").alias("key"), "count")
    )
    return kept.unionByName(suppressed)


def _statistics(rows: pd.DataFrame, outputs: list[str], vocab_size: int) -> dict[str, tuple[ColumnStatistics, int]]:
    result = {}
    for index, name in enumerate(outputs):
        part = rows[rows["output"] == index]
        values: dict = {"vocab_size": vocab_size}
        for counter in _COUNTERS:
            hit = part.loc[part["kind"] == COUNTER_PREFIX + counter, "count"]
            values[counter] = int(hit.iloc[0]) if len(hit) else 0
        for named in _NAMED:
            hit = part[part["kind"].str.startswith(named + ":")]
            values[named] = {kind.split(":", 1)[1]: int(count) for kind, count in zip(hit["kind"], hit["count"])}
        for sparse in _SPARSE:
            hit = part[part["kind"] == sparse].sort_values("key")
            values[sparse] = (hit["key"].to_numpy(np.int64), hit["count"].to_numpy(np.int64))
        below = part.loc[part["kind"] == SUPPRESSED, "count"]
        result[name] = (ColumnStatistics(**values), int(below.iloc[0]) if len(below) else 0)
    return result
