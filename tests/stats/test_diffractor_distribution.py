"""1-Diffractor against output laws computed here by brute force, sharing no
code with the sampler or its closed form: the lists are rebuilt from the full
distance matrix, the geometric noise is the convolution of two one-sided
geometric pmfs clamped position by position, and TEM is the peer's
Gumbel-max over a window and a bottom element (each candidate with weight
e^(epsilon score / 2), the bottom's mass spread over the positions outside).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from dp_spark.index import NeighbourTable, build_neighbour_table
from dp_spark.mechanisms import build_mechanism
from dp_spark.randomness import KeyedRandom
from tests.stats.distributions import P_VALUE_THRESHOLD, chi_square_gof

DRAWS = 40_000
MAX_GEOMETRIC = 600  # a^600 < 1e-78 at epsilon >= 0.3: the truncated pmf is exact in float64


@pytest.fixture(scope="module")
def distances(small_embeddings):
    v = small_embeddings.vectors.astype(np.float64)
    return np.sqrt(((v[:, None, :] - v[None, :, :]) ** 2).sum(axis=2))


@pytest.fixture(scope="module")
def short_table(small_embeddings):
    """K = 4: many chain steps find all neighbours visited and take the exact fallback."""
    full = build_neighbour_table(small_embeddings, k=16)
    return NeighbourTable(full.ids[:, :4], full.distances[:, :4], full.diameter, full.fingerprint)


def brute_force_chain(distances, start):
    order, visited = [start], {start}
    while len(order) < len(distances):
        row = distances[order[-1]].copy()
        row[list(visited)] = np.inf
        order.append(int(np.argmin(row)))
        visited.add(order[-1])
    return np.array(order)


def geometric_position_law(epsilon, size, position, halve=False, truncate=False):
    """clip(j + G1 - G2, 0, n - 1) with P[G = g] = (1 - a) a^g, a = e^-epsilon.
    ``halve``: a = e^(-epsilon / 2), the wrong p = 1 - e^(-epsilon / 2);
    ``truncate``: offsets beyond the list dropped and the rest renormalised
    instead of clamped (negative controls)."""
    a = math.exp(-epsilon / 2 if halve else -epsilon)
    one_sided = (1 - a) * a ** np.arange(MAX_GEOMETRIC)
    offsets = np.convolve(one_sided, one_sided[::-1])  # P[G1 - G2 = k], k = -(MAX - 1) .. MAX - 1
    targets = position + np.arange(-(MAX_GEOMETRIC - 1), MAX_GEOMETRIC)
    law = np.zeros(size)
    for target, p in zip(targets, offsets):
        if truncate and not 0 <= target < size:
            continue
        law[min(max(target, 0), size - 1)] += p
    return law / law.sum()


def tem_position_law(epsilon, gamma, size, position, bottom=True):
    """The peer's TEM on positions as a Gumbel-max: window [j - gamma, j + gamma]
    scored -|j' - j|, bottom scored -gamma + (2 / epsilon) ln(positions outside).
    ``bottom=False``: the window only (negative control)."""
    window = np.arange(max(0, position - gamma), min(size, position + gamma + 1))
    outside = size - len(window)
    law = np.zeros(size)
    law[window] = np.exp(epsilon / 2 * -np.abs(window - position))
    if bottom and outside:
        bottom_weight = math.exp(epsilon / 2 * (-gamma + 2 / epsilon * math.log(outside)))
        in_window = np.zeros(size, dtype=bool)
        in_window[window] = True
        law[~in_window] = bottom_weight / outside
    return law / law.sum()


def reference(orders, position_law):
    """The average over lists of each list's position law mapped to words."""
    out = np.zeros(orders.shape[1])
    for order in orders:
        position = {int(w): p for p, w in enumerate(order)}
        out[order] += position_law(position) / len(orders)
    return out


def law_of(method, epsilon, gamma, orders, word, **variant):
    size = orders.shape[1]
    if method == "geometric":
        return reference(orders, lambda pos: geometric_position_law(epsilon, size, pos[word], **variant))
    return reference(orders, lambda pos: tem_position_law(epsilon, gamma, size, pos[word], **variant))


def draw(mechanism, word, keyed, draws=DRAWS):
    rng = KeyedRandom(np.arange(draws, dtype=np.uint64) + np.uint64(word << 24)) if keyed else np.random.default_rng(11)
    return mechanism.perturb(np.full(draws, word), rng)


def probe_words(mechanism):
    """Words at both ends of the first list (where clamping and the window's
    edges matter), next to an end, and in the middle."""
    order = mechanism.word_lists.orders[0]
    return [int(order[0]), int(order[1]), int(order[len(order) // 2]), int(order[-1])]


CASES = [
    # method, epsilon, lists, gamma, keyed
    ("geometric", 0.3, 1, None, False),
    ("geometric", 1.5, 1, None, True),
    ("geometric", 0.5, 3, None, False),
    ("geometric", 2.0, 4, None, True),
    ("tem", 0.8, 1, 5, False),
    ("tem", 3.0, 1, 3, True),
    ("tem", 1.5, 3, 5, False),
    ("tem", 0.4, 2, 250, True),  # the window covers the whole list: no bottom element
]


@pytest.mark.parametrize("method, epsilon, lists, gamma, keyed", CASES)
def test_draws_match_the_brute_force_law(small_embeddings, short_table, distances, method, epsilon, lists, gamma, keyed):
    params = {"gamma": gamma} if gamma is not None else {}
    mechanism = build_mechanism("diffractor", small_embeddings, epsilon=epsilon, lists=lists, method=method,
                                neighbours=short_table, **params)
    orders = np.stack([brute_force_chain(distances, int(start)) for start in mechanism.word_lists.orders[:, 0]])
    np.testing.assert_array_equal(mechanism.word_lists.orders, orders)
    for word in probe_words(mechanism):
        exact = law_of(method, epsilon, gamma, orders, word)
        np.testing.assert_allclose(mechanism.distribution(word), exact, rtol=1e-9, atol=1e-15)
        assert chi_square_gof(draw(mechanism, word, keyed), exact) > P_VALUE_THRESHOLD, word


@pytest.mark.parametrize(
    "method, epsilon, lists, gamma, variant",
    [
        ("geometric", 1.5, 1, None, {"halve": True}),  # p = 1 - e^(-epsilon / 2)
        ("geometric", 0.3, 1, None, {"truncate": True}),  # dropped, not clamped, at the ends
        ("tem", 1.5, 1, 3, {"gamma": 2}),  # the window one position too narrow
        ("tem", 1.5, 1, 3, {"bottom": False}),  # no bottom element
        ("geometric", 0.5, 3, None, {"lists": 1}),  # the first list only, not the mixture
        ("tem", 1.5, 3, 5, {"lists": 1}),
    ],
)
def test_check_rejects_wrong_variants(small_embeddings, short_table, method, epsilon, lists, gamma, variant):
    """Negative controls: the same draws and test reject each wrong law."""
    params = {"gamma": gamma} if gamma is not None else {}
    mechanism = build_mechanism("diffractor", small_embeddings, epsilon=epsilon, lists=lists, method=method,
                                neighbours=short_table, **params)
    orders = mechanism.word_lists.orders[: variant.pop("lists", lists)]
    gamma = variant.pop("gamma", gamma)
    word = probe_words(mechanism)[0]
    wrong = law_of(method, epsilon, gamma, orders, word, **variant)
    assert chi_square_gof(draw(mechanism, word, keyed=False), wrong) < P_VALUE_THRESHOLD


def log_ratios(mechanism):
    """max over outputs y of ln(P[y | x] / P[y | x']) for every pair (x, x')."""
    laws = np.array([mechanism.distribution(w) for w in range(mechanism.embeddings.size)])
    assert (laws > 0).all()  # both methods reach every word: no infinite ratio
    logs = np.log(laws)
    return (logs[:, None, :] - logs[None, :, :]).max(axis=2)


def position_gaps(mechanism):
    """|pos_i(x) - pos_i(x')| for every list and pair, from the lists themselves."""
    positions = np.argsort(mechanism.word_lists.orders, axis=1)
    return np.abs(positions[:, :, None] - positions[:, None, :])


@pytest.mark.parametrize("lists", [1, 3])
def test_geometric_guarantee_holds_on_every_pair(small_embeddings, short_table, lists):
    """epsilon max_i d_i bounds every pair's privacy loss; with one list it is
    reached exactly (at the list's ends); with several, the smallest gap
    (min_i d_i) would not be a valid metric."""
    epsilon = 0.4
    mechanism = build_mechanism("diffractor", small_embeddings, epsilon=epsilon, lists=lists,
                                neighbours=short_table)
    loss = log_ratios(mechanism)
    gaps = position_gaps(mechanism)
    bound = epsilon * gaps.max(axis=0)
    np.testing.assert_array_equal(mechanism.metric_distances(17), gaps.max(axis=0)[17])
    assert (loss <= bound + 1e-9).all()
    guarantee = mechanism.guarantee()
    assert guarantee.kind == "pure" and guarantee.epsilon == epsilon
    assert all(guarantee.bound(d) == pytest.approx(b) for d, b in [(3, 1.2), (0, 0.0)])
    if lists == 1:
        np.testing.assert_allclose(loss, bound, atol=1e-9)
        assert guarantee.metric == "list position (1 list, list seed 0)"
    else:
        assert (loss > epsilon * gaps.min(axis=0) + 1e-6).any()
        assert guarantee.metric == "list position (max over 3 lists, list seed 0)"


@pytest.mark.parametrize("lists", [1, 3])
def test_tem_guarantee_holds_on_every_pair(small_embeddings, short_table, lists):
    """epsilon min(gamma, max_i d_i) bounds every pair (so epsilon gamma bounds
    all of them: local DP). It is the exponential mechanism's bound, loose by
    up to a factor 2 here: the output at x itself gives one list's pair at
    least epsilon min(d, gamma) / 2, and the normalisers barely move."""
    epsilon, gamma = 0.8, 4
    mechanism = build_mechanism("diffractor", small_embeddings, epsilon=epsilon, lists=lists, method="tem",
                                gamma=gamma, neighbours=short_table)
    loss = log_ratios(mechanism)
    metric = np.minimum(position_gaps(mechanism).max(axis=0), gamma)
    np.testing.assert_array_equal(mechanism.metric_distances(17), metric[17])
    assert (loss <= epsilon * metric + 1e-9).all()
    assert loss.max() <= epsilon * gamma + 1e-9
    if lists == 1:
        assert (np.maximum(loss, loss.T) >= epsilon / 2 * metric - 1e-9).all()
    assert mechanism.guarantee().metric.startswith(f"list position, capped at gamma = {gamma} (")
