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
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from dp_spark.embeddings import Embeddings
from dp_spark.guarantees import EUCLIDEAN, Guarantee
from dp_spark.index import INDEX_TYPES, build_index, configure_faiss
from dp_spark.mechanisms.base import Mechanism, choice, optional_positive_float
from dp_spark.mechanisms.noise import gamma_upper_regularized, laplace_radii, uniform_directions
from dp_spark.randomness import TokenRandom, as_token_random


class MultivariateLaplace(Mechanism):
    name = "mlap"
    needs_index = True

    def __init__(
        self,
        embeddings: Embeddings,
        epsilon: float,
        *,
        index_type: str = "flat",
        max_distance: float | None = None,
        index: faiss.Index | None = None,
    ) -> None:
        super().__init__(embeddings, epsilon)
        self.index_type = choice("index_type", index_type, INDEX_TYPES)
        self.max_distance = optional_positive_float("max_distance", max_distance)
        if index is None:
            index = build_index(embeddings.vectors, index_type)
        elif index.ntotal != embeddings.size or index.d != embeddings.dim:
            raise ValueError(
                f"index holds {index.ntotal} vectors of dimension {index.d}; the embeddings "
                f"have {embeddings.size} of dimension {embeddings.dim}"
            )
        configure_faiss()
        self.index = index

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
        return self.nearest_words(self.noisy_vectors(ids, rng))

    def nearest_words(self, vectors: np.ndarray) -> np.ndarray:
        """Id of the vocabulary word nearest to each vector (one batched search)."""
        _, found = self.index.search(vectors, 1)
        found = found[:, 0]
        missing = found < 0
        if missing.any():
            # An approximate index can come back empty-handed (empty IVF cells);
            # answer those few exactly rather than fail the batch.
            _, exact = faiss.knn(vectors[missing], self.embeddings.vectors, 1)
            found[missing] = exact[:, 0]
        return found

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "index_type": self.index_type,
            "mean_noise_radius": self.embeddings.dim / self.epsilon,
            "max_distance": self.max_distance,
            "delta": self.delta,
        }
