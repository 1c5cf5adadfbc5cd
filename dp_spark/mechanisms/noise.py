"""Noise primitives and the special functions their calibration needs.

Samplers turn uniforms from a ``TokenRandom`` into noise, whole arrays at a
time, one row per token.
"""

from __future__ import annotations

import math

import numpy as np

from dp_spark.randomness import TokenRandom


def standard_normals(rng: TokenRandom, stream: int, count: int) -> np.ndarray:
    """(tokens, count) independent N(0, 1) draws, by the Box-Muller transform."""
    pairs = (count + 1) // 2
    u = rng.uniform(stream, 2 * pairs)
    radius = np.sqrt(-2.0 * np.log1p(-u[:, :pairs]))
    angle = (2.0 * np.pi) * u[:, pairs:]
    return np.hstack([radius * np.cos(angle), radius * np.sin(angle)])[:, :count]


def uniform_directions(rng: TokenRandom, stream: int, dim: int) -> np.ndarray:
    """One point per token uniform on the unit sphere in R^dim (float32)."""
    directions = standard_normals(rng, stream, dim)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return directions.astype(np.float32)


def laplace_radii(rng: TokenRandom, stream: int, dim: int, epsilon: float) -> np.ndarray:
    """Radii of multivariate Laplace noise in R^dim: Gamma(shape=dim, scale=1/epsilon),
    as a sum of dim exponentials (dim is an integer).

    With a uniform direction this gives noise of density proportional to
    exp(-epsilon ||y||) (the radial density r^(dim-1) e^(-epsilon r) over the
    sphere's surface factor r^(dim-1))."""
    return -np.log1p(-rng.uniform(stream, dim)).sum(axis=1) / epsilon


def truncated_gumbel(u: np.ndarray, scale: float, bound: float) -> np.ndarray:
    """Gumbel(0, scale) conditioned on |g| <= bound, by inverse CDF on the
    truncated range (exact, no rejection loop), from float32 uniforms in
    (0, 1), transformed in place."""
    low = math.exp(-math.exp(bound / scale))
    high = math.exp(-math.exp(-bound / scale))
    u *= np.float32(high - low)
    u += np.float32(low)
    with np.errstate(divide="ignore"):
        g = np.log(u, out=u)
        np.negative(g, out=g)
        np.log(g, out=g)
    g *= np.float32(-scale)
    # In float32, low may round to 0 and high to 1, giving -inf/inf at the
    # ends: clipping maps them to the bounds they stand for. Float32 uniforms
    # resolve the lower tail down to probability ~1e-7, far below what any
    # test or use can detect, at half the cost of float64.
    np.clip(g, np.float32(-bound), np.float32(bound), out=g)
    return g


def truncated_poisson_cdf(lam: float, max_k: int) -> np.ndarray:
    """CDF of Poisson(lam) conditioned on k <= max_k, as a table over k = 0..K.

    The table stops where the remaining tail is below double precision, so a
    uniform draw through ``sample_from_cdf`` samples the conditioned law
    exactly up to float64 rounding."""
    if lam == 0:
        return np.ones(1)
    upper = min(max_k, int(math.ceil(lam + 40 * math.sqrt(lam) + 40)))
    k = np.arange(upper + 1)
    log_pmf = k * math.log(lam) - lam - np.array([math.lgamma(x + 1) for x in k])
    pmf = np.exp(log_pmf - log_pmf.max())
    cdf = np.cumsum(pmf)
    cdf /= cdf[-1]
    cdf[-1] = 1.0
    return cdf


def sample_from_cdf(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF draws of k (int64) from a table ``cdf[k] = P[K <= k]`` and
    uniforms in (0, 1): k = #{j : cdf[j] <= u}."""
    return np.searchsorted(cdf, u, side="right").astype(np.int64)


def lambert_w0(x: float) -> float:
    """Principal branch of the Lambert W function for real x >= 0 (w e^w = x)."""
    if x < 0:
        raise ValueError(f"lambert_w0 is defined here for x >= 0, got {x}")
    if x == 0:
        return 0.0
    w = math.log1p(x) if x < math.e else math.log(x) - math.log(math.log(x))
    for _ in range(64):
        ew = math.exp(w)
        f = w * ew - x
        # Halley's step: cubic convergence from the starting guesses above.
        step = f / (ew * (w + 1) - (w + 2) * f / (2 * w + 2))
        w -= step
        if abs(step) <= 1e-15 * (1 + abs(w)):
            break
    return w


def gamma_upper_regularized(shape: int, x: float) -> float:
    """Q(shape, x) = P[Gamma(shape, 1) > x] for an integer shape, in closed form
    (e^-x sum_{k<shape} x^k / k!), summed in log space for large arguments."""
    if x <= 0:
        return 1.0
    log_terms = [k * math.log(x) - x - math.lgamma(k + 1) for k in range(shape)]
    top = max(log_terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in log_terms))
