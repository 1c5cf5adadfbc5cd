"""Truncated Gumbel mechanism (density-aware, kNN-truncated).

Xu, Feyisetan, Aggarwal, Xu, Teissier. "Density-aware differentially private
textual perturbations using truncated Gumbel noise". FLAIRS 2021 (best paper).

Per token w:
1. k ~ Poisson(lambda) conditioned on k <= |V| - 1; lambda = ``poisson_rate``,
   by default ln(|V| - 1) (the reference code's choice).
2. Candidates: w itself (distance 0) and its k nearest neighbours (k + 1 in
   all, as the authors describe it; the public reference code takes k - 1
   neighbours, an off-by-one). k = 0 outputs w.
3. s_c = d(w, c) + g_c, g_c ~ Gumbel(0, b) conditioned on |g_c| <= Delta_max;
   d is the Euclidean distance (the reference code uses FAISS's squared one).
4. Output argmin_c s_c. This is not the Gumbel-max trick; it is the rule the
   authors describe and the reference code implements.

Scale b (reference code's calibration; the paper's theorem could not be read
and is unverified), with Delta_min the smallest distance between two distinct
vocabulary words and Delta_max the vocabulary's diameter, both global:
    a = (epsilon - 2 (1 + ln |V|) / Delta_min) / 3
    b = 2 Delta_max / min(W0(2 a Delta_max), ln(a Delta_min))
It is valid only for epsilon > epsilon_min = (5 + 2 ln |V|) / Delta_min; below
it the reference code silently returns a b that buys a much weaker guarantee,
so this one refuses. ``describe()`` reports b and the epsilon it buys,
    epsilon(b) = 2 (1 + ln |V|) / Delta_min + 3 e^(2 Delta_max / b) max(1/b, 1/Delta_min).
On GloVe 6B 50d (100k words) Delta_min = 0.351 (monday/tuesday): epsilon_min ~ 80.
Because b falls only logarithmically with epsilon, N_w barely moves with
epsilon: the utility comes from the kNN truncation, and the knob that moves
privacy is the Poisson rate (more candidates, fewer survivals).

Guarantee: none, and this module books none. The calibration above is the
reference code's; it is not a bound this mechanism satisfies. A word y
outside w's nearest neighbours can only be output from w when k reaches y's
rank, whose probability falls like lambda^r / r!: for r beyond ~50 (at the
default lambda) it is below double precision, so y is impossible from w and
likely from y's own neighbours, and no epsilon-d_X inequality holds (measured
on the default vocabulary: "london" never gives "the" in 20,000 draws at
epsilon 100, while "the" gives itself with probability 0.14). Even uncapped,
the ratio grows like r! with the rank, far beyond any useful epsilon. The
auditor computes the exact law by quadrature and reports the loss.

No search on the hot path: candidates and distances are gathered from the
neighbour table; only the rare k > K falls back to an exact scan.

``max_distance`` R replaces the kNN truncation by distance truncation
(FLAIRS 2021, "research challenges"): the candidates are w and every word
within distance R of it (no Poisson draw), scored the same way. The support
then depends on the input's neighbourhood, so the kNN calibration's claim does
not carry over: no guarantee is derived for this variant (unverified);
words with no neighbour within R are never changed.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from dp_spark.embeddings import Embeddings
from dp_spark.guarantees import Guarantee
from dp_spark.index import (
    DEFAULT_NEIGHBOURS,
    NeighbourTable,
    build_index,
    nearest_other_words,
    neighbour_table,
)
from dp_spark.mechanisms.base import Mechanism, non_negative_float, optional_positive_float
from dp_spark.mechanisms.noise import (
    lambert_w0,
    truncated_gumbel,
    truncated_poisson_cdf,
)
from dp_spark.randomness import TokenRandom


def minimum_epsilon(vocab_size: int, min_distance: float) -> float:
    """Smallest epsilon (exclusive) for which the scale calibration is valid."""
    return (5 + 2 * math.log(vocab_size)) / min_distance


def gumbel_scale(epsilon: float, vocab_size: int, min_distance: float, diameter: float) -> float:
    """Scale b of the Gumbel noise that the calibration assigns to ``epsilon``."""
    floor = minimum_epsilon(vocab_size, min_distance)
    if not epsilon > floor:
        raise ValueError(
            f"epsilon={epsilon:g} is below the truncated Gumbel mechanism's valid range for "
            f"this vocabulary: epsilon must exceed epsilon_min = (5 + 2 ln |V|) / Delta_min "
            f"= {floor:.4g} (|V| = {vocab_size}, Delta_min = {min_distance:.4g}); below it "
            f"the calibration gives no guarantee at the requested epsilon"
        )
    a = (epsilon - 2 * (1 + math.log(vocab_size)) / min_distance) / 3
    return 2 * diameter / min(lambert_w0(2 * a * diameter), math.log(a * min_distance))


def epsilon_of_scale(scale: float, vocab_size: int, min_distance: float, diameter: float) -> float:
    """The epsilon a Gumbel scale b buys (the calibration inverted)."""
    return 2 * (1 + math.log(vocab_size)) / min_distance + 3 * math.exp(
        2 * diameter / scale
    ) * max(1 / scale, 1 / min_distance)


def _guide_table(cdf: np.ndarray, buckets: int = 4096) -> np.ndarray:
    """For ``_sample_with_guide``: entry b is the number of CDF values <= b /
    buckets, for b = 0..buckets."""
    return np.searchsorted(cdf, np.arange(buckets + 1) / buckets, side="right")


def _sample_with_guide(cdf: np.ndarray, guide: np.ndarray, u: np.ndarray) -> np.ndarray:
    """``sample_from_cdf(cdf, u)`` (#{j : cdf[j] <= u}), the same integers,
    from a guide table: u's bucket holds at most one CDF value for all but
    the last few buckets, so one comparison settles most draws and a binary
    search the rest (a binary search for every draw costs 4x more)."""
    buckets = len(guide) - 1
    bucket = (u * buckets).astype(np.intp)  # exact: buckets is a power of 2
    k = guide[bucket]
    spread = guide[bucket + 1] - k
    one = np.flatnonzero(spread == 1)
    k[one] += cdf[k[one]] <= u[one]
    several = np.flatnonzero(spread > 1)
    k[several] = np.searchsorted(cdf, u[several], side="right")
    return k.astype(np.int64)


def _cheapest_narrow_width(k_cdf: np.ndarray, full_width: int) -> int:
    """Tokens whose k + 1 candidates fit in a narrow padded matrix are scored
    there, the rest in a full-width one; pick the narrow width w that
    minimises the expected noise draws per token, w + P[k >= w] full_width."""
    widths = np.arange(1, full_width + 1)
    at_least = 1.0 - k_cdf[np.minimum(widths - 1, len(k_cdf) - 1)]
    return int(widths[np.argmin(widths + at_least * full_width)])


class TruncatedGumbel(Mechanism):
    name = "tgumbel"
    needs_neighbours = True

    def __init__(
        self,
        embeddings: Embeddings,
        epsilon: float,
        *,
        max_distance: float | None = None,
        poisson_rate: float | None = None,
        neighbours: NeighbourTable | None = None,
    ) -> None:
        super().__init__(embeddings, epsilon)
        self.max_distance = optional_positive_float("max_distance", max_distance)
        if poisson_rate is not None:
            poisson_rate = non_negative_float("poisson_rate", poisson_rate)
        if embeddings.size < 2:
            raise ValueError("the truncated Gumbel mechanism needs at least 2 vocabulary words")
        if neighbours is None:
            neighbours = neighbour_table(embeddings, DEFAULT_NEIGHBOURS)
        elif neighbours.fingerprint != embeddings.fingerprint:
            raise ValueError("the neighbour table was built from other embeddings")
        size = embeddings.size
        self.neighbours = neighbours
        self.min_distance = neighbours.min_distance
        self.diameter = neighbours.diameter
        if self.min_distance <= 0:
            raise ValueError(
                "two vocabulary words have identical vectors (Delta_min = 0), so no epsilon "
                "is valid for the truncated Gumbel mechanism; deduplicate the embeddings"
            )
        self.scale = gumbel_scale(self.epsilon, size, self.min_distance, self.diameter)
        if poisson_rate is None:
            poisson_rate = math.log(size - 1) if size > 2 else 0.0
        self.poisson_rate = poisson_rate
        self.k_cdf = truncated_poisson_cdf(self.poisson_rate, size - 1)
        self._k_guide = _guide_table(self.k_cdf)
        # Candidate 0 is the word itself at distance 0, candidate j >= 1 its
        # neighbour j - 1: read from the table as it is (memory-mapped from
        # the artifact, one copy per machine), never copied with a column 0.
        self._neighbour_ids = np.asarray(neighbours.ids).reshape(-1)
        self._neighbour_distances = np.asarray(neighbours.distances).reshape(-1)
        self._narrow_width = _cheapest_narrow_width(self.k_cdf, neighbours.k + 1)
        self._exact_index = None

    # Tokens are drawn for in chunks of this many (the generator source's
    # draws follow the chunks, so the size is part of its noise stream;
    # a chunk's columns stay in cache); groups smaller than DENSE_BELOW are
    # scored on a matrix.
    CHUNK = 32_768
    DENSE_BELOW = 2_048
    K_STREAM, NOISE_STREAM = 0, 1

    def _perturb_in_vocabulary(self, ids: np.ndarray, rng: TokenRandom) -> np.ndarray:
        if len(ids) <= self.CHUNK:
            return self._perturb_chunk(ids, rng)
        chunks = []
        for start in range(0, len(ids), self.CHUNK):
            rows = np.arange(start, min(start + self.CHUNK, len(ids)))
            chunks.append(self._perturb_chunk(ids[rows], rng.restrict(rows)))
        return np.concatenate(chunks)

    def _candidate_counts(self, ids: np.ndarray, rng: TokenRandom) -> np.ndarray:
        """k per token: a Poisson draw, or the number of words within max_distance."""
        if self.max_distance is None:
            return _sample_with_guide(self.k_cdf, self._k_guide, rng.uniform(self.K_STREAM, 1)[:, 0])
        table = self.neighbours
        k = (np.asarray(table.distances)[ids] <= self.max_distance).sum(axis=1)
        full = np.flatnonzero(k == table.k)
        for start in range(0, len(full), 256):  # the whole table row is within R: count the rest exactly
            rows = full[start : start + 256]
            squared = self.embeddings.squared_distances(ids[rows])
            k[rows] = (squared <= self.max_distance**2).sum(axis=1) - 1
        return k

    def _perturb_chunk(self, ids: np.ndarray, rng: TokenRandom) -> np.ndarray:
        k = self._candidate_counts(ids, rng)
        narrow = k < self._narrow_width
        if narrow.all():
            return self._choose_from_table(ids, k, self._narrow_width, rng)
        out = np.empty_like(ids)
        full_width = self.neighbours.k + 1
        for rows, width in (
            (np.flatnonzero(narrow), self._narrow_width),
            (np.flatnonzero(~narrow & (k < full_width)), full_width),
        ):
            out[rows] = self._choose_from_table(ids[rows], k[rows], width, rng.restrict(rows))
        beyond = np.flatnonzero(k >= full_width)
        if len(beyond):
            out[beyond] = self._choose_by_scan(ids[beyond], k[beyond], rng.restrict(beyond))
        return out

    def _choose_from_table(
        self, ids: np.ndarray, k: np.ndarray, width: int, rng: TokenRandom
    ) -> np.ndarray:
        starts = ids * self.neighbours.k
        chosen = self._noisy_argmin(self._neighbour_distances, starts, k, width, rng)
        out = ids.copy()
        moved = np.flatnonzero(chosen)
        out[moved] = self._neighbour_ids[starts[moved] + chosen[moved] - 1]
        return out

    def _choose_by_scan(self, ids: np.ndarray, k: np.ndarray, rng: TokenRandom) -> np.ndarray:
        """Candidates for k beyond the table's K, by an exact search (rare)."""
        if self._exact_index is None:
            self._exact_index = build_index(self.embeddings.vectors, "flat")
        width = int(k.max())
        neighbour_ids, neighbour_distances = nearest_other_words(
            self._exact_index, self.embeddings.vectors, ids, width
        )
        chosen = self._noisy_argmin(neighbour_distances.reshape(-1), np.arange(len(ids)) * width, k, width + 1, rng)
        candidates = np.hstack([ids[:, None], neighbour_ids])
        return candidates[np.arange(len(ids)), chosen].astype(np.int64)

    def _noisy_argmin(
        self, distances: np.ndarray, starts: np.ndarray, k: np.ndarray, width: int, rng: TokenRandom
    ) -> np.ndarray:
        """For each token i, the candidate c in 0..k_i minimising d_c + g_c
        (first on ties), where d_0 = 0 (the word itself) and d_c =
        ``distances[starts[i] + c - 1]`` (its neighbours, nearest first).
        Candidate c's noise is the c-th uniform of the token's noise stream,
        whatever the width it is drawn at.

        Many tokens are scored a candidate at a time, over the tokens that
        have it (sorted by k, most candidates first, so they are a prefix):
        the same float32 operations as scoring the (tokens x width) matrix,
        on the k + 1 candidates only (12.4 a token on average for the
        default vocabulary, against a width of 19), and a keyed source
        computes only the uniforms that are used. A few tokens (the wide
        group of a chunk: ~2% of them) are scored on the matrix at once,
        where a column at a time would cost more in calls than in work."""
        if len(k) < self.DENSE_BELOW:
            scores = self._noise(rng.uniform(self.NOISE_STREAM, width, np.float32))
            candidates = np.arange(1, width)
            scores[:, 1:] += np.take(distances, starts[:, None] - 1 + candidates[None, :])
            scores[:, 1:][candidates[None, :] > k[:, None]] = np.inf
            return scores.argmin(axis=1)
        uniforms = rng.uniform_columns(self.NOISE_STREAM, width, np.float32)
        # Radix-sortable keys: a stable argsort of 8- or 16-bit integers is a counting sort.
        order = np.argsort((width - 1 - k).astype(np.min_scalar_type(width)), kind="stable")
        with_candidate = len(order) - np.cumsum(np.bincount(k, minlength=width))
        sorted_starts = starts[order] - 1
        columns = uniforms.permuted(order)
        best = self._noise(columns.column(0, len(order)))  # + d_0 = 0
        best_candidate = np.zeros(len(order), np.min_scalar_type(width))
        for candidate in range(1, width):
            count = int(with_candidate[candidate - 1])
            if count == 0:
                break
            scores = self._noise(columns.column(candidate, count))
            scores += np.take(distances, sorted_starts[:count] + candidate)
            better = scores < best[:count]
            np.minimum(best[:count], scores, out=best[:count])
            np.copyto(best_candidate[:count], candidate, where=better)
        chosen = np.empty(len(k), np.int64)
        chosen[order] = best_candidate
        return chosen

    def _noise(self, uniforms: np.ndarray) -> np.ndarray:
        return truncated_gumbel(uniforms, self.scale, self.diameter)

    def guarantee(self) -> Guarantee:
        return Guarantee.none(
            "kNN truncation makes words beyond a word's nearest neighbours impossible outputs for it "
            "and possible ones for others, so no epsilon-d_X bound holds (the calibration of the "
            "Gumbel scale is the reference code's, not a proof)"
        )

    def describe(self) -> dict[str, Any]:
        size = self.embeddings.size
        return {
            **super().describe(),
            "gumbel_scale": self.scale,
            "epsilon_of_scale": epsilon_of_scale(
                self.scale, size, self.min_distance, self.diameter
            ),
            "epsilon_min": minimum_epsilon(size, self.min_distance),
            "poisson_rate": self.poisson_rate,
            "delta_min": self.min_distance,
            "delta_max": self.diameter,
            "vocab_size": size,
            "neighbours": self.neighbours.k,
            "truncation": "knn" if self.max_distance is None else "distance",
            "max_distance": self.max_distance,
        }


def exact_log_distribution(mechanism: TruncatedGumbel, word: int, grid_points: int = 2001) -> np.ndarray:
    """ln P[M(word) = y] for every word y (-inf where y is impossible), by
    quadrature: the exact law for the auditor and the distribution tests.

    Candidate c_j (c_0 = word, then its neighbours nearest first) wins among
    the first k + 1 with probability
        integral of f(g) prod_{i <= k, i != j} S(d_j + g - d_i) dg,
    f and S the truncated Gumbel density and survival function, integrated by
    the trapezoid rule over the winner's noise g in [-Delta_max, Delta_max].
    k follows the sampler's own Poisson table (``k_cdf``), which ends where
    the tail falls below double precision: ranks beyond it are impossible
    here as they are for the sampler (with ``max_distance``, k is the number
    of words within it). The log survival sums grow with k, one candidate at
    a time, so every k up to the table's end costs O(k_max^2 grid_points)
    in all. Probabilities are kept as logarithms because the ones the
    auditor compares can fall far below double precision's smallest number.
    This is the law of continuous noise: the sampler's float32 uniforms
    resolve the noise's lower tail only to probability ~1e-7
    (``truncated_gumbel``)."""
    size = mechanism.embeddings.size
    if mechanism.max_distance is None:
        k_law = np.diff(mechanism.k_cdf, prepend=0.0)
    else:
        # Distance truncation draws nothing (no random source needed): k is
        # the sampler's own count of the words within R.
        within = int(mechanism._candidate_counts(np.array([word]), None)[0])
        k_law = np.zeros(within + 1)
        k_law[within] = 1.0
    last = int(np.flatnonzero(k_law > 0)[-1])
    table = mechanism.neighbours
    if last <= table.k:
        others, distances = table.ids[word, :last], table.distances[word, :last].astype(np.float64)
    else:  # as the sampler's exact-search fallback does
        squared = mechanism.embeddings.squared_distances(np.array([word]))[0]
        squared[word] = np.inf
        others = np.argsort(squared, kind="stable")[:last]
        distances = np.sqrt(squared[others])
    candidates = np.concatenate([[word], others]).astype(np.int64)
    distances = np.concatenate([[0.0], distances])

    scale, bound = mechanism.scale, mechanism.diameter
    noise = np.linspace(-bound, bound, grid_points)
    trapezoid = np.full(grid_points, noise[1] - noise[0])
    trapezoid[[0, -1]] /= 2
    log_mass = _log_gumbel_mass_between(-bound, bound, scale)
    log_winner = np.log(trapezoid) - noise / scale - np.exp(-noise / scale) - math.log(scale) - log_mass

    def log_survival(x: np.ndarray) -> np.ndarray:
        inside = np.clip(x, -bound, bound)
        with np.errstate(divide="ignore"):
            value = _log_gumbel_mass_between(inside, bound, scale) - log_mass
        return np.where(x < -bound, 0.0, np.where(x >= bound, -np.inf, value))

    # losing[j] = sum over the candidates i != j so far of ln P[d_i + g_i > d_j + g].
    losing = np.zeros((last + 1, grid_points))
    log_law = np.full(size, -np.inf)
    for k in range(last + 1):
        if k:
            losing[:k] += log_survival(distances[:k, None] + noise[None, :] - distances[k])
            losing[k] = log_survival(distances[k] + noise[None, :] - distances[:k, None]).sum(axis=0)
        if k_law[k] == 0:
            continue
        log_wins = _log_sum_exp(losing[: k + 1] + log_winner[None, :], axis=1)
        log_wins -= _log_sum_exp(log_wins, axis=0)  # the quadrature's error, spread evenly
        log_law[candidates[: k + 1]] = np.logaddexp(log_law[candidates[: k + 1]], math.log(k_law[k]) + log_wins)
    return log_law


def _log_gumbel_mass_between(low: np.ndarray | float, high: float, scale: float) -> np.ndarray:
    """ln P[low < G <= high] for G ~ Gumbel(0, scale), written so that it
    neither overflows nor cancels: with e = exp(-x / scale), the CDF is
    exp(-e), and exp(-e_high) - exp(-e_low) = exp(-e_high) (1 - exp(-(e_low - e_high)))."""
    e_low = np.exp(-np.asarray(low, dtype=np.float64) / scale)
    e_high = math.exp(-high / scale)
    return -e_high + np.log(-np.expm1(-(e_low - e_high)))


def _log_sum_exp(values: np.ndarray, axis: int) -> np.ndarray:
    top = values.max(axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return np.squeeze(top, axis=axis) + np.log(np.exp(values - top).sum(axis=axis))
