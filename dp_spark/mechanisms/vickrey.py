"""Vickrey mechanism: choose between the first and second nearest words of
the noisy vector.

Xu, Aggarwal, Feyisetan, Teissier. "On a Utilitarian Approach to Privacy
Preserving Text Generation". PrivateNLP 2021.

z as in mlap (``base = "mlap"``) or mahalanobis (``base = "mahalanobis"``);
w1, w2 the two nearest vocabulary words to z (the input word is not
excluded), d1 <= d2; output w1 with probability
p = (1 - t) d2 / (t d1 + (1 - t) d2), else w2 (t = 0: plain nearest
neighbour; t = 1: always the second). The rule as pypantera implements it
(the paper's formula could not be read: unverified). Only z and fresh
randomness are used, so the base mechanism's guarantee carries over
(post-processing); mldp-text instead drops the input word when it is the
nearest, which is not post-processing.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from dp_spark.embeddings import Embeddings
from dp_spark.index import NeighbourTable
from dp_spark.mechanisms.base import choice, fraction
from dp_spark.mechanisms.mahalanobis import mahalanobis_metric, regularized_covariance_root
from dp_spark.mechanisms.mlap import MultivariateLaplace
from dp_spark.randomness import TokenRandom

BASES = ("mlap", "mahalanobis")
CHOICE_STREAM = 2


class Vickrey(MultivariateLaplace):
    name = "vickrey"

    def __init__(
        self,
        embeddings: Embeddings,
        epsilon: float,
        *,
        threshold: float = 0.75,
        base: str = "mlap",
        regularization: float = 0.2,
        index_type: str = "flat",
        recall: float = 0.99,
        index: faiss.Index | None = None,
        neighbours: NeighbourTable | None = None,
    ) -> None:
        super().__init__(embeddings, epsilon, index_type=index_type, recall=recall, index=index, neighbours=neighbours)
        if embeddings.size < 2:
            raise ValueError("the Vickrey mechanism needs at least 2 vocabulary words")
        self.threshold = fraction("threshold", threshold)
        self.base = choice("base", base, BASES)
        self.regularization = fraction("regularization", regularization)
        if self.base == "mahalanobis":
            self.noise_shape = regularized_covariance_root(embeddings.vectors, self.regularization).astype(np.float32)
            self.metric = mahalanobis_metric(self.regularization)

    def _perturb_in_vocabulary(self, ids: np.ndarray, rng: TokenRandom) -> np.ndarray:
        if len(ids) == 0:
            return ids
        squared, found = self.nearest(self.noisy_vectors(ids, rng), ids, 2)
        nearest = np.sqrt(np.maximum(squared, 0).astype(np.float64))
        t = self.threshold
        denominator = t * nearest[:, 0] + (1 - t) * nearest[:, 1]
        p_first = np.where(denominator > 0, (1 - t) * nearest[:, 1] / np.where(denominator > 0, denominator, 1), 1.0)
        first = rng.uniform(CHOICE_STREAM, 1)[:, 0] < p_first
        return np.where(first, found[:, 0], found[:, 1]).astype(np.int64)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "threshold": self.threshold,
            "base": self.base,
            "regularization": self.regularization if self.base == "mahalanobis" else None,
        }
