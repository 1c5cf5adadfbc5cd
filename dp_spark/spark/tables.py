"""The run's output tables besides the perturbed one: privacy_stats,
substitution_stats and substitution_rates, built on the driver from the
summed statistics and written as one Parquet file each (pyarrow, no Spark
job: they are small), into the run's staging folder.

substitution_stats and substitution_rates reveal which words the input
holds, so pairs and words seen fewer than ``min_count`` times are left out
(and counted in privacy_stats).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dp_spark import storage
from dp_spark.config import ColumnConfig
from dp_spark.guarantees import Guarantee
from dp_spark.ledger import ColumnTotal
from dp_spark.stats import ColumnStatistics
from dp_spark.tokenize import ENTITY_TYPES

STATISTICS_TABLES = ("privacy_stats", "substitution_stats", "substitution_rates")


@dataclass(frozen=True)
class ColumnReport:
    """Everything privacy_stats says about one released column."""

    column: ColumnConfig
    statistics: ColumnStatistics
    suppressed_pairs: int
    described: dict[str, Any]
    guarantee: Guarantee
    total: ColumnTotal
    deniability: dict[str, Any]


def privacy_stats(run_id: str, dataset: str, partition: str, reports: list[ColumnReport], min_count: int
                  ) -> pd.DataFrame:
    rows = []
    for report in reports:
        column, s, total = report.column, report.statistics, report.total
        row_epsilon = s.row_epsilon(column.epsilon)
        rows.append({
            "run_id": run_id,
            "dataset": dataset,
            "partition": partition,
            "column": column.name,
            "output_column": column.output_name,
            "mechanism": column.mechanism,
            "parameters": json.dumps(report.described, sort_keys=True, default=str),
            "epsilon": column.epsilon,
            **report.guarantee.to_record(),
            "epsilon_total_per_token": total.epsilon if total.bounded else None,
            "delta_total_per_token": total.delta if total.bounded else None,
            "total_metrics": ", ".join(total.metrics),
            "releases_without_guarantee": total.unprotected,
            "rows": s.rows,
            "null_rows": s.null_rows,
            "tokens": s.tokens,
            "tokens_perturbed": s.perturbed,
            "tokens_oov": s.oov,
            # kept verbatim although outside the vocabulary (oov = "keep"): released without protection
            "tokens_unprotected": s.unprotected,
            "tokens_changed": s.changed,
            "tokens_skipped": s.skipped,
            **{f"entities_{kind}": s.entities.get(kind, 0) for kind in ENTITY_TYPES},
            "substitution_rate": s.substitution_rate,
            # epsilon x perturbed tokens per row: what the row's guarantee scales with
            "row_epsilon_mean": row_epsilon["mean"] if report.guarantee.holds else None,
            "row_epsilon_p50": row_epsilon["p50"] if report.guarantee.holds else None,
            "row_epsilon_p99": row_epsilon["p99"] if report.guarantee.holds else None,
            "row_epsilon_max": row_epsilon["max"] if report.guarantee.holds else None,
            "min_count": min_count,
            "pairs_reported": len(s.pairs[0]),
            "pairs_suppressed": report.suppressed_pairs,
            **report.deniability,
        })
    return pd.DataFrame(rows)


def substitution_tables(run_id: str, reports: list[ColumnReport], words: pa.Array, min_count: int
                        ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(substitution_stats, substitution_rates) of the run's columns."""
    pairs, rates = [], []
    for report in reports:
        column, s = report.column, report.statistics
        originals, substitutes, counts = s.frequent_pairs(min_count)
        pairs.append(pd.DataFrame({
            "run_id": run_id, "column": column.name, "output_column": column.output_name,
            "original": _words(words, originals), "substitute": _words(words, substitutes), "count": counts,
        }))
        word_ids, seen, changed = s.word_rates(min_count)
        rates.append(pd.DataFrame({
            "run_id": run_id, "column": column.name, "output_column": column.output_name,
            "word": _words(words, word_ids), "seen": seen, "changed": changed,
            "substitution_rate": changed / seen if len(seen) else np.zeros(0),
        }))
    return pd.concat(pairs, ignore_index=True), pd.concat(rates, ignore_index=True)


def _words(words: pa.Array, ids: np.ndarray) -> list[str]:
    return words.take(pa.array(ids, pa.int64())).to_pylist() if len(ids) else []


def write_frame(frame: pd.DataFrame, directory: str, name: str) -> str | None:
    """``frame`` as one Parquet file ``name`` under ``directory`` (nothing for an empty frame)."""
    if frame.empty:
        return None
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buffer)
    location = storage.join(directory, name)
    storage.write_bytes(location, buffer.getvalue())
    return location
