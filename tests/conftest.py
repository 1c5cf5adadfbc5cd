"""Shared fixtures: small synthetic vocabularies whose distributions can be
computed exactly, and an isolated neighbour-table cache."""

from __future__ import annotations

import numpy as np
import pytest

from dp_spark.embeddings import Embeddings


def clustered_embeddings(size: int, dim: int, seed: int = 7) -> Embeddings:
    """``size`` words in R^dim: dense clusters of different spreads plus sparse
    outliers, so that neighbourhoods differ in density as they do in GloVe."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(8, dim))
    spreads = np.array([0.3, 0.5, 0.8, 1.0, 1.2, 0.4, 0.6, 2.0])
    cluster = rng.integers(0, 8, size)
    vectors = centres[cluster] + rng.normal(size=(size, dim)) * spreads[cluster, None]
    words = [f"w{i:03d}" for i in range(size)]
    return Embeddings.from_arrays(words, vectors.astype(np.float32))


def pytest_addoption(parser):
    parser.addoption("--spark-mode", choices=("classic", "connect"), default="classic",
                     help="run the Spark tests on classic local[2] or on a local Spark Connect server "
                          "(connect: only the end-to-end tests marked e2e)")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Neighbour tables go to a per-session temporary cache, not the user's."""
    monkeypatch.setenv("DP_SPARK_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def small_embeddings() -> Embeddings:
    return clustered_embeddings(200, 3)
