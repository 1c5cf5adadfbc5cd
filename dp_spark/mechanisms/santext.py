"""SanText and SanText+: the exponential mechanism over the vocabulary.

Yue, Du, Wang, Li, Sun, Chow. "Differential Privacy for Text Analytics via
Natural Text Sanitization". Findings of ACL 2021.

SanText: P[w' | w] proportional to exp(-epsilon d(w, w') / 2) over the whole
vocabulary (Euclidean d). Guarantee: epsilon-d_X (each normaliser moves by at
most e^(epsilon d / 2)). The authors' code precomputes a |V| x |V| probability
matrix; here each draw is an exact Gumbel-max over the neighbour table with a
tail bound (see ``exponential``), so no row is stored.

SanText+ (``sensitive_fraction`` w): the rarest fraction w of the vocabulary
(highest frequency ranks) is sensitive; outputs are always drawn from the
sensitive words, with the same weights restricted to them; a sensitive word is
always sanitised, any other word only with probability ``p`` (default 0.2) and
kept otherwise. Its guarantee is not stated here: the paper's claim could not
be checked (unverified); the words it keeps get no protection.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dp_spark.embeddings import Embeddings
from dp_spark.guarantees import Guarantee
from dp_spark.index import NeighbourTable
from dp_spark.mechanisms.base import fraction, optional_fraction
from dp_spark.mechanisms.exponential import ExponentialMechanism
from dp_spark.randomness import TokenRandom

KEEP_STREAM = 20


class SanText(ExponentialMechanism):
    name = "santext"

    def __init__(
        self,
        embeddings: Embeddings,
        epsilon: float,
        *,
        sensitive_fraction: float | None = None,
        p: float = 0.2,
        neighbours: NeighbourTable | None = None,
    ) -> None:
        super().__init__(embeddings, epsilon, neighbours)
        self.sensitive_fraction = optional_fraction("sensitive_fraction", sensitive_fraction)
        self.p = fraction("p", p)
        size = embeddings.size
        sensitive_count = size if self.sensitive_fraction is None else int(round(self.sensitive_fraction * size))
        if sensitive_count < 1:
            raise ValueError(f"sensitive_fraction={sensitive_fraction} leaves no sensitive word to output")
        self.first_sensitive = size - sensitive_count

    def distance_score(self, distances: np.ndarray) -> np.ndarray:
        return -self.epsilon / 2 * distances

    def candidate_weight(self, candidates: np.ndarray) -> np.ndarray | float:
        if not self.first_sensitive:
            return 0.0
        return np.where(candidates >= self.first_sensitive, 0.0, -np.inf)

    def output_range(self) -> tuple[int, int]:
        return self.first_sensitive, self.embeddings.size

    def _perturb_in_vocabulary(self, ids: np.ndarray, rng: TokenRandom) -> np.ndarray:
        if self.sensitive_fraction is None:
            return super()._perturb_in_vocabulary(ids, rng)
        sanitise = (ids >= self.first_sensitive) | (rng.uniform(KEEP_STREAM, 1)[:, 0] < self.p)
        out = ids.copy()
        rows = np.flatnonzero(sanitise)
        out[rows] = super()._perturb_in_vocabulary(ids[rows], rng.restrict(rows))
        return out

    def guarantee(self) -> Guarantee:
        if self.sensitive_fraction is None:
            return Guarantee.pure(self.epsilon)
        return Guarantee.none(
            "SanText+ keeps a non-sensitive word unchanged with probability 1 - p and never outputs "
            "one otherwise, so a sensitive input can never produce what a non-sensitive one often does"
        )

    def describe(self) -> dict[str, Any]:
        plus = self.sensitive_fraction is not None
        return {
            **super().describe(),
            "variant": "santext+" if plus else "santext",
            "sensitive_fraction": self.sensitive_fraction,
            "p": self.p if plus else None,
        }
