"""The multivariate Laplace mechanism against exact and brute-force references.

In one dimension the noise is Laplace(1/epsilon) and the decoder's Voronoi
cells are intervals between midpoints, so P[M(w) = y] has a closed form. In
more dimensions the reference is an independent brute-force sampler: radius as
a sum of n exponentials, direction from float64 Gaussians, decoding by a numpy
scan of every word.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from dp_spark.embeddings import Embeddings
from dp_spark.mechanisms import build_mechanism
from dp_spark.randomness import KeyedRandom
from tests.stats.distributions import (
    P_VALUE_THRESHOLD,
    chi_square_gof,
    chi_square_two_sample,
)

DRAWS = 40_000


@pytest.fixture(scope="module")
def line_embeddings():
    rng = np.random.default_rng(11)
    points = np.sort(np.concatenate([rng.normal(0, 0.3, 10), rng.normal(3, 1.0, 10), rng.uniform(-8, 12, 10)]))
    return Embeddings.from_arrays([f"p{i}" for i in range(30)], points[:, None].astype(np.float32))


def laplace_cdf(t, epsilon):
    return np.where(t < 0, 0.5 * np.exp(epsilon * np.minimum(t, 0)), 1 - 0.5 * np.exp(-epsilon * np.maximum(t, 0)))


def exact_line_distribution(points, word, epsilon, max_distance=None):
    """Closed form: Laplace mass of each Voronoi interval; with a radius cap R,
    the mass beyond +-R sits as atoms at x_w +- R."""
    x = points.astype(np.float64)
    edges = np.concatenate([[-np.inf], (x[1:] + x[:-1]) / 2, [np.inf]]) - x[word]
    cdf = laplace_cdf(edges, epsilon)
    if max_distance is not None:
        # The capped offset has atoms at -R (mass F(-R)) and +R: its CDF is 0
        # below -R, F between, and 1 from +R on.
        cdf = np.where(edges < -max_distance, 0.0, np.where(edges >= max_distance, 1.0, cdf))
    return np.diff(cdf)


def brute_force_mlap(vectors, word, epsilon, draws, rng, radius_shape=None):
    """Radius Gamma(n, 1/epsilon) as a sum of n exponentials (``radius_shape``
    replaces n for the negative control)."""
    vectors = vectors.astype(np.float64)
    dim = vectors.shape[1]
    radius = rng.exponential(1.0 / epsilon, size=(draws, radius_shape or dim)).sum(axis=1)
    direction = rng.standard_normal((draws, dim))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    noisy = vectors[word] + radius[:, None] * direction
    out = np.empty(draws, dtype=np.int64)
    for start in range(0, draws, 20_000):
        block = noisy[start : start + 20_000]
        out[start : start + 20_000] = ((block[:, None, :] - vectors[None]) ** 2).sum(2).argmin(1)
    return out


@pytest.mark.parametrize("epsilon", [0.5, 2.0, 8.0])
def test_one_dimension_matches_closed_form(line_embeddings, epsilon):
    mechanism = build_mechanism("mlap", line_embeddings, epsilon=epsilon)
    rng = np.random.default_rng(1)
    points = line_embeddings.vectors[:, 0]
    for word in (0, 5, 15, 29):
        samples = mechanism.perturb(np.full(DRAWS, word), rng)
        exact = exact_line_distribution(points, word, epsilon)
        assert chi_square_gof(samples, exact) > P_VALUE_THRESHOLD, f"word {word}"


def test_one_dimension_rejects_wrong_epsilon(line_embeddings):
    """Negative control: noise for epsilon, checked against epsilon x 1.1."""
    mechanism = build_mechanism("mlap", line_embeddings, epsilon=2.0)
    samples = mechanism.perturb(np.full(DRAWS, 15), np.random.default_rng(1))
    wrong = exact_line_distribution(line_embeddings.vectors[:, 0], 15, 2.2)
    assert chi_square_gof(samples, wrong) < P_VALUE_THRESHOLD


def test_max_distance_matches_closed_form(line_embeddings):
    mechanism = build_mechanism("mlap", line_embeddings, epsilon=0.5, max_distance=1.5)
    points = line_embeddings.vectors[:, 0]
    for word in (5, 15, 29):
        samples = mechanism.perturb(np.full(DRAWS, word), np.random.default_rng(2))
        exact = exact_line_distribution(points, word, 0.5, max_distance=1.5)
        assert chi_square_gof(samples, exact) > P_VALUE_THRESHOLD
        assert chi_square_gof(samples, exact_line_distribution(points, word, 0.5)) < P_VALUE_THRESHOLD
    # delta_R = Q(1, epsilon R) = exp(-epsilon R) in one dimension
    assert mechanism.delta == pytest.approx(math.exp(-0.75), rel=1e-12)


@pytest.mark.parametrize("index_type, source", [("flat", "generator"), ("hnsw", "generator"), ("flat", "keyed")])
def test_three_dimensions_match_brute_force(small_embeddings, index_type, source):
    """hnsw on 200 words with efSearch 64 is exact in practice, so it must
    match the exact reference too. Keyed: sequential token keys."""
    epsilon = 2.0
    mechanism = build_mechanism("mlap", small_embeddings, epsilon=epsilon, index_type=index_type)
    for word in (0, 57, 123):
        rng = (
            KeyedRandom(np.arange(DRAWS, dtype=np.uint64) + np.uint64(word << 32))
            if source == "keyed"
            else np.random.default_rng(3)
        )
        samples = mechanism.perturb(np.full(DRAWS, word), rng)
        reference = brute_force_mlap(small_embeddings.vectors, word, epsilon, 10 * DRAWS, np.random.default_rng(4))
        assert chi_square_two_sample(samples, reference, small_embeddings.size) > P_VALUE_THRESHOLD


def test_brute_force_check_rejects_wrong_radius(small_embeddings):
    """Negative control: Gamma(n - 1) radii (one shape too few) are rejected."""
    mechanism = build_mechanism("mlap", small_embeddings, epsilon=2.0)
    samples = mechanism.perturb(np.full(DRAWS, 57), np.random.default_rng(3))
    wrong = brute_force_mlap(
        small_embeddings.vectors, 57, 2.0, 10 * DRAWS, np.random.default_rng(4), radius_shape=2
    )
    assert chi_square_two_sample(samples, wrong, small_embeddings.size) < P_VALUE_THRESHOLD


def test_metric_dp_inequality_holds_empirically(line_embeddings):
    """P[M(x)=y] <= exp(epsilon d(x, x')) P[M(x')=y], checked on estimated
    probabilities with a 5-standard-error allowance, and exactly on the closed form."""
    epsilon = 1.0
    mechanism = build_mechanism("mlap", line_embeddings, epsilon=epsilon)
    points = line_embeddings.vectors[:, 0].astype(np.float64)
    rng = np.random.default_rng(5)
    words = [3, 12, 20]
    estimates = {w: np.bincount(mechanism.perturb(np.full(DRAWS, w), rng), minlength=30) / DRAWS for w in words}
    for x in words:
        exact_x = exact_line_distribution(points, x, epsilon)
        for x2 in words:
            bound = math.exp(epsilon * abs(points[x] - points[x2]))
            assert np.all(exact_x <= bound * exact_line_distribution(points, x2, epsilon) * (1 + 1e-9))
            p, q = estimates[x], estimates[x2]
            both = (p * DRAWS >= 200) & (q * DRAWS >= 200)
            standard_error = np.sqrt(1 / (p[both] * DRAWS) + 1 / (q[both] * DRAWS))
            assert np.all(np.log(p[both] / q[both]) <= math.log(bound) + 5 * standard_error)


def brute_force_elliptical(vectors, word, epsilon, draws, rng, regularization, renormalise=False):
    """z = phi(w) + r L u with L the Cholesky factor of the regularised,
    trace-normalised covariance: L u and S u (S its symmetric root) have the
    same law for u uniform on the sphere, so this is an independent route."""
    vectors = vectors.astype(np.float64)
    n = vectors.shape[1]
    covariance = np.cov(vectors, rowvar=False)
    shaped = regularization * covariance / (np.trace(covariance) / n) + (1 - regularization) * np.eye(n)
    factor = np.linalg.cholesky(shaped)
    radius = rng.exponential(1.0 / epsilon, size=(draws, n)).sum(axis=1)
    u = rng.standard_normal((draws, n))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    noise = u @ factor.T
    if renormalise:  # pypantera's variant
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    noisy = vectors[word] + radius[:, None] * noise
    return np.concatenate([((b[:, None] - vectors[None]) ** 2).sum(2).argmin(1) for b in np.array_split(noisy, 20)])


def test_mahalanobis_matches_brute_force(small_embeddings):
    mechanism = build_mechanism("mahalanobis", small_embeddings, epsilon=2.0, regularization=0.6)
    for word in (0, 57, 123):
        samples = mechanism.perturb(np.full(DRAWS, word), np.random.default_rng(3))
        reference = brute_force_elliptical(small_embeddings.vectors, word, 2.0, 10 * DRAWS,
                                           np.random.default_rng(4), 0.6)
        assert chi_square_two_sample(samples, reference, small_embeddings.size) > P_VALUE_THRESHOLD


def test_mahalanobis_check_rejects_renormalised_noise(small_embeddings):
    """Negative control: pypantera's renormalised S u is another law."""
    mechanism = build_mechanism("mahalanobis", small_embeddings, epsilon=2.0, regularization=0.6)
    samples = mechanism.perturb(np.full(DRAWS, 57), np.random.default_rng(3))
    wrong = brute_force_elliptical(small_embeddings.vectors, 57, 2.0, 10 * DRAWS, np.random.default_rng(4), 0.6,
                                   renormalise=True)
    assert chi_square_two_sample(samples, wrong, small_embeddings.size) < P_VALUE_THRESHOLD


def brute_force_vickrey(vectors, word, epsilon, threshold, draws, rng, exclude_input=False):
    vectors = vectors.astype(np.float64)
    n = vectors.shape[1]
    radius = rng.exponential(1.0 / epsilon, size=(draws, n)).sum(axis=1)
    u = rng.standard_normal((draws, n))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    noisy = vectors[word] + radius[:, None] * u
    out = np.empty(draws, dtype=np.int64)
    for block in np.array_split(np.arange(draws), 20):
        d = np.sqrt(((noisy[block][:, None] - vectors[None]) ** 2).sum(2))
        if exclude_input:  # mldp-text's variant: not post-processing
            d[:, word] = np.inf
        order = np.argsort(d, axis=1)[:, :2]
        d1, d2 = np.take_along_axis(d, order, axis=1).T
        p = (1 - threshold) * d2 / (threshold * d1 + (1 - threshold) * d2)
        out[block] = np.where(rng.random(len(block)) < p, order[:, 0], order[:, 1])
    return out


@pytest.mark.parametrize("threshold", [0.5, 0.75, 1.0])
def test_vickrey_matches_brute_force(small_embeddings, threshold):
    mechanism = build_mechanism("vickrey", small_embeddings, epsilon=2.0, threshold=threshold)
    for word in (0, 123):
        samples = mechanism.perturb(np.full(DRAWS, word), np.random.default_rng(5))
        reference = brute_force_vickrey(small_embeddings.vectors, word, 2.0, threshold, 10 * DRAWS,
                                        np.random.default_rng(6))
        assert chi_square_two_sample(samples, reference, small_embeddings.size) > P_VALUE_THRESHOLD


def test_vickrey_check_rejects_excluding_the_input_word(small_embeddings):
    mechanism = build_mechanism("vickrey", small_embeddings, epsilon=4.0, threshold=0.75)
    samples = mechanism.perturb(np.full(DRAWS, 57), np.random.default_rng(5))
    wrong = brute_force_vickrey(small_embeddings.vectors, 57, 4.0, 0.75, 10 * DRAWS, np.random.default_rng(6),
                                exclude_input=True)
    assert chi_square_two_sample(samples, wrong, small_embeddings.size) < P_VALUE_THRESHOLD
