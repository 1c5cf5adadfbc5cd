"""TEM: the truncated exponential mechanism.

Carvalho, Vasiloudis, Feyisetan, Wang. "TEM: High Utility Metric Differential
Privacy on Text". SDM 2023.

gamma = (2 / epsilon) ln(((1 - beta) |V|) / beta); L_w = {w' : d(w, w') <= gamma}.
The paper's procedure scores w' in L_w by -d(w, w') and a bottom element by
-gamma + (2 / epsilon) ln |V \\ L_w|, adds Gumbel(0, 2 / epsilon) noise, takes
the argmax, and outputs a uniform word outside L_w when the bottom wins. In
closed form (derived, and the distribution the tests check):
    P[w'] proportional to exp(-epsilon min(d(w, w'), gamma) / 2),
the exponential mechanism with utility -min(d, gamma), which is 1-Lipschitz in
w: epsilon-d_X. It is sampled in that form, exactly (see ``exponential``).
Public implementations differ from it (pypantera returns the input word when
the bottom wins; mldp-text weights the bottom by ln(|V| / |L_w|)).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from dp_spark.embeddings import Embeddings
from dp_spark.guarantees import Guarantee
from dp_spark.index import NeighbourTable
from dp_spark.mechanisms.base import fraction
from dp_spark.mechanisms.exponential import ExponentialMechanism


class TruncatedExponential(ExponentialMechanism):
    name = "tem"

    def __init__(
        self,
        embeddings: Embeddings,
        epsilon: float,
        *,
        beta: float = 0.001,
        neighbours: NeighbourTable | None = None,
    ) -> None:
        super().__init__(embeddings, epsilon, neighbours)
        self.beta = fraction("beta", beta)
        if not 0 < self.beta < 1:
            raise ValueError(f"beta must be in (0, 1), got {beta!r}")
        self.gamma = 2 / self.epsilon * math.log((1 - self.beta) * embeddings.size / self.beta)

    def distance_score(self, distances: np.ndarray) -> np.ndarray:
        return -self.epsilon / 2 * np.minimum(distances, self.gamma)

    def guarantee(self) -> Guarantee:
        return Guarantee.pure(self.epsilon)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "beta": self.beta, "gamma": self.gamma}
