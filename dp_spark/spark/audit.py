"""The auditor on Spark, for large vocabularies: the pairs of an audit
spread over tasks (pairs of one word kept together, so that its law is
computed once), each task auditing its pairs with ``dp_spark.audit.audit_pairs``
under one Bonferroni correction for the whole family, the verdict drawn on
the driver. The artifact travels to the executors as files, as for the job.
"""

from __future__ import annotations

import time
from io import StringIO
from typing import Any, Iterator

import pandas as pd
import pyarrow as pa
from pyspark.sql import SparkSession

from dp_spark.audit import AuditResult, AuditSettings, audit_pairs, audit_plan, summarize, total_variations
from dp_spark.resources import Runtime
from dp_spark.spark.session import phase
from dp_spark.spark.shipping import ship_artifact, worker_runtime


def audit_on_spark(spark: SparkSession, runtime: Runtime, name: str, epsilon: float, params: dict[str, Any],
                   settings: AuditSettings) -> AuditResult:
    started = time.perf_counter()
    mechanism = runtime.mechanism(name, epsilon, params)
    words, pairs = audit_plan(mechanism, settings)
    shipped = ship_artifact(spark, runtime.artifact)
    family = len(pairs)

    def audit_slices(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        on_worker = worker_runtime(shipped, 1).mechanism(name, epsilon, params)
        for batch in batches:
            slice_pairs = batch.to_pandas()[["word_id", "partner_id"]].to_numpy()
            table = audit_pairs(on_worker, slice_pairs, settings, family_size=family)
            yield pa.RecordBatch.from_pydict({"table": [table.to_json(orient="split")]})

    partitions = max(2, int(spark.conf.get("spark.sql.shuffle.partitions")) * 2)
    frame = spark.createDataFrame(pd.DataFrame({"word_id": pairs[:, 0], "partner_id": pairs[:, 1]}))
    with phase(spark, "audit", f"{name} eps {epsilon:g}: {family} pairs"):
        parts = frame.repartition(partitions, "word_id").mapInArrow(audit_slices, "table string").collect()
    table = pd.concat([pd.read_json(StringIO(row["table"]), orient="split") for row in parts], ignore_index=True)
    return summarize(mechanism, table, settings, seconds=time.perf_counter() - started,
                     total_variations=total_variations(mechanism, words, settings))
