"""Goodness-of-fit tools for the statistical tests: exact references and tests.

A sampler is judged by drawing many tokens with a fixed seed and comparing the
empirical output distribution with an exact one (closed form or quadrature) or
with an independent brute-force sampler. The seed is fixed, so each test is
deterministic; the threshold says how surprising a deviation must be before
the test fails, and each suite also runs a deliberately wrong sampler through
the same check to show that it does fail.
"""

from __future__ import annotations

import math

import numpy as np

# A correct sampler fails a test at this level once in 10,000 seeds; the
# negative controls in the suites show a wrong one fails by many orders more.
P_VALUE_THRESHOLD = 1e-4
MIN_EXPECTED = 5.0


def gamma_q(a: float, x: float) -> float:
    """Regularized upper incomplete gamma Q(a, x) for real a > 0, x >= 0
    (series below a + 1, Lentz continued fraction above)."""
    if x <= 0:
        return 1.0
    log_prefix = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1:
        term = total = 1.0 / a
        n = a
        for _ in range(10_000):
            n += 1
            term *= x / n
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(log_prefix))
    tiny = 1e-300
    b = x + 1 - a
    c = 1 / tiny
    d = 1 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-15:
            break
    return math.exp(log_prefix) * h


def chi_square_sf(statistic: float, df: int) -> float:
    return gamma_q(df / 2, statistic / 2)


def _pool_small(expected: np.ndarray, *observed: np.ndarray) -> tuple[np.ndarray, ...]:
    """Merge the cells whose expected count is below MIN_EXPECTED into one."""
    small = expected < MIN_EXPECTED
    pooled = [np.append(a[~small], a[small].sum()) if small.any() else a for a in (expected, *observed)]
    return tuple(pooled)


def chi_square_gof(samples: np.ndarray, probabilities: np.ndarray) -> float:
    """p-value of the chi-square goodness-of-fit of ``samples`` (category ids)
    against exact ``probabilities`` over categories 0..len-1."""
    counts = np.bincount(samples, minlength=len(probabilities)).astype(float)
    if len(counts) > len(probabilities):
        return 0.0  # a sample outside the support
    expected = probabilities * len(samples)
    impossible = expected == 0
    if counts[impossible].any():
        return 0.0
    expected, counts = _pool_small(expected[~impossible], counts[~impossible])
    statistic = float(((counts - expected) ** 2 / expected).sum())
    return chi_square_sf(statistic, len(expected) - 1)


def chi_square_two_sample(a: np.ndarray, b: np.ndarray, categories: int) -> float:
    """p-value that two samples of category ids come from one distribution."""
    count_a = np.bincount(a, minlength=categories).astype(float)
    count_b = np.bincount(b, minlength=categories).astype(float)
    n_a, n_b = count_a.sum(), count_b.sum()
    pooled_expected = (count_a + count_b) * min(n_a, n_b) / (n_a + n_b)
    occupied = (count_a + count_b) > 0
    pooled_expected, count_a, count_b = _pool_small(
        pooled_expected[occupied], count_a[occupied], count_b[occupied]
    )
    k1, k2 = math.sqrt(n_b / n_a), math.sqrt(n_a / n_b)
    statistic = float(((k1 * count_a - k2 * count_b) ** 2 / (count_a + count_b)).sum())
    return chi_square_sf(statistic, len(count_a) - 1)

