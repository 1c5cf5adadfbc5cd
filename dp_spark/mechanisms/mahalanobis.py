"""Mahalanobis mechanism: elliptical noise shaped by the embeddings' covariance.

Xu, Aggarwal, Feyisetan, Teissier. "A Differentially Private Text Perturbation
Method Using a Regularized Mahalanobis Metric". PrivateNLP 2020.

Sigma~ = Sigma / (tr Sigma / n) (trace-normalised covariance of the
vectors; the paper's normalisation is unverified, mldp-text divides by the
variance of all entries instead), S = (lambda Sigma~ + (1 - lambda) I)^(1/2)
(symmetric square root, once), z = phi(w) + r S u with u uniform on the sphere
and r ~ Gamma(n, 1/epsilon) as in mlap (S u is not renormalised: pypantera
does, which is another distribution), decoded to the Euclidean nearest word.
Noise then stretches along the directions where words spread, so words in
sparse regions are replaced more often. Guarantee: epsilon-d_RM privacy with
d_RM(x, x') = ||(lambda Sigma~ + (1 - lambda) I)^(-1/2) (phi(x) - phi(x'))||.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from dp_spark.embeddings import Embeddings
from dp_spark.index import NeighbourTable
from dp_spark.mechanisms.base import fraction
from dp_spark.mechanisms.mlap import MultivariateLaplace


def regularized_covariance_root(vectors: np.ndarray, regularization: float) -> np.ndarray:
    """(lambda Sigma~ + (1 - lambda) I)^(1/2), Sigma~ the trace-normalised covariance."""
    vectors = np.asarray(vectors, dtype=np.float64)
    covariance = np.cov(vectors, rowvar=False)
    dim = covariance.shape[0]
    normalised = covariance / (np.trace(covariance) / dim)
    values, basis = np.linalg.eigh(regularization * normalised + (1 - regularization) * np.eye(dim))
    return (basis * np.sqrt(np.maximum(values, 0))) @ basis.T


def mahalanobis_metric(regularization: float) -> str:
    return f"regularised Mahalanobis d_RM (lambda = {regularization:g})"


class Mahalanobis(MultivariateLaplace):
    name = "mahalanobis"

    def __init__(
        self,
        embeddings: Embeddings,
        epsilon: float,
        *,
        regularization: float = 0.2,
        index_type: str = "flat",
        max_distance: float | None = None,
        recall: float = 0.99,
        index: faiss.Index | None = None,
        neighbours: NeighbourTable | None = None,
    ) -> None:
        super().__init__(embeddings, epsilon, index_type=index_type, max_distance=max_distance, recall=recall,
                         index=index, neighbours=neighbours)
        self.regularization = fraction("regularization", regularization)
        self.noise_shape = regularized_covariance_root(embeddings.vectors, self.regularization).astype(np.float32)
        self.metric = mahalanobis_metric(self.regularization)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "regularization": self.regularization}
