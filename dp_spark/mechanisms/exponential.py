"""Exponential mechanisms over the vocabulary, sampled exactly without
scoring every word for every token.

P[w' | w] is proportional to pi(w') exp(score(d(w, w'))), the score a
non-increasing function of the distance and pi a public prior over the words
that may be output (uniform over an id range, or kde's density). The words of
the neighbour-table row (w and its K nearest) are scored exactly; every other
word lies at distance >= d_K (the row's last distance), so its weight is at
most c pi(w') with c = exp(score(d_K)). Rejection sampling with the envelope
    M(w') = weight(w') for row words + c pi(w') for every word
(sum: row weights + c sum(pi)): draw w' from M (a row word by inverse CDF, or
a word drawn from pi), accept it with probability weight(w') / M(w'), else
draw again. Each round needs one distance, not a row of |V|, and the tail
proposal follows the prior, so a peaked prior does not slow acceptance. An
accepted word is an exact draw; if ``MAX_ROUNDS`` rounds all reject (only at
epsilons where the row holds little of the mass and c overestimates the rest a
lot), the token is drawn from its full distance row by inverse CDF, which is
exact too, so the output law is exact whatever happens. The full rows are
computed once per distinct word of the batch.
"""

import math
from abc import abstractmethod
from functools import cached_property

import numpy as np

from dp_spark.embeddings import Embeddings
from dp_spark.index import DEFAULT_NEIGHBOURS, NeighbourTable, neighbour_table
from dp_spark.mechanisms.base import Mechanism
from dp_spark.randomness import TokenRandom

CANDIDATE_STREAM = 10  # custext's Gumbel-max over its output set
FULL_ROW_STREAM = 11
ROUND_STREAM = 100  # round r draws on stream ROUND_STREAM + r


def gumbel(u: np.ndarray) -> np.ndarray:
    """Gumbel(0, 1) from uniforms in (0, 1)."""
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

    @abstractmethod
    def distance_score(self, distances: np.ndarray) -> np.ndarray:
        """Log-weight of an output at these distances (non-increasing in d)."""

    def candidate_weight(self, candidates: np.ndarray) -> np.ndarray | float:
        """log pi of the output words themselves (-inf where an output is not
        allowed); 0 by default."""
        return 0.0

    def tail_prior(self) -> np.ndarray | None:
        """pi(w') = exp(candidate_weight(w')) for every word, when pi is not 1
        on ``output_range`` and 0 elsewhere (the default, None)."""
        return None

    def scores(self, candidates: np.ndarray, distances: np.ndarray) -> np.ndarray:
        """Log-weights (float64) of ``candidates`` at ``distances``."""
        return self.distance_score(distances) + self.candidate_weight(candidates)

    def output_range(self) -> tuple[int, int]:
        """The ids [low, high) that may be output when the prior is uniform."""
        return 0, self.embeddings.size

    MAX_ROUNDS = 1024

    @cached_property
    def _tail(self) -> tuple[tuple[np.ndarray, np.ndarray] | None, float, float]:
        """((prior scaled to max 1, its cumulative sum), or None when uniform;
        total scaled prior mass; log of the scale, the largest log pi)."""
        prior = self.tail_prior()
        if prior is None:
            low, high = self.output_range()
            return None, float(high - low), 0.0
        prior = np.asarray(prior, dtype=np.float64)
        largest = float(prior.max())
        prior = prior / largest
        cumulative = np.cumsum(prior)
        return (prior, cumulative), float(cumulative[-1]), math.log(largest)

    def _prior_of(self, words: np.ndarray) -> np.ndarray:
        """pi(words) on the scale of the tail envelope (max 1)."""
        tail = self._tail[0]
        if tail is None:
            low, high = self.output_range()
            return ((words >= low) & (words < high)).astype(np.float64)
        return tail[0][words]

    def _draw_from_prior(self, u: np.ndarray) -> np.ndarray:
        tail = self._tail[0]
        size = self.embeddings.size
        if tail is None:
            low, high = self.output_range()
            return low + np.minimum((u * (high - low)).astype(np.int64), high - low - 1)
        cumulative = tail[1]
        return np.minimum(np.searchsorted(cumulative, u * cumulative[-1], side="right"), size - 1)

    def _perturb_in_vocabulary(self, ids: np.ndarray, rng: TokenRandom) -> np.ndarray:
        candidates = self._candidate_ids[ids]
        log_weights = self.scores(candidates, self._candidate_distances[ids].astype(np.float64))
        _, prior_mass, log_largest_prior = self._tail
        # Beyond the row, log weight <= log_cap + log(pi(w') / largest pi).
        log_cap = self.distance_score(self._candidate_distances[ids, -1].astype(np.float64)) + log_largest_prior
        top = np.maximum(log_weights.max(axis=1), log_cap)
        weights = np.exp(log_weights - top[:, None])
        cap = np.exp(log_cap - top)
        cumulative = np.cumsum(weights, axis=1)
        total = cumulative[:, -1] + cap * prior_mass
        row_prior = self._prior_of(candidates)
        vectors = self.embeddings.vectors
        out = np.full(len(ids), -1, dtype=np.int64)
        active = np.arange(len(ids))
        for round_ in range(self.MAX_ROUNDS):
            if not len(active):
                break
            u = rng.restrict(active).uniform(ROUND_STREAM + round_, 3)
            row_mass = cumulative[active, -1]
            from_row = u[:, 0] * total[active] < row_mass
            # A row word by inverse CDF over the row, or a word drawn from the prior.
            column = np.minimum((cumulative[active] <= (u[:, 1] * row_mass)[:, None]).sum(axis=1),
                                candidates.shape[1] - 1)
            prior_word = self._draw_from_prior(u[:, 1])
            matches = candidates[active] == prior_word[:, None]
            in_row = matches.any(axis=1)
            column = np.where(from_row, column, matches.argmax(axis=1))
            proposal = np.where(from_row, candidates[active, column], prior_word)
            row_word = from_row | in_row
            target = np.where(row_word, weights[active, column], 0.0)
            prior = np.where(row_word, row_prior[active, column], self._prior_of(proposal))
            envelope = target + cap[active] * prior
            outside = np.flatnonzero(~row_word)
            if len(outside):
                words = ids[active[outside]]
                distance = np.sqrt(((vectors[proposal[outside]] - vectors[words]).astype(np.float64) ** 2).sum(axis=1))
                log_target = self.scores(proposal[outside][:, None], distance[:, None])[:, 0]
                target[outside] = np.exp(log_target - top[active[outside]])
            accept = u[:, 2] * envelope < target
            out[active[accept]] = proposal[accept]
            active = active[~accept]
        if len(active):
            out[active] = self._full_row_draw(ids[active], rng.restrict(active))
        return out

    def _full_row_draw(self, words: np.ndarray, rng: TokenRandom) -> np.ndarray:
        """Exact draws by inverse CDF over each word's whole distance row. The
        rows that fall back here are mostly a few isolated words repeated (a
        Zipf stream), so each distinct word's row is computed once and all its
        tokens are drawn from it, each with its own uniform."""
        size = self.embeddings.size
        distinct, token_row = np.unique(words, return_inverse=True)
        u = rng.uniform(FULL_ROW_STREAM, 1)[:, 0]
        by_row = np.argsort(token_row, kind="stable")
        row_bounds = np.searchsorted(token_row[by_row], np.arange(len(distinct) + 1))
        out = np.empty(len(words), dtype=np.int64)
        for start in range(0, len(distinct), self.FULL_ROW_CHUNK):
            chunk = distinct[start : start + self.FULL_ROW_CHUNK]
            distances = np.sqrt(self.embeddings.squared_distances(chunk))
            all_words = np.broadcast_to(np.arange(size), (len(chunk), size))
            scores = self.scores(all_words, distances)
            weights = np.exp(scores - scores.max(axis=1, keepdims=True), out=scores)
            cumulative = np.cumsum(weights, axis=1, out=weights)
            for row in range(len(chunk)):
                tokens = by_row[row_bounds[start + row] : row_bounds[start + row + 1]]
                found = np.searchsorted(cumulative[row], u[tokens] * cumulative[row, -1], side="right")
                out[tokens] = np.minimum(found, size - 1)
        return out


def exponential_distribution(mechanism: ExponentialMechanism, word: int) -> np.ndarray:
    """P[M(word) = w'] for every w' by the closed form (for tests and reports)."""
    vectors = mechanism.embeddings.vectors.astype(np.float64)
    distances = np.linalg.norm(vectors - vectors[word], axis=1)
    scores = mechanism.scores(np.arange(len(vectors))[None, :], distances[None, :])[0]
    weights = np.exp(scores - scores[np.isfinite(scores)].max())
    weights[~np.isfinite(scores)] = 0.0
    return weights / weights.sum()

