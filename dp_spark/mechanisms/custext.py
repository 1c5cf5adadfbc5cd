"""CusText: the exponential mechanism within customised output sets.

Chen, Mo, Wang, Chen, Nie, Wang, Cui. "A Customized Text Sanitization
Mechanism with Differential Privacy". Findings of ACL 2023.

Each word x has an output set S(x) of ``top_k`` words (default 20, x
included); utilities u(x, y) = -(d(x, y) - min_S d(x, .)) / (max_S d(x, .) -
min_S d(x, .)) lie in [-1, 0], and P[y | x] is proportional to
exp(epsilon u(x, y) / 2) within S(x).

``strategy = "conservative"`` (the authors' default): walking the vocabulary
in frequency order, each word not yet assigned takes itself and its nearest
unassigned words as a shared set, and every member draws from that set.
Here "nearest" looks within the neighbour table (K = 64 by default), so a set
can come out smaller than top_k where those neighbours are all taken
(reported as ``smallest_set`` / ``singleton_sets``). Guarantee: words of the
same set are epsilon-indistinguishable (pure epsilon-LDP within a set, since
utilities span at most 1); words of different sets are not protected against
each other, and a word alone in its set is never changed.
``strategy = "aggressive"``: each word's own top_k nearest words; sets overlap,
and the within-set statement no longer holds across them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dp_spark.embeddings import Embeddings
from dp_spark.guarantees import Guarantee
from dp_spark.index import DEFAULT_NEIGHBOURS, NeighbourTable, neighbour_table
from dp_spark.mechanisms.base import Mechanism, choice, positive_int
from dp_spark.mechanisms.exponential import CANDIDATE_STREAM, gumbel
from dp_spark.randomness import TokenRandom

STRATEGIES = ("conservative", "aggressive")


class CusText(Mechanism):
    name = "custext"
    needs_neighbours = True

    def __init__(
        self,
        embeddings: Embeddings,
        epsilon: float,
        *,
        top_k: int = 20,
        strategy: str = "conservative",
        neighbours: NeighbourTable | None = None,
    ) -> None:
        super().__init__(embeddings, epsilon)
        self.top_k = positive_int("top_k", top_k)
        self.strategy = choice("strategy", strategy, STRATEGIES)
        if neighbours is None:
            neighbours = neighbour_table(embeddings, max(DEFAULT_NEIGHBOURS, self.top_k))
        if neighbours.k + 1 < min(self.top_k, embeddings.size):
            raise ValueError(f"top_k={top_k} needs a neighbour table of at least {top_k - 1} neighbours")
        self.neighbours = neighbours
        members = self._sets() if self.strategy == "conservative" else self._own_sets()
        valid = members >= 0
        distances = np.full(members.shape, np.nan)
        vectors = embeddings.vectors
        for start in range(0, len(members), 8192):  # bounded (rows x top_k x n) temporaries
            rows = slice(start, start + 8192)
            offsets = vectors[np.where(valid[rows], members[rows], 0)].astype(np.float64)
            offsets -= vectors[rows, None, :]
            distances[rows] = np.where(valid[rows], np.sqrt((offsets**2).sum(axis=2)), np.nan)
        low = np.nanmin(distances, axis=1, keepdims=True)
        span = np.nanmax(distances, axis=1, keepdims=True) - low
        utility = np.where(span > 0, -(distances - low) / np.where(span > 0, span, 1), 0.0)
        self._members = members
        self._log_weights = np.where(valid, self.epsilon / 2 * utility, -np.inf)
        self.set_sizes = valid.sum(axis=1)

    def _own_sets(self) -> np.ndarray:
        size = self.embeddings.size
        return np.hstack([np.arange(size)[:, None], self.neighbours.ids[:, : self.top_k - 1]]).astype(np.int64)

    def _sets(self) -> np.ndarray:
        """Shared sets, greedily in frequency order; row x lists x's set."""
        size = self.embeddings.size
        assigned = np.zeros(size, dtype=bool)
        members = np.full((size, self.top_k), -1, dtype=np.int64)
        table = self.neighbours.ids
        for leader in range(size):
            if assigned[leader]:
                continue
            row = table[leader]
            group = np.concatenate([[leader], row[~assigned[row]][: self.top_k - 1]])
            assigned[group] = True
            members[group, : len(group)] = group
        return members

    def _perturb_in_vocabulary(self, ids: np.ndarray, rng: TokenRandom) -> np.ndarray:
        noisy = self._log_weights[ids] + gumbel(rng.uniform(CANDIDATE_STREAM, self.top_k))
        return self._members[ids, noisy.argmax(axis=1)]

    def distribution(self, word: int) -> np.ndarray:
        """P[M(word) = y] for every y (closed form, for tests and reports)."""
        out = np.zeros(self.embeddings.size)
        weights = np.exp(self._log_weights[word] - np.nanmax(self._log_weights[word]))
        valid = self._members[word] >= 0
        out[self._members[word][valid]] = weights[valid] / weights[valid].sum()
        return out

    def guarantee(self) -> Guarantee:
        if self.strategy == "conservative":
            return Guarantee.within_sets(self.epsilon)
        return Guarantee.none("aggressive CusText gives each word its own, overlapping output set, "
                              "so no two words share a set that bounds their distinguishability")

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "top_k": self.top_k,
            "strategy": self.strategy,
            "smallest_set": int(self.set_sizes.min()),
            "singleton_sets": int((self.set_sizes == 1).sum()),
        }
