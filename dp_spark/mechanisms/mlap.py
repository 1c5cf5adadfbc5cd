"""Multivariate (calibrated) Laplace mechanism.

Feyisetan, Balle, Drake, Diethe. "Privacy- and Utility-Preserving Textual
Analysis via Calibrated Multivariate Perturbations". WSDM 2020.

z = phi(w) + r u, u uniform on the unit sphere, r ~ Gamma(n, 1/epsilon), so z
has density proportional to exp(-epsilon ||z - phi(w)||); the output is the
vocabulary word nearest to z. Guarantee: epsilon-d_X privacy for the Euclidean
distance d of the embedding space (decoding is post-processing, so it holds for
an approximate ``hnsw``/``ivf`` index too).

``max_distance`` R caps the radius, r' = min(r, R) (distance-based truncation,
Feyisetan, Aggarwal, Xu, Teissier, FLAIRS 2021). That leaves no pure guarantee:
with delta_R = P[Gamma(n, 1/epsilon) > R] = Q(n, epsilon R),
P[M(x) in S] <= e^(epsilon d) P[M(x') in S] + (1 + e^(epsilon d)) delta_R.
For n = 50, R = n/epsilon gives delta_R ~ 0.48 and R = 1.5 n/epsilon ~ 9e-4:
a radius small enough to change the output gives a useless delta.

Decoding, fast where it can be proved exact. The candidates are w and its K
nearest words from the neighbour table; any other word v is at least D_K(w)
(w's K-th neighbour distance) from phi(w), hence at least D_K(w) - r from z
(r = ||z - phi(w)||). When D_K(w) > r + d* (d* the best candidate's
distance, with a margin for rounding), no other word can be nearer: the
candidate is the exact nearest word and no search is made. The candidates
are scored (float32 direct differences, error ~1e-6 relative, inside the
margin) only where D_K(w) > r, the proof's necessary condition. Otherwise
the configured index is searched: ``flat`` exactly (the output is then the
exact nearest word for every token, certified or searched, up to words
tied within float32 rounding); ``ivf`` by ``BatchedIvfSearch`` with the
number of probed lists chosen on the vocabulary for ``recall`` (recall@1
against exact search, measured at this epsilon on 2,000 noisy words drawn
with Zipf weights over the frequency ranks), the candidates merged in;
``hnsw`` by FAISS. In 50 dimensions the certificate holds mostly at large
epsilon (GloVe 6B 50d, 100k words, K = 64, Zipf tokens: 0.02% of tokens at
epsilon 10, 9% at 20, 92% at 40): at epsilon 10 the noisy vector is ~5 from
every word, and the speed comes from ``ivf`` (see BENCHMARKS.md).
Any decoding is post-processing of z, so the guarantee is the same.

Tiny epsilon: radii reach dim * 45 / epsilon; past 1e18 float32 squared
distances overflow and FAISS answers id -1, so such an epsilon is refused
(for n = 50, epsilon < 2.25e-15) unless ``max_distance`` caps the radius.
Well before that |z|^2 swamps FAISS's float32 distance and the flat decode
drifts from the exact nearest word (GloVe 50d, 5k words: agrees with a
float64 argmin for 99.75% of tokens at epsilon 1e-3, 97% at 1e-4, 74% at
1e-5, 14% at 1e-6): still a function of z (post-processing, same
guarantee), at an epsilon where the output carries no utility anyway.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from dp_spark.embeddings import Embeddings
from dp_spark.guarantees import EUCLIDEAN, Guarantee
from dp_spark.index import (
    DEFAULT_NEIGHBOURS,
    INDEX_TYPES,
    BatchedIvfSearch,
    NeighbourTable,
    build_index,
    configure_faiss,
    neighbour_table,
)
from dp_spark.mechanisms.base import Mechanism, choice, fraction, optional_positive_float
from dp_spark.mechanisms.noise import gamma_upper_regularized, laplace_radii, uniform_directions
from dp_spark.randomness import TokenRandom, as_token_random

# Relative margin of the exactness test: the table's float32 distances and
# FAISS's float32 search round at ~1e-7; a word within this margin of the
# bound is searched for rather than ruled out.
_CERTIFICATE_MARGIN = 1e-4
# Largest noise radius the float32 decode takes, and the largest of the dim
# exponentials that make a radius (-log of a float64 uniform's distance to 1).
_LARGEST_RADIUS = 1e18
_LARGEST_EXPONENTIAL = 45.0
# Noisy words the ivf decode's nprobe is chosen on, and the nprobe tried.
_CALIBRATION_WORDS = 2_000
_NPROBES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)


class MultivariateLaplace(Mechanism):
    name = "mlap"
    needs_index = True
    needs_neighbours = True

    def __init__(
        self,
        embeddings: Embeddings,
        epsilon: float,
        *,
        index_type: str = "flat",
        max_distance: float | None = None,
        recall: float = 0.99,
        index: faiss.Index | None = None,
        neighbours: NeighbourTable | None = None,
    ) -> None:
        super().__init__(embeddings, epsilon)
        self.index_type = choice("index_type", index_type, INDEX_TYPES)
        self.max_distance = optional_positive_float("max_distance", max_distance)
        self.recall = fraction("recall", recall)
        self._check_radius(embeddings.dim)
        if index is None:
            index = build_index(embeddings.vectors, index_type)
        elif index.ntotal != embeddings.size or index.d != embeddings.dim:
            raise ValueError(
                f"index holds {index.ntotal} vectors of dimension {index.d}; the embeddings "
                f"have {embeddings.size} of dimension {embeddings.dim}"
            )
        if neighbours is None:
            neighbours = neighbour_table(embeddings, DEFAULT_NEIGHBOURS) if embeddings.size > 1 else None
        elif neighbours.fingerprint != embeddings.fingerprint:
            raise ValueError("the neighbour table was built from other embeddings")
        configure_faiss()
        self.index = index
        self.neighbours = neighbours
        self._ivf = BatchedIvfSearch(index) if index_type == "ivf" else None
        self._nprobe: int | None = None

    def _check_radius(self, dim: int) -> None:
        """Refuse an epsilon whose noise radii could overflow the decode: the
        radius is at most dim * 45 / epsilon (a sum of dim exponentials, each
        -log(1 - u) <= 45 for u < 1 in float64), and float32 squared
        distances (FAISS) hold that below about 1e18 (squares below 1e36 with
        room for the vector norms and the mahalanobis stretch; past it
        distances become inf and the search answers id -1)."""
        worst = _LARGEST_EXPONENTIAL * dim / self.epsilon
        if self.max_distance is not None:
            worst = min(worst, self.max_distance)
        if worst > _LARGEST_RADIUS:
            smallest = _LARGEST_EXPONENTIAL * dim / _LARGEST_RADIUS
            raise ValueError(
                f"epsilon {self.epsilon:g} is too small for {self.name} in {dim} dimensions: noise radii up to "
                f"{worst:.3g} overflow the float32 decode (largest {_LARGEST_RADIUS:.0e}); use epsilon >= "
                f"{smallest:.3g}, or cap the radius with max_distance <= {_LARGEST_RADIUS:.0e}"
            )

    @property
    def delta(self) -> float:
        """delta_R of distance truncation (0 without ``max_distance``)."""
        if self.max_distance is None:
            return 0.0
        return gamma_upper_regularized(self.embeddings.dim, self.epsilon * self.max_distance)

    metric = EUCLIDEAN

    def guarantee(self) -> Guarantee:
        if self.max_distance is None:
            return Guarantee.pure(self.epsilon, self.metric)
        return Guarantee.approximate(self.epsilon, self.delta, self.metric)

    DIRECTION_STREAM, RADIUS_STREAM = 0, 1
    # Elliptical mechanisms (mahalanobis) set a matrix S: noise r S u.
    noise_shape: np.ndarray | None = None

    def noisy_vectors(self, ids: np.ndarray, rng: np.random.Generator | TokenRandom) -> np.ndarray:
        """phi(w) + r u for each id (float32, (len(ids), n))."""
        rng = as_token_random(rng, len(ids))
        dim = self.embeddings.dim
        noise = uniform_directions(rng, self.DIRECTION_STREAM, dim)
        if self.noise_shape is not None:
            noise = noise @ self.noise_shape  # S is symmetric: rows u S = (S u)^T
        radii = laplace_radii(rng, self.RADIUS_STREAM, dim, self.epsilon)
        if self.max_distance is not None:
            np.minimum(radii, self.max_distance, out=radii)
        noise *= radii.astype(np.float32)[:, None]
        noise += self.embeddings.vectors[ids]
        return noise

    def _perturb_in_vocabulary(self, ids: np.ndarray, rng: TokenRandom) -> np.ndarray:
        if len(ids) == 0:
            return ids
        return self.nearest(self.noisy_vectors(ids, rng), ids)[1][:, 0]

    # Queries searched together (one pass over the IVF lists per batch: larger
    # batches share it better), and candidate rows scored together (their
    # K + 1 vectors in float64 stay a few MB).
    SEARCH_BATCH = 16_384
    DECODE_BATCH = 2_048

    def nearest(self, vectors: np.ndarray, words: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(squared distances, ids), each (len(vectors), k), of the k
        vocabulary words nearest to each noisy vector, nearest first;
        ``words[i]`` is the word ``vectors[i]`` was made from (its
        neighbours are the candidates that can prove the answer exact)."""
        distances = np.empty((len(vectors), k), np.float32)
        found = np.empty((len(vectors), k), np.int64)
        for start in range(0, len(vectors), self.SEARCH_BATCH):
            part = slice(start, start + self.SEARCH_BATCH)
            distances[part], found[part] = self._nearest(vectors[part], words[part], k)
        return distances, found

    def _nearest(self, vectors: np.ndarray, words: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        candidate_distances, candidates, certified = self._candidates(vectors, words, k)
        searched = np.flatnonzero(~certified)
        if len(searched):
            squared, found = self._search(vectors[searched], k)
            if self.index_type == "flat":
                candidate_distances[searched], candidates[searched] = squared, found
            else:
                candidate_distances[searched], candidates[searched] = _merge_nearest(
                    candidate_distances[searched], candidates[searched], squared, found, k
                )
        return candidate_distances.astype(np.float32), candidates

    def certified(self, vectors: np.ndarray, words: np.ndarray, k: int = 1) -> np.ndarray:
        """Whether the candidates prove the k nearest words of each noisy
        vector (no search needed)."""
        return self._candidates(vectors, words, k)[2]

    def _candidates(self, vectors: np.ndarray, words: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The k nearest of each word's candidates (the word and its table
        neighbours): squared distances (float64), ids, and whether they are
        proved to be the k nearest of the whole vocabulary. The proof needs
        D_K(w) > r; where the noise radius r is already larger, only the word
        itself is scored (distance inf and id -1 fill the other columns) and
        the search decides."""
        count = len(words)
        table = self.neighbours
        if table is None:  # a vocabulary of one word
            return np.zeros((count, k)), np.zeros((count, k), np.int64), np.ones(count, bool)
        offsets = vectors.astype(np.float64) - self.embeddings.vectors[words].astype(np.float64)
        radius = np.sqrt(np.einsum("ij,ij->i", offsets, offsets))
        nearest = np.full((count, k), np.inf)
        nearest[:, 0] = radius**2
        ids = np.full((count, k), -1, np.int64)
        ids[:, 0] = words
        certified = np.zeros(count, bool)
        whole = table.k >= self.embeddings.size - 1  # the table holds every word
        bound = np.asarray(table.distances)[words, -1].astype(np.float64) * (1 - _CERTIFICATE_MARGIN)
        hopeful = np.arange(count) if whole else np.flatnonzero(bound > radius)
        neighbour_ids = np.asarray(table.ids)
        for start in range(0, len(hopeful), self.DECODE_BATCH):
            rows = hopeful[start : start + self.DECODE_BATCH]
            candidates = np.hstack([words[rows, None], neighbour_ids[words[rows]]])
            # Direct differences in float32: each squared distance within ~1e-6
            # relative (no |z|^2 + |c|^2 - 2 z.c cancellation), far inside the margin.
            offsets = np.take(self.embeddings.vectors, candidates, axis=0)
            offsets -= vectors[rows, None, :]
            squared = np.einsum("ijk,ijk->ij", offsets, offsets).astype(np.float64)
            order = np.argsort(squared, axis=1, kind="stable")[:, :k]
            nearest[rows] = np.take_along_axis(squared, order, axis=1)
            ids[rows] = np.take_along_axis(candidates, order, axis=1)
            margin = np.sqrt(nearest[rows, -1]) * (1 + _CERTIFICATE_MARGIN)
            certified[rows] = whole or (bound[rows] - radius[rows] > margin)
        return nearest, ids, certified

    def _search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._ivf is not None:
            squared, found = self._ivf.search(vectors, k, self.ivf_nprobe)
        else:
            squared, found = self.index.search(vectors, k)
        missing = (found < 0).any(axis=1)
        if missing.any():
            # An approximate index can come back empty-handed (empty IVF cells);
            # answer those few exactly rather than fail the batch.
            squared[missing], found[missing] = faiss.knn(vectors[missing], self.embeddings.vectors, k)
        return squared.astype(np.float64), found.astype(np.int64)

    @property
    def ivf_nprobe(self) -> int:
        """Lists the ivf decode probes: the fewest that reach ``recall`` on
        the calibration words (chosen once, the same on every worker: the
        words and their noise are fixed)."""
        if self._nprobe is None:
            weights = 1.0 / np.arange(1, self.embeddings.size + 1)
            sample = np.random.default_rng(0).choice(
                self.embeddings.size, _CALIBRATION_WORDS, p=weights / weights.sum()
            )
            vectors = self.noisy_vectors(sample, np.random.default_rng(1))
            exact = faiss.knn(vectors, self.embeddings.vectors, 1)[1][:, 0]
            tried = [n for n in _NPROBES if n < self._ivf.nlist] + [self._ivf.nlist]
            low, high = 0, len(tried) - 1  # recall grows with nprobe: the lists probed are nested
            while low < high:
                middle = (low + high) // 2
                self._nprobe = tried[middle]
                if np.mean(self.nearest(vectors, sample)[1][:, 0] == exact) >= self.recall:
                    high = middle
                else:
                    low = middle + 1
            self._nprobe = tried[low]
        return self._nprobe

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "index_type": self.index_type,
            "recall": self.recall if self.index_type == "ivf" else None,
            "mean_noise_radius": self.embeddings.dim / self.epsilon,
            "max_distance": self.max_distance,
            "delta": self.delta,
        }


def _merge_nearest(
    distances: np.ndarray, ids: np.ndarray, other_distances: np.ndarray, other_ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest of two lists of nearest words (a word in both counted once)."""
    merged = np.hstack([distances, other_distances])
    merged_ids = np.hstack([ids, other_ids])
    if k > 1:  # a word found by both: drop the second copy
        repeated = np.zeros(merged_ids.shape, bool)
        repeated[:, k:] = (merged_ids[:, k:, None] == merged_ids[:, None, :k]).any(axis=2)
        merged = np.where(repeated, np.inf, merged)
    order = np.argsort(merged, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(merged, order, axis=1), np.take_along_axis(merged_ids, order, axis=1)
