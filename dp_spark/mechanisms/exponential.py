"""Exponential mechanisms over the vocabulary, sampled exactly without
scoring every word for every token.

P[w' | w] is proportional to exp(score(w, w')), the score a non-increasing
function of the distance d(w, w') (plus a log prior for kde). The words of
the neighbour-table row (w and its K nearest) are scored exactly; every other
word lies at distance >= d_K (the row's last distance), so its weight is at
most c = exp(tail_bound). Rejection sampling with the envelope
    M(w') = weight(w') for row words + c for every word that may be output
(sum: row weights + c x count): draw w' from M (a row word by inverse CDF, or
a uniform word), accept it with probability weight(w') / M(w'), else draw
again. Each round needs one distance, not a row of |V|. An accepted word is an
exact draw; if ``MAX_ROUNDS`` rounds all reject (only at epsilons where the
row holds little of the mass and c overestimates the rest a lot), the token
is drawn from its full distance row by inverse CDF, which is exact too, so
the output law is exact whatever happens.
"""

from abc import abstractmethod

import numpy as np

from dp_spark.embeddings import Embeddings
from dp_spark.index import DEFAULT_NEIGHBOURS, NeighbourTable, neighbour_table
from dp_spark.mechanisms.base import Mechanism
from dp_spark.randomness import TokenRandom

CANDIDATE_STREAM = 10  # custext's Gumbel-max over its output set
FULL_ROW_STREAM = 11
ROUND_STREAM = 100  # round r draws on stream ROUND_STREAM + r


def gumbel(u: np.ndarray) -> np.ndarray:
    """Gumbel(0, 1) from uniforms in [0, 1) (u = 0 gives -inf, probability 0)."""
    with np.errstate(divide="ignore"):
        return -np.log(-np.log(u))


class ExponentialMechanism(Mechanism):
    """Shared sampler: subclasses define scores from distances."""

    FULL_ROW_CHUNK = 128
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

    def output_range(self) -> tuple[int, int]:
        """The ids [low, high) that may be output (the uniform part of the envelope)."""
        return 0, self.embeddings.size

    MAX_ROUNDS = 64

    def _perturb_in_vocabulary(self, ids: np.ndarray, rng: TokenRandom) -> np.ndarray:
        candidates = self._candidate_ids[ids]
        log_weights = self.scores(candidates, self._candidate_distances[ids].astype(np.float64))
        log_cap = self.tail_bound(ids)
        top = np.maximum(log_weights.max(axis=1), log_cap)
        weights = np.exp(log_weights - top[:, None])
        cap = np.exp(log_cap - top)
        cumulative = np.cumsum(weights, axis=1)
        low, high = self.output_range()
        total = cumulative[:, -1] + cap * (high - low)
        in_range = (candidates >= low) & (candidates < high)
        vectors = self.embeddings.vectors
        out = np.full(len(ids), -1, dtype=np.int64)
        active = np.arange(len(ids))
        for round_ in range(self.MAX_ROUNDS):
            if not len(active):
                break
            u = rng.restrict(active).uniform(ROUND_STREAM + round_, 3)
            row_mass = cumulative[active, -1]
            from_row = u[:, 0] * total[active] < row_mass
            # A row word by inverse CDF over the row, or a uniform word of the range.
            column = np.minimum((cumulative[active] <= (u[:, 1] * row_mass)[:, None]).sum(axis=1),
                                candidates.shape[1] - 1)
            uniform_word = low + np.minimum((u[:, 1] * (high - low)).astype(np.int64), high - low - 1)
            matches = candidates[active] == uniform_word[:, None]
            in_row = matches.any(axis=1)
            column = np.where(from_row, column, matches.argmax(axis=1))
            proposal = np.where(from_row, candidates[active, column], uniform_word)
            row_word = from_row | in_row
            target = np.where(row_word, weights[active, column], 0.0)
            envelope = target + np.where(row_word, cap[active] * in_range[active, column], cap[active])
            outside = np.flatnonzero(~row_word)
            if len(outside):
                words = ids[active[outside]]
                distance = np.sqrt(((vectors[proposal[outside]] - vectors[words]).astype(np.float64) ** 2).sum(axis=1))
                log_target = self.scores(proposal[outside][:, None], distance[:, None])[:, 0]
                target[outside] = np.exp(log_target - top[active[outside]])
            accept = u[:, 2] * envelope < target
            out[active[accept]] = proposal[accept]
            active = active[~accept]
        for start in range(0, len(active), self.FULL_ROW_CHUNK):
            rows = active[start : start + self.FULL_ROW_CHUNK]
            out[rows] = self._full_row_draw(ids[rows], rng.restrict(rows))
        return out

    def _full_row_draw(self, words: np.ndarray, rng: TokenRandom) -> np.ndarray:
        """Exact draws by inverse CDF over each word's whole distance row."""
        size = self.embeddings.size
        vectors = self.embeddings.vectors
        squared = self._squared_norms[words][:, None] + self._squared_norms[None, :]
        squared -= 2.0 * (vectors[words] @ vectors.T).astype(np.float64)
        squared[np.arange(len(words)), words] = 0.0
        all_words = np.broadcast_to(np.arange(size), (len(words), size))
        scores = self.scores(all_words, np.sqrt(np.maximum(squared, 0, out=squared), out=squared))
        weights = np.exp(scores - scores.max(axis=1, keepdims=True), out=scores)
        cumulative = np.cumsum(weights, axis=1, out=weights)
        u = rng.uniform(FULL_ROW_STREAM, 1)[:, 0] * cumulative[:, -1]
        return np.minimum((cumulative <= u[:, None]).sum(axis=1), size - 1)


def exponential_distribution(mechanism: ExponentialMechanism, word: int) -> np.ndarray:
    """P[M(word) = w'] for every w' by the closed form (for tests and reports)."""
    vectors = mechanism.embeddings.vectors.astype(np.float64)
    distances = np.linalg.norm(vectors - vectors[word], axis=1)
    scores = mechanism.scores(np.arange(len(vectors))[None, :], distances[None, :])[0]
    weights = np.exp(scores - scores[np.isfinite(scores)].max())
    weights[~np.isfinite(scores)] = 0.0
    return weights / weights.sum()

