"""FAISS search over the vocabulary, and the precomputed neighbour table.

Because the vocabulary is finite, the K nearest neighbours of every word can be
found once (one batched exact search) and reused for every token; mechanisms
that only need a word's neighbourhood then do no search on the hot path.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from dp_spark.embeddings import Embeddings

log = logging.getLogger(__name__)

INDEX_TYPES = ("flat", "hnsw", "ivf")
DEFAULT_NEIGHBOURS = 64

# faiss-cpu keeps batches of fewer queries than this on a scalar path; measured
# here, the BLAS path is several times faster from a few hundred queries up.
BLAS_THRESHOLD = 20


def configure_faiss(threads: int | None = None) -> None:
    """Route batched flat search through BLAS and cap FAISS's OpenMP threads."""
    faiss.cvar.distance_compute_blas_threshold = BLAS_THRESHOLD
    if threads is not None:
        faiss.omp_set_num_threads(max(1, int(threads)))


def build_index(
    vectors: np.ndarray,
    index_type: str = "flat",
    *,
    hnsw_m: int = 32,
    hnsw_ef_search: int = 64,
    ivf_nlist: int | None = None,
    ivf_nprobe: int = 16,
    seed: int = 1234,
) -> faiss.Index:
    """A FAISS L2 index over ``vectors``: exact ``flat`` (default), or approximate
    ``hnsw`` / ``ivf`` (decoding a noisy vector is post-processing, so an
    approximate index keeps the privacy guarantee and only shifts utility)."""
    configure_faiss()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    dim = vectors.shape[1]
    if index_type == "flat":
        index = faiss.IndexFlatL2(dim)
    elif index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m)
        index.hnsw.efSearch = hnsw_ef_search
    elif index_type == "ivf":
        nlist = ivf_nlist or max(1, min(int(4 * np.sqrt(len(vectors))), len(vectors) // 39))
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, nlist)
        index.cp.seed = seed
        index.train(vectors)
        index.nprobe = min(ivf_nprobe, nlist)
    else:
        raise ValueError(f"index type must be one of {', '.join(INDEX_TYPES)}; got {index_type!r}")
    index.add(vectors)
    return index


def serialize_index(index: faiss.Index) -> bytes:
    return faiss.serialize_index(index).tobytes()


def deserialize_index(data: bytes) -> faiss.Index:
    configure_faiss()
    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))


@dataclass(frozen=True)
class NeighbourTable:
    """For every vocabulary word, its ``k`` nearest other words, nearest first.

    ``ids`` is int32 (|V|, k); ``distances`` float32 (|V|, k) holds Euclidean
    (not squared) distances. ``diameter`` is the largest distance between two
    vocabulary words. ``fingerprint`` names the embeddings it was built from.
    """

    ids: np.ndarray
    distances: np.ndarray
    diameter: float
    fingerprint: str

    @property
    def k(self) -> int:
        return self.ids.shape[1]

    @property
    def min_distance(self) -> float:
        """Smallest distance between two distinct vocabulary words."""
        return float(self.distances[:, 0].min())


def default_cache_dir() -> Path:
    configured = os.environ.get("DP_SPARK_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "dp_spark"


def neighbour_table(
    embeddings: Embeddings,
    k: int = DEFAULT_NEIGHBOURS,
    *,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
) -> NeighbourTable:
    """The neighbour table of ``embeddings``, from the on-disk cache when it holds
    one for the same (embeddings fingerprint, k), else built and cached."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"neighbours (K) must be a positive integer, got {k!r}")
    k = min(int(k), embeddings.size - 1)
    if k < 1:
        raise ValueError("a neighbour table needs a vocabulary of at least 2 words")
    path = Path(cache_dir or default_cache_dir()) / (
        f"neighbours-{embeddings.fingerprint[:20]}-k{k}.npz"
    )
    if use_cache and path.exists():
        table = _load_table(path, embeddings, k)
        if table is not None:
            log.info("neighbour table loaded from cache %s", path)
            return table
    table = build_neighbour_table(embeddings, k)
    if use_cache:
        _save_table(path, table)
        log.info("neighbour table cached at %s", path)
    return table


def build_neighbour_table(
    embeddings: Embeddings, k: int = DEFAULT_NEIGHBOURS, batch_size: int = 4096
) -> NeighbourTable:
    """Exact k-nearest-neighbour table by batched flat search (self excluded)."""
    vectors = embeddings.vectors
    size = embeddings.size
    k = min(k, size - 1)
    index = build_index(vectors, "flat")
    ids = np.empty((size, k), dtype=np.int32)
    distances = np.empty((size, k), dtype=np.float32)
    for start in range(0, size, batch_size):
        rows = np.arange(start, min(start + batch_size, size))
        ids[rows], distances[rows] = nearest_other_words(index, vectors, rows, k)
    return NeighbourTable(ids, distances, vocabulary_diameter(vectors), embeddings.fingerprint)


def nearest_other_words(
    index: faiss.Index, vectors: np.ndarray, rows: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The k words nearest to each word in ``rows``, excluding the word itself:
    ids (len(rows), k) and Euclidean distances, nearest first."""
    _, found = index.search(vectors[rows], k + 1)
    # The word itself is normally first, but ties at distance 0 may put it
    # elsewhere; drop it where it is, or the last column where it is absent.
    is_self = found == rows[:, None]
    is_self[~is_self.any(axis=1), -1] = True
    ids = found[~is_self].reshape(-1, k)
    # FAISS's float32 ||x||^2 + ||y||^2 - 2xy loses digits for close words, and
    # the smallest of these distances calibrates tgumbel: recompute in float64.
    offsets = vectors[ids].astype(np.float64) - vectors[rows, None, :].astype(np.float64)
    distances = np.sqrt((offsets**2).sum(axis=2))
    order = np.argsort(distances, axis=1, kind="stable")
    return (
        np.take_along_axis(ids, order, axis=1),
        np.take_along_axis(distances, order, axis=1).astype(np.float32),
    )


def vocabulary_diameter(vectors: np.ndarray, block: int = 128) -> float:
    """Exact largest pairwise Euclidean distance, without the O(|V|^2) scan.

    A pair farther apart than a known distance D must have a point farther than
    D/2 from the centroid (triangle inequality), so only those points are
    compared against all others.
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    centred = vectors - vectors.mean(axis=0)
    radius = np.linalg.norm(centred, axis=1)
    farthest = centred[np.argmax(radius)]
    lower = float(np.linalg.norm(centred - farthest, axis=1).max())
    candidates = centred[radius > lower / 2]
    squared_norms = (centred**2).sum(axis=1)
    best_squared = lower**2
    for start in range(0, len(candidates), block):
        part = candidates[start : start + block]
        squared = (part**2).sum(axis=1)[:, None] + squared_norms[None, :] - 2 * part @ centred.T
        best_squared = max(best_squared, float(squared.max()))
    return float(np.sqrt(best_squared))


def _save_table(path: Path, table: NeighbourTable) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as tmp:
        np.savez(
            tmp,
            ids=table.ids,
            distances=table.distances,
            diameter=np.float64(table.diameter),
            fingerprint=np.array(table.fingerprint),
        )
    os.replace(tmp.name, path)


def _load_table(path: Path, embeddings: Embeddings, k: int) -> NeighbourTable | None:
    try:
        with np.load(path) as data:
            table = NeighbourTable(
                data["ids"], data["distances"], float(data["diameter"]), str(data["fingerprint"])
            )
    except (OSError, KeyError, ValueError) as error:
        log.warning("ignoring unreadable neighbour table cache %s: %s", path, error)
        return None
    if table.fingerprint != embeddings.fingerprint or table.ids.shape != (embeddings.size, k):
        log.warning("ignoring neighbour table cache %s: built from other embeddings", path)
        return None
    return table
