"""The neighbour table found by Spark tasks, for vocabularies too large for
one driver.

The query words are cut into slices of contiguous ids, one task each; a
task searches its words against the whole vocabulary, batch by batch, and
re-ranks the candidates by exact distance with the driver's own functions
(``without_self``, ``exact_order`` from ``dp_spark.index``). Batches are
the driver's batches (``build_neighbour_table``'s ``batch_size``, slices
made of whole batches) searched with the driver's FAISS thread count, so
FAISS sees the same queries in the same blocks and a flat search gives the
very table the driver gives, ids and distances. (The thread count matters:
FAISS's float32 distances come from a BLAS product whose rounding depends
on how many threads share it, and two candidates 1e-7 apart at the
(K+1)-th place can swap: measured once in the 92,090 x 64 table of the
default vocabulary between 1 and 2 threads.)
From ``IVF_FROM`` words the search is IVF (approximate: the artifact's
manifest says so, and its id is not the exact table's).

The vectors (and the IVF index) reach the executors as files, the way the
job ships its artifact (``spark.addArtifacts``), and each task maps them:
no SparkContext, broadcast or RDD, so the same code runs under classic
Spark and Spark Connect (``mapInArrow`` over ``spark.range(slices)``). Each
batch comes back as one row of Arrow binary columns (int32 ids, float32
distances) and the table is assembled on the driver, where the vocabulary
diameter is computed meanwhile.
"""

from __future__ import annotations

import atexit
import logging
import math
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import faiss
import numpy as np
import pyarrow as pa
from pyspark.sql import SparkSession

from dp_spark.embeddings import Embeddings
from dp_spark.errors import ConfigError, DPRuntimeError
from dp_spark.index import (
    BatchedIvfSearch,
    NeighbourTable,
    build_index,
    configure_faiss,
    exact_order,
    ivf_list_count,
    nearest_other_words,
    vocabulary_diameter,
    without_self,
)
from dp_spark.spark.session import phase
from dp_spark.spark.shipping import ShippedFiles, ship_files

log = logging.getLogger(__name__)

SEARCHES = ("auto", "flat", "ivf")
# From this many words "auto" searches with IVF: an exact flat search costs
# |V|^2 distances (10^12 at 1M words).
IVF_FROM = 1_000_000
# Measured at 400k words (2,322 lists), recall@64 of the table against exact:
# nprobe 32: 0.78, 64: 0.89, 128: 0.96, 256: 0.99 (nearest word right 0.999).
DEFAULT_NPROBE = 256
# The driver's query batch (build_neighbour_table's default).
BATCH_SIZE = 4096
# Default slice: about this many query words per task.
ROWS_PER_SLICE = 16_384
SCHEMA = "start long, count long, ids binary, distances binary"


@dataclass(frozen=True)
class TablePlan:
    """How the table of a vocabulary of ``size`` words is found: ``search``
    (flat: exact; ivf: approximate, ``nprobe`` of ``nlist`` lists probed),
    ``slices`` tasks of whole batches of ``batch_size`` query words, each
    searching with ``threads`` FAISS threads."""

    size: int
    search: str
    slices: int
    batch_size: int = BATCH_SIZE
    threads: int = 1
    nprobe: int | None = None
    nlist: int | None = None

    @property
    def exact(self) -> bool:
        return self.search == "flat"

    def slice_rows(self, number: int) -> tuple[int, int]:
        """The query ids [start, end) of slice ``number``: whole batches."""
        batches = math.ceil(self.size / self.batch_size)
        per_slice = math.ceil(batches / self.slices)
        start = min(number * per_slice * self.batch_size, self.size)
        return start, min(start + per_slice * self.batch_size, self.size)

    def description(self) -> dict[str, Any]:
        """The manifest's ``neighbour_table`` entry."""
        info: dict[str, Any] = {"exact": self.exact, "search": self.search, "built_on": "spark",
                                "slices": self.slices, "batch_size": self.batch_size, "threads": self.threads}
        if not self.exact:
            info.update(nlist=self.nlist, nprobe=self.nprobe,
                        note="approximate: a word's true neighbour outside the probed lists is missed; "
                             "min_distance is an upper bound")
        return info


def table_plan(size: int, search: str = "auto", slices: int | None = None, batch_size: int = BATCH_SIZE,
               nprobe: int = DEFAULT_NPROBE, threads: int | None = None) -> TablePlan:
    """The plan for ``size`` words: ``search`` auto is flat below ``IVF_FROM``
    words, ivf from there; ``slices`` defaults to one per ``ROWS_PER_SLICE``
    words (at most one per batch); ``threads`` per task defaults to this
    process's FAISS threads, those ``build_neighbour_table`` would use here
    (fewer are faster where tasks share cores, and may break a float32 tie
    at the last neighbour differently)."""
    if search not in SEARCHES:
        raise ConfigError(f"--search must be one of {', '.join(SEARCHES)}; got {search!r}")
    for name, value in (("--slices", slices), ("batch size", batch_size), ("--nprobe", nprobe),
                        ("--threads", threads)):
        if value is not None and (isinstance(value, bool) or int(value) < 1):
            raise ConfigError(f"{name} must be a positive integer; got {value!r}")
    if search == "auto":
        search = "ivf" if size >= IVF_FROM else "flat"
    batches = math.ceil(size / batch_size)
    wanted = slices or max(1, math.ceil(size / ROWS_PER_SLICE))
    per_slice = math.ceil(batches / min(int(wanted), batches))
    count = math.ceil(batches / per_slice)  # no empty slice
    threads = int(threads or faiss.omp_get_max_threads())
    if search == "flat":
        return TablePlan(size, "flat", count, batch_size, threads)
    nlist = ivf_list_count(size)
    return TablePlan(size, "ivf", count, batch_size, threads, min(int(nprobe), nlist), nlist)


class SparkTableBuilder:
    """``build_artifact``'s table builder: ``builder(embeddings, k)`` finds
    the table with Spark tasks as ``plan`` says."""

    def __init__(self, spark: SparkSession, plan: TablePlan) -> None:
        self.spark = spark
        self.plan = plan

    def __call__(self, embeddings: Embeddings, k: int) -> NeighbourTable:
        return neighbour_table_on_spark(self.spark, embeddings, k, self.plan)


def neighbour_table_on_spark(spark: SparkSession, embeddings: Embeddings, k: int,
                             plan: TablePlan | None = None) -> NeighbourTable:
    """The k-nearest-neighbour table of ``embeddings`` (self excluded,
    nearest first), found by Spark tasks: with a flat plan, equal to
    ``build_neighbour_table(embeddings, k, plan.batch_size)``."""
    plan = plan or table_plan(embeddings.size)
    if plan.size != embeddings.size:
        raise ValueError(f"plan for {plan.size} words, vocabulary of {embeddings.size}")
    k = min(int(k), embeddings.size - 1)
    if k < 1:
        raise ConfigError("a neighbour table needs a vocabulary of at least 2 words")
    started = time.perf_counter()
    files = _ship_search_files(spark, embeddings, plan)
    log.info("build: vectors%s shipped to the executors in %.1f s", " and IVF index" if not plan.exact else "",
             time.perf_counter() - started)
    frame = spark.range(0, plan.slices, 1, plan.slices).mapInArrow(
        _search_slices(files, plan, k), SCHEMA)
    with ThreadPoolExecutor(1) as driver:
        # The diameter (driver, numpy) while the tasks search.
        diameter = driver.submit(_timed_diameter, embeddings.vectors)
        search_started = time.perf_counter()
        with phase(spark, "build", f"{plan.search} kNN table, {plan.size} words, K = {k}, {plan.slices} slices"):
            parts = frame.toArrow()
        log.info("build: %d slices searched in %.1f s", plan.slices, time.perf_counter() - search_started)
        table = _assemble(parts, embeddings.size, k)
        table = NeighbourTable(*table, diameter.result(), embeddings.fingerprint)
    log.info("build: %s table of %d words (K = %d) in %.1f s", "exact" if plan.exact else "approximate",
             embeddings.size, k, time.perf_counter() - started)
    return table


def _timed_diameter(vectors: np.ndarray) -> float:
    started = time.perf_counter()
    diameter = vocabulary_diameter(vectors)
    log.info("build: vocabulary diameter %.4f in %.1f s (driver)", diameter, time.perf_counter() - started)
    return diameter


def _assemble(parts: pa.Table, size: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The tasks' batches put in place; every word must be covered once."""
    ids = np.empty((size, k), np.int32)
    distances = np.empty((size, k), np.float32)
    covered = np.zeros(size, bool)
    columns = parts.to_pydict()
    for start, count, found, far in zip(columns["start"], columns["count"], columns["ids"], columns["distances"]):
        rows = slice(start, start + count)
        if covered[rows].any():
            raise DPRuntimeError(f"neighbour table: words {start}..{start + count - 1} came back twice")
        ids[rows] = np.frombuffer(found, np.int32).reshape(count, k)
        distances[rows] = np.frombuffer(far, np.float32).reshape(count, k)
        covered[rows] = True
    if not covered.all():
        raise DPRuntimeError(f"neighbour table: {int((~covered).sum())} words never came back from the tasks")
    return ids, distances


# Files written for the executors, kept until the driver exits (classic
# Spark serves added files from their path for the session's life).
_staging: Path | None = None


def _staging_dir() -> Path:
    global _staging
    if _staging is None:
        _staging = Path(tempfile.mkdtemp(prefix="dp-spark-build-"))
        atexit.register(shutil.rmtree, _staging, True)
    return _staging


def _ship_search_files(spark: SparkSession, embeddings: Embeddings, plan: TablePlan) -> ShippedFiles:
    """The vectors (and for IVF the trained index) as files named by content."""
    name = f"dp-spark-build-{embeddings.fingerprint[:16]}"
    paths = {"vectors": _staging_dir() / f"{name}.vectors.npy"}
    if not paths["vectors"].exists():
        np.save(str(paths["vectors"]) + ".tmp.npy", np.ascontiguousarray(embeddings.vectors, np.float32))
        Path(str(paths["vectors"]) + ".tmp.npy").rename(paths["vectors"])
    if not plan.exact:
        paths["ivf"] = _staging_dir() / f"{name}.ivf{plan.nlist}.faiss"
        if not paths["ivf"].exists():
            started = time.perf_counter()
            index = build_index(embeddings.vectors, "ivf", ivf_nlist=plan.nlist, ivf_nprobe=plan.nprobe)
            faiss.write_index(index, str(paths["ivf"]) + ".tmp")
            Path(str(paths["ivf"]) + ".tmp").rename(paths["ivf"])
            log.info("build: IVF index (%d lists) trained in %.1f s (driver)", plan.nlist,
                     time.perf_counter() - started)
    return ship_files(spark, {role: str(path) for role, path in paths.items()})


def _search_slices(files: ShippedFiles, plan: TablePlan, k: int):
    """The task: for each slice number, its batches' neighbours."""

    def search(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        previous = faiss.omp_get_max_threads()
        configure_faiss(plan.threads)  # and back after: the worker may perturb next
        try:
            yield from _search_in_task(batches, files, plan, k)
        finally:
            faiss.omp_set_num_threads(previous)

    return search


def _search_in_task(batches: Iterator[pa.RecordBatch], files: ShippedFiles, plan: TablePlan,
                k: int) -> Iterator[pa.RecordBatch]:
    paths = files.local_paths()
    vectors = np.load(paths["vectors"], mmap_mode="r")
    if plan.exact:
        nearest = _flat_search(build_index(vectors, "flat"), vectors, k)
    else:
        nearest = _ivf_search(paths["ivf"], vectors, k, plan.nprobe)
    for batch in batches:
        for number in batch.column(0).to_numpy().tolist():
            start, end = plan.slice_rows(number)
            for first in range(start, end, plan.batch_size):
                rows = np.arange(first, min(first + plan.batch_size, end))
                ids, distances = nearest(rows)
                yield pa.RecordBatch.from_arrays(
                    [pa.array([first], pa.int64()), pa.array([len(rows)], pa.int64()),
                     pa.array([np.ascontiguousarray(ids, np.int32).tobytes()], pa.binary()),
                     pa.array([np.ascontiguousarray(distances, np.float32).tobytes()], pa.binary())],
                    names=["start", "count", "ids", "distances"])


def _flat_search(index: faiss.Index, vectors: np.ndarray, k: int):
    """Exactly the driver's step (``nearest_other_words``)."""
    return lambda rows: nearest_other_words(index, vectors, rows, k)


def _ivf_search(path: str, vectors: np.ndarray, k: int, nprobe: int):
    """IVF candidates re-ranked exactly; a word whose probed lists hold fewer
    than k + 1 words is searched flat."""
    searcher = BatchedIvfSearch(faiss.read_index(path, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY))
    flat: list[Any] = []

    def nearest(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        _, found = searcher.search(vectors[rows], k + 1, nprobe)
        short = (found < 0).any(axis=1)
        if short.any():
            if not flat:
                flat.append(build_index(vectors, "flat"))
            found[short] = flat[0].search(vectors[rows[short]], k + 1)[1]
        return exact_order(vectors, rows, without_self(found, rows, k))

    return nearest
