"""The auditor on Spark gives the numpy auditor's verdict: pairs spread over
tasks, one Bonferroni family, the same per-pair losses."""

from __future__ import annotations

import pytest

from dp_spark.audit import AuditSettings, audit
from dp_spark.config import EmbeddingsConfig, IndexConfig
from dp_spark.resources import Runtime, artifact_for, complete_params
from dp_spark.spark.audit import audit_on_spark


@pytest.mark.e2e
@pytest.mark.parametrize("name, epsilon, settings", [
    ("tem", 8.0, AuditSettings(words=12, neighbours_per_word=2)),
    ("mlap", 10.0, AuditSettings(words=4, neighbours_per_word=1, draws=2000)),
])
def test_spark_audit_equals_the_numpy_audit(spark, embeddings_files, name, epsilon, settings):
    vectors, words = embeddings_files
    params = complete_params(name, {}, "flat")
    runtime = Runtime(artifact_for(EmbeddingsConfig(source="npy", path=str(vectors), vocabulary=str(words)),
                                   IndexConfig(), [(name, params)]))
    on_spark = audit_on_spark(spark, runtime, name, epsilon, params, settings)
    local = audit(runtime.mechanism(name, epsilon, params), settings)
    assert not on_spark.refuted and on_spark.pairs == local.pairs
    merged = on_spark.table.merge(local.table, on=["word_id", "partner_id"], suffixes=("_spark", "_local"))
    assert len(merged) == local.pairs
    assert (merged["loss_spark"] - merged["loss_local"]).abs().max() < 1e-9
