"""dp-spark: word-level metric differential privacy for text columns, at
data-lake scale on Apache Spark.

The public surface (everything else is internal and may change):

    Mechanisms and guarantees (numpy and faiss, no Spark)
        Embeddings, build_mechanism, MECHANISMS, Mechanism
        Guarantee, compose
        audit (the module: audit.audit(mechanism), audit.AuditSettings)
    Spark (imported on first use; pyspark from the cluster or `pip install 'dp-spark[spark]'`)
        DPTextPerturber   a pyspark.ml Transformer
        perturb           several perturbers in one pass, with statistics
        run, Seed         the perturb job (one transaction per output root)
    Configuration and errors
        load_config, Config
        DPSparkError, ConfigError, InputError, PrivacyRefusal, DPRuntimeError
    Command line: ``python -m dp_spark`` (dp_spark.cli)

>>> import numpy as np
>>> from dp_spark import Embeddings, build_mechanism
>>> e = Embeddings.from_arrays(["a", "b", "c"], np.array([[0.0], [1.0], [5.0]]))
>>> build_mechanism("tem", e, epsilon=2.0).guarantee().statement
'2-d_X, d = euclidean distance'
"""

from __future__ import annotations

from typing import Any

from dp_spark import audit
from dp_spark.config import Config, load_config
from dp_spark.embeddings import Embeddings
from dp_spark.errors import ConfigError, DPRuntimeError, DPSparkError, InputError, PrivacyRefusal
from dp_spark.guarantees import Guarantee, compose
from dp_spark.mechanisms import MECHANISMS, Mechanism, build_mechanism

_SPARK = {
    "DPTextPerturber": "dp_spark.spark.perturber",
    "perturb": "dp_spark.spark.perturber",
    "run": "dp_spark.spark.perturb",
    "Seed": "dp_spark.spark.perturb",
}

__all__ = [
    "MECHANISMS", "Config", "ConfigError", "DPRuntimeError", "DPSparkError", "DPTextPerturber",
    "Embeddings", "Guarantee", "InputError", "Mechanism", "PrivacyRefusal", "Seed", "audit", "build_mechanism",
    "compose", "load_config", "perturb", "run",
]


def __getattr__(name: str) -> Any:
    """The Spark half of the API, imported when first used (so that the pure
    half works where pyspark is not installed)."""
    if name in _SPARK:
        import importlib

        return getattr(importlib.import_module(_SPARK[name]), name)
    raise AttributeError(f"module 'dp_spark' has no attribute {name!r}")
