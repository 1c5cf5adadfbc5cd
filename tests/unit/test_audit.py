"""The auditor's statistics against known values: the regularized incomplete
beta function, its quantile, Clopper-Pearson bounds, the normal quantile, and
the epsilon a pair of bounds implies."""

from __future__ import annotations

import math

import pytest

from dp_spark.audit import (
    AuditSettings,
    beta_quantile,
    clopper_pearson_lower,
    clopper_pearson_upper,
    epsilon_from_bounds,
    normal_upper_quantile,
    parse_params,
    regularized_incomplete_beta,
)


def binomial_sum(n, p, counts):
    """P[Bin(n, p) in counts] by summing the pmf in log space (independent of the beta code)."""
    terms = [
        math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) + j * math.log(p) + (n - j) * math.log1p(-p)
        for j in counts
    ]
    top = max(terms)
    return math.exp(top) * sum(math.exp(t - top) for t in terms)


def binomial_tail_at_least(k, n, p):
    return binomial_sum(n, p, range(k, n + 1))


@pytest.mark.parametrize("a", [0.5, 1.0, 3.7, 250.0, 5000.0])
def test_incomplete_beta_is_one_half_at_the_centre_of_a_symmetric_law(a):
    assert regularized_incomplete_beta(a, a, 0.5) == pytest.approx(0.5, abs=1e-11)


@pytest.mark.parametrize("x", [1e-9, 0.01, 0.2, 0.5, 0.93, 1 - 1e-9])
def test_incomplete_beta_closed_forms(x):
    """I_x(1, b) = 1 - (1 - x)^b and I_x(a, 1) = x^a."""
    assert regularized_incomplete_beta(1.0, 3.0, x) == pytest.approx(1 - (1 - x) ** 3, rel=1e-12, abs=1e-15)
    assert regularized_incomplete_beta(4.5, 1.0, x) == pytest.approx(x**4.5, rel=1e-12, abs=1e-300)


@pytest.mark.parametrize("n, k, p", [(4, 2, 0.4), (30, 1, 0.1), (30, 15, 0.5), (30, 29, 0.83), (2000, 700, 0.33),
                                     (2000, 30, 0.01)])
def test_incomplete_beta_is_the_binomial_tail(n, k, p):
    """P[Bin(n, p) >= k] = I_p(k, n - k + 1); the first case is 0.5248 by hand."""
    assert regularized_incomplete_beta(k, n - k + 1, p) == pytest.approx(binomial_tail_at_least(k, n, p), rel=1e-10)


def test_incomplete_beta_ends_and_arguments():
    assert regularized_incomplete_beta(2.0, 3.0, 0.0) == 0.0
    assert regularized_incomplete_beta(2.0, 3.0, 1.0) == 1.0
    with pytest.raises(ValueError, match="a, b > 0"):
        regularized_incomplete_beta(0.0, 1.0, 0.5)


@pytest.mark.parametrize("q, a, b", [(0.025, 5, 6), (1e-6, 3, 40_000), (0.5, 0.7, 2.2), (0.999, 1000, 10)])
def test_beta_quantile_inverts_the_incomplete_beta(q, a, b):
    x = beta_quantile(q, a, b)
    assert regularized_incomplete_beta(a, b, x) == pytest.approx(q, rel=1e-9)


def test_beta_quantile_closed_form():
    """Beta(1, b): x = 1 - (1 - q)^(1/b)."""
    for q in (1e-8, 0.05, 0.5, 0.9):
        assert beta_quantile(q, 1.0, 7.0) == pytest.approx(1 - (1 - q) ** (1 / 7), rel=1e-12)


@pytest.mark.parametrize(
    "successes, trials, lower, upper",
    [(5, 10, 0.1870860, 0.8129140), (1, 10, 0.002528579, 0.445016117), (0, 10, 0.0, 0.3084971),
     (10, 10, 0.6915029, 1.0)],
)
def test_clopper_pearson_matches_published_intervals(successes, trials, lower, upper):
    """95% two-sided Clopper-Pearson intervals (R's binom.test): each side
    is a one-sided bound at 2.5%."""
    assert clopper_pearson_lower(successes, trials, 0.025) == pytest.approx(lower, rel=1e-6, abs=1e-12)
    assert clopper_pearson_upper(successes, trials, 0.025) == pytest.approx(upper, rel=1e-6)


@pytest.mark.parametrize("successes, trials, alpha", [(3, 20_000, 1e-4), (9_000, 10_000, 1e-3), (1, 2, 0.05),
                                                      (480, 1000, 0.4)])
def test_clopper_pearson_bounds_solve_their_defining_equations(successes, trials, alpha):
    """At the lower bound, P[Bin(n, p) >= k] = alpha; at the upper bound, P[Bin(n, p) <= k] = alpha."""
    low = clopper_pearson_lower(successes, trials, alpha)
    high = clopper_pearson_upper(successes, trials, alpha)
    assert low < successes / trials < high
    assert binomial_tail_at_least(successes, trials, low) == pytest.approx(alpha, rel=1e-8)
    assert binomial_sum(trials, high, range(successes + 1)) == pytest.approx(alpha, rel=1e-8)


def test_clopper_pearson_rejects_impossible_counts():
    with pytest.raises(ValueError, match="successes <= trials"):
        clopper_pearson_lower(11, 10, 0.05)
    with pytest.raises(ValueError, match="alpha"):
        clopper_pearson_upper(1, 10, 0.0)


@pytest.mark.parametrize("alpha, z", [(0.025, 1.959963985), (0.05, 1.644853627), (1e-6, 4.753424309),
                                      (0.5, 0.0)])
def test_normal_upper_quantile(alpha, z):
    assert normal_upper_quantile(alpha) == pytest.approx(z, abs=1e-9)


def test_epsilon_from_bounds():
    assert epsilon_from_bounds(0.5, 0.1, 2.0) == pytest.approx(math.log(5) / 2)
    # With delta: p_low <= e^(eps d) q_high + (1 + e^(eps d)) delta, solved for eps.
    eps = epsilon_from_bounds(0.5, 0.1, 2.0, 0.01)
    assert eps == pytest.approx(math.log(0.49 / 0.11) / 2)
    assert 0.5 == pytest.approx(math.exp(2 * eps) * 0.1 + (1 + math.exp(2 * eps)) * 0.01)
    assert epsilon_from_bounds(0.005, 0.1, 2.0, 0.01) == 0.0  # p_low within delta: nothing shown
    assert epsilon_from_bounds(0.1, 0.5, 2.0) == 0.0
    assert epsilon_from_bounds(0.5, 0.1, 0.0) == math.inf
    assert list(epsilon_from_bounds([0.5, 0.2], [0.1, 0.2], 1.0)) == pytest.approx([math.log(5), 0.0])


def test_settings_and_params_are_checked():
    assert AuditSettings().word_count("exact") > AuditSettings().word_count("sampled")
    assert AuditSettings(words=7).word_count("sampled") == 7
    for bad in ({"draws": 1}, {"confidence": 1.0}, {"words": 0}, {"neighbours_per_word": 1.5}):
        with pytest.raises(ValueError):
            AuditSettings(**bad)
    assert parse_params(["sampler=mh", "steps=20", "max_distance=7.5", "sensitive_fraction=none"]) == {
        "sampler": "mh", "steps": 20, "max_distance": 7.5, "sensitive_fraction": None}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_params(["steps"])
