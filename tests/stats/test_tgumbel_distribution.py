"""The truncated Gumbel mechanism against its exact output distribution.

The reference is computed independently of the sampler: candidates by a full
argsort of distances, k from the Poisson pmf, and P[candidate j wins] by
quadrature of f_j(g) prod_{i != j} P[d_i + g_i > d_j + g] over the truncated
Gumbel noise g of the winner. The library's ``exact_log_distribution`` (the
auditor's law: log space, k from the sampler's own Poisson table, survival
sums grown one candidate at a time) is checked against this reference and
against the sampler.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from dp_spark.embeddings import Embeddings
from dp_spark.index import NeighbourTable, build_neighbour_table
from dp_spark.mechanisms import build_mechanism
from dp_spark.mechanisms.tgumbel import (
    epsilon_of_scale,
    exact_log_distribution,
    gumbel_scale,
    minimum_epsilon,
)
from dp_spark.randomness import KeyedRandom
from tests.stats.distributions import P_VALUE_THRESHOLD, chi_square_gof

DRAWS = 60_000
GRID_DRAWS = 200_000  # drawing is cheap; more draws give the negative controls margin


def gumbel_cdf(x, scale, bound):
    low, high = math.exp(-math.exp(bound / scale)), math.exp(-math.exp(-bound / scale))
    return np.clip((np.exp(-np.exp(-x / scale)) - low) / (high - low), 0.0, 1.0)


def gumbel_pdf(x, scale, bound):
    low, high = math.exp(-math.exp(bound / scale)), math.exp(-math.exp(-bound / scale))
    z = np.exp(-x / scale)
    return np.where(np.abs(x) <= bound, z * np.exp(-z) / scale / (high - low), 0.0)


def poisson_pmf(rate, max_k):
    k = np.arange(max_k + 1)
    pmf = np.exp(k * math.log(rate) - rate - np.array([math.lgamma(x + 1) for x in k]))
    return pmf / pmf.sum()


def exact_distribution(vectors, word, scale, bound, rate, extra_k=0, truncate=True, radius=None):
    """P[M(word) = y] for every y. ``extra_k`` and ``truncate`` build the
    distributions of deliberately wrong variants (negative controls);
    ``radius``: distance truncation, k = the number of words within it."""
    size = len(vectors)
    distances = np.linalg.norm(vectors.astype(np.float64) - vectors[word], axis=1)
    distances[word] = -1.0
    order = np.argsort(distances, kind="stable")
    distances[word] = 0.0
    ordered = distances[order]
    pmf = poisson_pmf(rate, size - 1)
    if radius is not None:
        pmf = np.zeros(size)
        pmf[int((ordered[1:] <= radius).sum())] = 1.0
    grid = np.linspace(-bound, bound, 8001) if truncate else np.linspace(-4 * bound, 12 * bound, 32001)
    if truncate:
        pdf, cdf = (lambda x: gumbel_pdf(x, scale, bound)), (lambda x: gumbel_cdf(x, scale, bound))
    else:
        pdf = lambda x: np.exp(-x / scale) * np.exp(-np.exp(-x / scale)) / scale  # noqa: E731
        cdf = lambda x: np.exp(-np.exp(-x / scale))  # noqa: E731
    out = np.zeros(size)
    winner_pdf = pdf(grid)
    for k, weight in enumerate(pmf):
        if weight < 1e-14:
            continue
        count = min(k + 1 + extra_k, size)
        d = ordered[:count]
        # survival[i, j, :] = P[s_i > d_j + g]
        survival = 1.0 - cdf(d[None, :, None] + grid[None, None, :] - d[:, None, None])
        survival[np.arange(count), np.arange(count), :] = 1.0
        integrand = winner_pdf[None, :] * survival.prod(axis=0)
        wins = np.trapezoid(integrand, grid, axis=1)
        out[order[:count]] += weight * wins / wins.sum()
    return out


@pytest.fixture(scope="module")
def table(small_embeddings):
    return build_neighbour_table(small_embeddings, k=small_embeddings.size - 1)


@pytest.fixture(scope="module")
def grid_embeddings():
    """12 words on a jittered grid: few enough, and far enough apart relative
    to the Gumbel scale at a large epsilon, that the noise's shape shows in
    the output distribution (with 200 clustered words the choice among the
    k + 1 candidates is nearly uniform, whatever the noise)."""
    rng = np.random.default_rng(3)
    points = np.array([(i, j) for i in range(4) for j in range(3)], float) * 3.0
    points += rng.normal(size=points.shape) * 0.4
    return Embeddings.from_arrays([f"g{i}" for i in range(12)], points.astype(np.float32))


def dense_median_and_sparse_words(table):
    nearest = table.distances[:, 0]
    order = np.argsort(nearest)
    return [int(order[0]), int(order[len(order) // 2]), int(order[-1])]


def draws_and_reference(embeddings, table, epsilon_factor, word, draws=DRAWS, keyed=False, **variant):
    """``keyed``: draw with sequential token keys instead of a numpy Generator."""
    epsilon = epsilon_factor * minimum_epsilon(embeddings.size, table.min_distance)
    mechanism = build_mechanism("tgumbel", embeddings, epsilon=epsilon, neighbours=table)
    rng = KeyedRandom(np.arange(draws, dtype=np.uint64)) if keyed else np.random.default_rng(20261123)
    samples = mechanism.perturb(np.full(draws, word), rng)
    reference = exact_distribution(
        embeddings.vectors,
        word,
        mechanism.scale * variant.pop("scale_factor", 1.0),
        table.diameter,
        mechanism.poisson_rate + variant.pop("rate_shift", 0.0),
        **variant,
    )
    return samples, reference


@pytest.mark.parametrize("neighbours, keyed", [("full", False), ("short", False), ("full", True)])
def test_clustered_vocabulary_matches_quadrature(small_embeddings, table, neighbours, keyed):
    """Full table: every k is served from the table. Short table (K = 6): the
    k > K draws go through the exact-search fallback. Keyed: per-token keys."""
    if neighbours == "short":
        table = NeighbourTable(
            table.ids[:, :6], table.distances[:, :6], table.diameter, table.fingerprint
        )
    mechanism = build_mechanism("tgumbel", small_embeddings, neighbours=table,
                                epsilon=4 * minimum_epsilon(small_embeddings.size, table.min_distance))
    for word in dense_median_and_sparse_words(table):
        samples, exact = draws_and_reference(small_embeddings, table, 4, word, keyed=keyed)
        assert chi_square_gof(samples, exact) > P_VALUE_THRESHOLD, f"word {word}"
        library = np.exp(exact_log_distribution(mechanism, word))
        assert chi_square_gof(samples, library) > P_VALUE_THRESHOLD, f"word {word}"
        np.testing.assert_allclose(library, exact, atol=1e-6)


def test_grid_vocabulary_matches_quadrature(grid_embeddings):
    table = build_neighbour_table(grid_embeddings, k=11)
    for word in (0, 5, 11):
        samples, exact = draws_and_reference(grid_embeddings, table, 100, word, GRID_DRAWS)
        assert chi_square_gof(samples, exact) > P_VALUE_THRESHOLD, f"word {word}"


@pytest.mark.parametrize(
    "variant",
    [
        {"extra_k": -1},  # the reference code's off-by-one: k candidates, not k + 1
        {"truncate": False},  # plain Gumbel noise, no truncation at Delta_max
        {"scale_factor": 1.15},  # a 15% error in the scale b
        {"rate_shift": 1.0},  # lambda one too large
    ],
)
def test_quadrature_check_rejects_wrong_variants(grid_embeddings, variant):
    """Negative control: the same samples and test reject each wrong variant."""
    table = build_neighbour_table(grid_embeddings, k=11)
    samples, wrong = draws_and_reference(grid_embeddings, table, 100, 5, GRID_DRAWS, **variant)
    assert chi_square_gof(samples, wrong) < P_VALUE_THRESHOLD


def test_scale_matches_reference_calibration_table():
    """b for |V| = 1e5, Delta_min = 3, Delta_max = 12, from the reference notes,
    and epsilon(b) inverts it."""
    for epsilon, expected in [(10, 47.5), (20, 9.77), (40, 6.95), (100, 5.31)]:
        b = gumbel_scale(epsilon, 100_000, 3.0, 12.0)
        assert b == pytest.approx(expected, rel=5e-3)
        assert epsilon_of_scale(b, 100_000, 3.0, 12.0) == pytest.approx(epsilon, rel=1e-9)


def test_epsilon_below_valid_range_is_refused(small_embeddings, table):
    floor = minimum_epsilon(small_embeddings.size, table.min_distance)
    with pytest.raises(ValueError, match=r"epsilon_min = .*Delta_min"):
        build_mechanism("tgumbel", small_embeddings, epsilon=floor * 0.99, neighbours=table)
    with pytest.raises(ValueError, match="epsilon_min"):
        build_mechanism("tgumbel", small_embeddings, epsilon=floor, neighbours=table)
    assert minimum_epsilon(100_000, 0.3513616919517517) == pytest.approx(79.76, abs=0.01)


def test_distance_truncation_counts_words_beyond_a_full_table_row(grid_embeddings):
    """Where every word of the (short) table row lies within the radius, the
    candidates within it are counted by a scan of the whole vocabulary."""
    table = build_neighbour_table(grid_embeddings, k=3)
    radius = 0.37 * table.diameter
    mechanism = build_mechanism("tgumbel", grid_embeddings, neighbours=table, max_distance=radius,
                                epsilon=2 * minimum_epsilon(grid_embeddings.size, table.min_distance))
    vectors = grid_embeddings.vectors.astype(np.float64)
    distances = np.linalg.norm(vectors[:, None, :] - vectors[None, :, :], axis=2)
    expected = (distances <= radius).sum(axis=1) - 1  # not counting the word itself
    assert (expected > table.k).any() and (expected < table.k).any()
    ids = np.arange(grid_embeddings.size)
    counts = mechanism._candidate_counts(ids, KeyedRandom(ids.astype(np.uint64)))
    np.testing.assert_array_equal(counts, expected)


@pytest.mark.parametrize("radius", [0.6, 1.5])
def test_distance_truncation_matches_quadrature(grid_embeddings, radius):
    """Candidates: w and every word within the radius (no Poisson draw)."""
    table = build_neighbour_table(grid_embeddings, k=11)
    epsilon = 100 * minimum_epsilon(grid_embeddings.size, table.min_distance)
    mechanism = build_mechanism("tgumbel", grid_embeddings, epsilon=epsilon, neighbours=table,
                                max_distance=radius * table.diameter / 4)
    for word in (0, 5, 11):
        samples = mechanism.perturb(np.full(GRID_DRAWS, word), np.random.default_rng(1))
        exact = exact_distribution(grid_embeddings.vectors, word, mechanism.scale, table.diameter,
                                   mechanism.poisson_rate, radius=radius * table.diameter / 4)
        assert chi_square_gof(samples, exact) > P_VALUE_THRESHOLD, word
        poisson = exact_distribution(grid_embeddings.vectors, word, mechanism.scale, table.diameter,
                                     mechanism.poisson_rate)
        assert chi_square_gof(samples, poisson) < P_VALUE_THRESHOLD  # negative control: kNN law


@pytest.mark.parametrize("radius", [None, 0.6, 1.5])
def test_library_law_matches_reference_on_the_grid(grid_embeddings, radius):
    """The library's quadrature against the independent reference, for kNN
    truncation (a short table, so that large k take the full-scan path) and
    for distance truncation; and it is the law the sampler draws from."""
    table = build_neighbour_table(grid_embeddings, k=3)
    epsilon = 100 * minimum_epsilon(grid_embeddings.size, table.min_distance)
    max_distance = None if radius is None else radius * table.diameter / 4
    mechanism = build_mechanism("tgumbel", grid_embeddings, epsilon=epsilon, neighbours=table,
                                max_distance=max_distance)
    for word in (0, 5, 11):
        library = np.exp(exact_log_distribution(mechanism, word))
        reference = exact_distribution(grid_embeddings.vectors, word, mechanism.scale, table.diameter,
                                       mechanism.poisson_rate, radius=max_distance)
        np.testing.assert_allclose(library, reference, atol=1e-6)
        assert library.sum() == pytest.approx(1.0, abs=1e-12)
    samples = mechanism.perturb(np.full(GRID_DRAWS, 5), np.random.default_rng(2))
    assert chi_square_gof(samples, np.exp(exact_log_distribution(mechanism, 5))) > P_VALUE_THRESHOLD


def test_library_law_has_no_mass_beyond_the_poisson_table(small_embeddings, table):
    """Ranks past the end of the sampler's Poisson table are impossible (-inf,
    not an underflowed 0 or a guess), every earlier rank is possible, and
    the probabilities below double precision's range survive as logarithms."""
    mechanism = build_mechanism("tgumbel", small_embeddings, neighbours=table, poisson_rate=1.0,
                                epsilon=4 * minimum_epsilon(small_embeddings.size, table.min_distance))
    last_k = int(np.flatnonzero(np.diff(mechanism.k_cdf, prepend=0.0) > 0)[-1])
    word = 57
    log_law = exact_log_distribution(mechanism, word)
    ranked = np.concatenate([[word], table.ids[word]])
    assert np.isfinite(log_law[ranked[: last_k + 1]]).all()
    assert np.isneginf(log_law[ranked[last_k + 1 :]]).all()
    assert log_law[ranked[last_k]] < math.log(1e-15)
    samples = mechanism.perturb(np.full(DRAWS, word), np.random.default_rng(4))
    assert np.isin(samples, ranked[: last_k + 1]).all()
