"""Noise primitives: each sampler against its exact law, special functions
against identities."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dp_spark.mechanisms.noise import (
    gamma_upper_regularized,
    lambert_w0,
    laplace_radii,
    sample_from_cdf,
    truncated_gumbel,
    truncated_poisson_cdf,
    uniform_directions,
)
from dp_spark.randomness import GeneratorRandom, KeyedRandom
from tests.stats.distributions import P_VALUE_THRESHOLD, chi_square_gof

DRAWS = 200_000


def float32_uniforms(seed, count=DRAWS):
    return GeneratorRandom(np.random.default_rng(seed), count).uniform(0, 1, np.float32)[:, 0]


def binned(samples, edges):
    return np.clip(np.searchsorted(edges, samples, side="right") - 1, 0, len(edges) - 2)


def truncated_gumbel_bin_probabilities(edges, scale, bound):
    cdf = np.exp(-np.exp(-edges / scale))
    low, high = math.exp(-math.exp(bound / scale)), math.exp(-math.exp(-bound / scale))
    return np.diff((np.clip(cdf, low, high) - low) / (high - low))


@pytest.mark.parametrize("scale, bound", [(1.0, 2.0), (5.0, 3.0), (0.5, 10.0)])
def test_truncated_gumbel_matches_its_cdf(scale, bound):
    samples = truncated_gumbel(float32_uniforms(0), scale, bound)
    assert np.abs(samples).max() <= bound
    edges = np.linspace(-bound, bound, 41)
    probabilities = truncated_gumbel_bin_probabilities(edges, scale, bound)
    assert chi_square_gof(binned(samples, edges), probabilities) > P_VALUE_THRESHOLD


def test_truncated_gumbel_check_rejects_untruncated_law():
    """Negative control: the same check against the untruncated Gumbel (its
    mass beyond the bound lumped into the end bins) fails."""
    scale, bound = 1.0, 2.0
    samples = truncated_gumbel(float32_uniforms(0), scale, bound)
    edges = np.linspace(-bound, bound, 41)
    untruncated = np.diff(np.exp(-np.exp(-edges / scale)))
    untruncated[0] += math.exp(-math.exp(bound / scale))
    untruncated[-1] += 1 - math.exp(-math.exp(-bound / scale))
    assert chi_square_gof(binned(samples, edges), untruncated) < P_VALUE_THRESHOLD


def test_truncated_poisson_sampler():
    rate, max_k = 3.0, 6
    cdf = truncated_poisson_cdf(rate, max_k)
    k = sample_from_cdf(cdf, GeneratorRandom(np.random.default_rng(1), DRAWS).uniform(0, 1)[:, 0])
    pmf = np.array([rate**i / math.factorial(i) for i in range(max_k + 1)])
    assert k.max() <= max_k
    assert chi_square_gof(k, pmf / pmf.sum()) > P_VALUE_THRESHOLD
    untruncated = pmf * math.exp(-rate)
    untruncated[-1] = 1 - untruncated[:-1].sum()  # clamping instead of conditioning
    assert chi_square_gof(k, untruncated) < P_VALUE_THRESHOLD
    assert truncated_poisson_cdf(0.0, 10).tolist() == [1.0]


@pytest.mark.parametrize("keyed", [False, True])
def test_uniform_directions_are_unit_and_isotropic(keyed):
    keys = np.arange(DRAWS, dtype=np.uint64)
    rng = KeyedRandom(keys) if keyed else GeneratorRandom(np.random.default_rng(2), DRAWS)
    d = uniform_directions(rng, 0, 3)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, rtol=1e-5)
    # On the 2-sphere each coordinate is uniform on [-1, 1] (Archimedes).
    for axis in range(3):
        edges = np.linspace(-1, 1, 21)
        assert chi_square_gof(binned(d[:, axis], edges), np.full(20, 1 / 20)) > P_VALUE_THRESHOLD


def test_laplace_radii_follow_gamma_n():
    """Gamma(3, 1/2): CDF 1 - e^-x (1 + x + x^2/2) at x = 2r, on 30 bins."""
    radii = laplace_radii(GeneratorRandom(np.random.default_rng(4), DRAWS), 0, 3, 2.0)
    edges = np.concatenate([np.linspace(0, 6, 30), [np.inf]])
    x = 2 * edges[:-1]
    cdf = np.append(1 - np.exp(-x) * (1 + x + x**2 / 2), 1.0)
    assert chi_square_gof(binned(radii, edges), np.diff(cdf)) > P_VALUE_THRESHOLD
    shape_two = np.append(1 - np.exp(-x) * (1 + x), 1.0)
    assert chi_square_gof(binned(radii, edges), np.diff(shape_two)) < P_VALUE_THRESHOLD


@pytest.mark.parametrize("x", [1e-8, 0.1, 1.0, math.e, 10.0, 1e3, 1e8])
def test_lambert_w0_inverts_w_exp_w(x):
    w = lambert_w0(x)
    assert w * math.exp(w) == pytest.approx(x, rel=1e-12)
    assert lambert_w0(0.0) == 0.0
    with pytest.raises(ValueError):
        lambert_w0(-1.0)


def test_gamma_upper_regularized_closed_forms():
    assert gamma_upper_regularized(1, 2.0) == pytest.approx(math.exp(-2.0), rel=1e-12)
    assert gamma_upper_regularized(2, 3.0) == pytest.approx(math.exp(-3.0) * 4.0, rel=1e-12)
    assert gamma_upper_regularized(50, 0.0) == 1.0
    # Reference-notes values for n = 50: R = n/eps gives ~0.48, R = 1.5 n/eps ~9e-4.
    assert gamma_upper_regularized(50, 50.0) == pytest.approx(0.481, abs=0.001)
    assert gamma_upper_regularized(50, 75.0) == pytest.approx(9e-4, rel=0.15)
