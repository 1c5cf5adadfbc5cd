"""One session-scoped Spark session per test process, classic local[2] or a
local Spark Connect server (``--spark-mode connect``), small embeddings on
disk, and a helper that writes a job config.

A process holds one kind of session only (pyspark refuses a Connect client
beside a classic SparkContext), so the suite runs twice: everything in
classic mode, then the end-to-end tests marked ``e2e`` under Connect
(``scripts/test.sh`` does both)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dp_spark.config import Config, parse_config
from dp_spark.embeddings import Embeddings

VOCAB_SIZE = 5000


def pytest_collection_modifyitems(config, items):
    if config.getoption("--spark-mode") != "connect":
        return
    selected = [item for item in items if item.get_closest_marker("e2e")]
    deselected = [item for item in items if not item.get_closest_marker("e2e")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected


@pytest.fixture(scope="session")
def spark_mode(pytestconfig) -> str:
    return pytestconfig.getoption("--spark-mode")


@pytest.fixture(scope="session")
def spark(spark_mode):
    from dp_spark.spark.session import start_session

    if spark_mode == "connect":
        session, _ = start_session("dp-spark tests", remote="local[2]")
    else:
        session, _ = start_session("dp-spark tests", "local[2]")
        session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def embeddings_files(tmp_path_factory) -> tuple[Path, Path]:
    """The 5,000 most frequent GloVe words as .npy + vocabulary (fast to build an artifact of)."""
    directory = tmp_path_factory.mktemp("embeddings")
    e = Embeddings.default(VOCAB_SIZE)
    np.save(directory / "vectors.npy", e.vectors)
    (directory / "words.txt").write_text("\n".join(e.words.tolist()) + "\n", encoding="utf-8")
    return directory / "vectors.npy", directory / "words.txt"


@pytest.fixture
def make_config(embeddings_files, tmp_path):
    def make(input_path, columns, *, root=None, input_format="parquet", **sections) -> Config:
        """``sections``: extra keys per section, e.g. ``job={"id_column": "id"}``."""
        vectors, words = embeddings_files
        document = {
            "input": {"path": str(input_path), "format": input_format, "dataset": "reviews"},
            "output": {"root": str(root or tmp_path / "out")},
            "embeddings": {"source": "npy", "path": str(vectors), "vocabulary": str(words)},
            "columns": columns,
        }
        for section, values in sections.items():
            document.setdefault(section, {}).update(values)
        return parse_config(document, source="test.toml")

    return make
