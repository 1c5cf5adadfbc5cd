"""Exponential mechanisms over the vocabulary, sampled exactly by Gumbel-max
without scoring every word for every token.

P[w' | w] is proportional to exp(score(w, w')), the score a decreasing
function of the distance d(w, w') (plus a log prior for kde). Gumbel-max:
output argmax_w' score(w, w') + G_w', G iid Gumbel(0, 1). Scores are exact on
the neighbour table (w and its K nearest words). The other words (the tail,
all at distance >= d_K, the table's last distance) score at most
``tail_bound``, and the largest of their n Gumbels is itself distributed as
ln n + Gumbel(0, 1). So draw that maximum M first: if the best table word
beats tail_bound + M, no tail word can win and the draw is exact. Otherwise
(rare unless epsilon is small) the token's full distance row is computed, the
tail's Gumbels are drawn conditioned on their maximum being M (one of them,
uniformly, is M; the rest are Gumbel truncated below M), and the argmax is
taken over the whole vocabulary: still exact.
"""

from __future__ import annotations

from abc import abstractmethod

import numpy as np

from dp_spark.embeddings import Embeddings
from dp_spark.index import DEFAULT_NEIGHBOURS, NeighbourTable, neighbour_table
from dp_spark.mechanisms.base import Mechanism
from dp_spark.randomness import TokenRandom

CANDIDATE_STREAM, TAIL_MAX_STREAM, TAIL_INDEX_STREAM, TAIL_STREAM = 10, 11, 12, 13


def gumbel(u: np.ndarray) -> np.ndarray:
    """Gumbel(0, 1) from uniforms in [0, 1) (u = 0 gives -inf, probability 0)."""
    with np.errstate(divide="ignore"):
        return -np.log(-np.log(u))


class ExponentialMechanism(Mechanism):
    """Shared sampler: subclasses define scores from distances."""

    FULL_ROW_CHUNK = 64
    needs_neighbours = True

    def __init__(self, embeddings: Embeddings, epsilon: float, neighbours: NeighbourTable | None) -> None:
        super().__init__(embeddings, epsilon)
        if neighbours is None:
            neighbours = neighbour_table(embeddings, DEFAULT_NEIGHBOURS)
        elif neighbours.fingerprint != embeddings.fingerprint:
            raise ValueError("the neighbour table was built from other embeddings")
        self.neighbours = neighbours
        size = embeddings.size
        self._candidate_ids = np.hstack([np.arange(size, dtype=np.int64)[:, None], neighbours.ids])
        self._candidate_distances = np.hstack([np.zeros((size, 1), np.float32), neighbours.distances])
        self._squared_norms = (embeddings.vectors.astype(np.float64) ** 2).sum(axis=1)

    @abstractmethod
    def distance_score(self, distances: np.ndarray) -> np.ndarray:
        """Log-weight of an output at these distances (non-increasing in d)."""

    def candidate_weight(self, candidates: np.ndarray) -> np.ndarray | float:
        """Log-weight of the output words themselves (a prior; -inf where an
        output is not allowed); 0 by default."""
        return 0.0

    # The largest candidate_weight of any word (for the tail bound).
    max_candidate_weight = 0.0

    def scores(self, candidates: np.ndarray, distances: np.ndarray) -> np.ndarray:
        """Log-weights (float64) of ``candidates`` at ``distances``."""
        return self.distance_score(distances) + self.candidate_weight(candidates)

    def tail_bound(self, words: np.ndarray) -> np.ndarray:
        """An upper bound on the score of any word outside the table row of
        each input word (all at distance >= the row's last distance)."""
        return self.distance_score(self._candidate_distances[words, -1].astype(np.float64)) + self.max_candidate_weight

    def tail_size(self, words: np.ndarray) -> np.ndarray:
        """How many words outside the table row may be output."""
        return np.full(len(words), self.embeddings.size - self._candidate_ids.shape[1], dtype=np.int64)

    def _perturb_in_vocabulary(self, ids: np.ndarray, rng: TokenRandom) -> np.ndarray:
        candidates = self._candidate_ids[ids]
        noisy = self.scores(candidates, self._candidate_distances[ids].astype(np.float64))
        noisy += gumbel(rng.uniform(CANDIDATE_STREAM, candidates.shape[1]))
        best = noisy.argmax(axis=1)
        best_score = noisy[np.arange(len(ids)), best]
        out = candidates[np.arange(len(ids)), best]
        tail_size = self.tail_size(ids)
        with np.errstate(divide="ignore"):
            tail_max = np.log(tail_size) + gumbel(rng.uniform(TAIL_MAX_STREAM, 1)[:, 0])
        unsure = np.flatnonzero((tail_size > 0) & ~(best_score > self.tail_bound(ids) + tail_max))
        # Full rows are |V| wide: a few tokens at a time keep memory bounded.
        for start in range(0, len(unsure), self.FULL_ROW_CHUNK):
            rows = unsure[start : start + self.FULL_ROW_CHUNK]
            out[rows] = self._full_row_draw(ids[rows], noisy[rows], best_score[rows], tail_max[rows], rng.restrict(rows))
        return out

    def _full_row_draw(
        self, words: np.ndarray, noisy: np.ndarray, best_score: np.ndarray, tail_max: np.ndarray,
        rng: TokenRandom,
    ) -> np.ndarray:
        """Finish exact draws whose winner may lie in the tail: score every
        word, with the tail's Gumbels conditioned on their maximum."""
        size = self.embeddings.size
        candidates = self._candidate_ids[words]
        vectors = self.embeddings.vectors
        squared = (
            self._squared_norms[words][:, None] + self._squared_norms[None, :]
            - 2.0 * vectors[words].astype(np.float64) @ vectors.astype(np.float64).T
        )
        all_words = np.broadcast_to(np.arange(size), (len(words), size))
        scores = self.scores(all_words, np.sqrt(np.maximum(squared, 0)))
        in_table = np.zeros((len(words), size), dtype=bool)
        np.put_along_axis(in_table, candidates, True, axis=1)
        tail = ~in_table & np.isfinite(scores)
        # Tail Gumbels given their maximum M: uniformly one of them is M, the
        # others are Gumbel(0, 1) truncated to (-inf, M] (inverse CDF).
        limit = np.exp(-np.exp(-tail_max))
        u = rng.uniform(TAIL_STREAM, size)
        with np.errstate(divide="ignore"):
            tail_gumbels = -np.log(-np.log(u * limit[:, None]))
        pick = rng.uniform(TAIL_INDEX_STREAM, 1)[:, 0]
        counts = tail.sum(axis=1)
        chosen_rank = np.minimum((pick * counts).astype(np.int64), np.maximum(counts - 1, 0))
        ranks = np.cumsum(tail, axis=1) - 1
        is_max = tail & (ranks == chosen_rank[:, None])
        tail_gumbels[is_max] = np.repeat(tail_max, is_max.sum(axis=1))
        tail_scores = np.where(tail, scores + tail_gumbels, -np.inf)
        winner = tail_scores.argmax(axis=1)
        tail_best = tail_scores[np.arange(len(words)), winner]
        table_best = candidates[np.arange(len(words)), noisy.argmax(axis=1)]
        return np.where(tail_best > best_score, winner, table_best)


def exponential_distribution(mechanism: ExponentialMechanism, word: int) -> np.ndarray:
    """P[M(word) = w'] for every w' by the closed form (for tests and reports)."""
    vectors = mechanism.embeddings.vectors.astype(np.float64)
    distances = np.linalg.norm(vectors - vectors[word], axis=1)
    scores = mechanism.scores(np.arange(len(vectors))[None, :], distances[None, :])[0]
    weights = np.exp(scores - scores[np.isfinite(scores)].max())
    weights[~np.isfinite(scores)] = 0.0
    return weights / weights.sum()

