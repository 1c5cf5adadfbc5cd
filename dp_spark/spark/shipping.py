"""What executors need to perturb, and how it reaches them: the artifact's
files shipped with Spark's file distribution, memory-mapped by each Python
worker and cached for the worker's life.

Files, not pickled closures or broadcasts: Spark Connect has no broadcast,
and a 90 MB closure runs a local Connect server out of memory. The same
``spark.addArtifacts(..., file=True)`` serves classic Spark and Connect;
executors find the files with ``SparkFiles.get``. The noise keys travel the
same way, in a small file shipped per run, never inside a serialized function
(py4j logs pickled UDFs at DEBUG).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import tempfile
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession

from dp_spark.artifact import Artifact
from dp_spark.index import configure_faiss
from dp_spark.resources import Runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShippedFiles:
    """Where executors find shipped files: the names ``SparkFiles.get`` knows
    them by, per role."""

    names: dict[str, str]

    def local_paths(self) -> dict[str, str]:
        from pyspark import SparkFiles

        return {role: SparkFiles.get(name) for role, name in self.names.items()}


@dataclass(frozen=True)
class ShippedArtifact:
    meta: dict[str, Any]
    files: ShippedFiles

    @property
    def id(self) -> str:
        return self.meta["id"]

    @property
    def version(self) -> str:
        """The artifact and the files it holds (the driver may add some between runs)."""
        return self.id + ":" + ",".join(sorted(self.files.names))


_shipped: "weakref.WeakKeyDictionary[SparkSession, set[str]]" = weakref.WeakKeyDictionary()


def _ship_files(spark: SparkSession, paths: list[str]) -> None:
    """Add files to the session once each (Spark refuses a second file of the same name)."""
    done = _shipped.setdefault(spark, set())
    new = [p for p in paths if os.path.basename(p) not in done]
    if new:
        spark.addArtifacts(*new, file=True)
        done.update(os.path.basename(p) for p in new)


def ship_files(spark: SparkSession, paths: dict[str, str]) -> ShippedFiles:
    """Make local files (role -> path) available to this session's executors;
    returns where tasks find them. File names must be unique per content."""
    _ship_files(spark, list(paths.values()))
    return ShippedFiles({role: os.path.basename(path) for role, path in paths.items()})


def ship_artifact(spark: SparkSession, artifact: Artifact) -> ShippedArtifact:
    """Make the artifact's files available to this session's executors."""
    _ship_files(spark, list(artifact.paths.values()))
    names = {role: os.path.basename(path) for role, path in artifact.paths.items()}
    return ShippedArtifact(artifact.meta, ShippedFiles(names))


def ship_keys(spark: SparkSession, keys: dict[str, int]) -> ShippedFiles:
    """Ship noise keys (label -> 64-bit key) to the executors in a file of
    their own, readable by the owner only; returns where tasks find it."""
    directory = Path(tempfile.mkdtemp(prefix="dp-spark-keys-"))
    path = directory / f"dp-spark-keys-{secrets.token_hex(8)}.json"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump({label: str(key) for label, key in keys.items()}, handle)
    _ship_files(spark, [str(path)])
    return ShippedFiles({"keys": path.name})


_worker_runtimes: dict[str, Runtime] = {}
_worker_keys: dict[str, dict[str, int]] = {}
_lock = threading.Lock()


def worker_runtime(shipped: ShippedArtifact, threads: int) -> Runtime:
    """The Python worker's Runtime for a shipped artifact, loaded on first
    use (memory-mapped) and kept for the worker's life; only the latest
    artifact is kept, so a long-lived worker does not accumulate them."""
    with _lock:
        runtime = _worker_runtimes.get(shipped.version)
        if runtime is None:
            configure_faiss(threads)
            runtime = Runtime(Artifact(shipped.meta, shipped.files.local_paths()), on_worker=True)
            _worker_runtimes.clear()
            _worker_runtimes[shipped.version] = runtime
            log.info("dp-spark artifact %s mapped in this worker", shipped.id)
        return runtime


def worker_keys(shipped: ShippedFiles) -> dict[str, int]:
    """The noise keys of a run, read once per worker from their shipped file."""
    name = shipped.names["keys"]
    with _lock:
        keys = _worker_keys.get(name)
        if keys is None:
            with open(shipped.local_paths()["keys"]) as handle:
                keys = {label: int(value) for label, value in json.load(handle).items()}
            _worker_keys.clear()
            _worker_keys[name] = keys
        return keys
