"""1-Diffractor: list building and caching, lists given as arrays, parameters,
keyed draws, what it describes. The output law is in tests/stats."""

from __future__ import annotations

import numpy as np
import pytest

from dp_spark.embeddings import Embeddings
from dp_spark.index import NeighbourTable, build_neighbour_table
from dp_spark.mechanisms import build_mechanism, diffractor, mechanism_parameters
from dp_spark.mechanisms.diffractor import (
    Diffractor,
    WordLists,
    build_word_lists,
    cached_word_lists,
    greedy_chain,
    list_starts,
)
from dp_spark.randomness import KeyedRandom
from tests.conftest import clustered_embeddings


@pytest.fixture(scope="module")
def table(small_embeddings):
    return build_neighbour_table(small_embeddings, k=8)


def test_every_word_is_on_every_list_exactly_once(small_embeddings, table):
    lists = build_word_lists(small_embeddings, 5, 3, table)
    assert lists.orders.shape == (5, 200) and lists.orders.dtype == np.int32
    assert all(sorted(order) == list(range(200)) for order in lists.orders.tolist())
    np.testing.assert_array_equal(np.take_along_axis(lists.positions, lists.orders, axis=1),
                                  np.broadcast_to(np.arange(200), (5, 200)))


def test_chain_steps_to_the_nearest_unvisited_word_with_and_without_the_table():
    """With K = 2 most steps of the later chain exhaust the table row and take
    the exact search; the chain is the same as with a full table."""
    embeddings = clustered_embeddings(300, 4, seed=5)
    full = build_neighbour_table(embeddings, k=299)
    short = NeighbourTable(full.ids[:, :2], full.distances[:, :2], full.diameter, full.fingerprint)
    v = embeddings.vectors.astype(np.float64)
    chain = greedy_chain(embeddings.vectors, short.ids, 17)
    np.testing.assert_array_equal(chain, greedy_chain(embeddings.vectors, full.ids, 17))
    visited = {int(chain[0])}
    searches = 0
    for previous, current in zip(chain[:-1], chain[1:]):
        searches += visited.issuperset(short.ids[previous].tolist())
        unvisited = np.array(sorted(set(range(300)) - visited))
        distances = np.linalg.norm(v[unvisited] - v[previous], axis=1)
        assert current == unvisited[np.argmin(distances)]
        visited.add(int(current))
    assert searches > 30


def test_starts_are_distinct_and_follow_the_public_seed(small_embeddings, table):
    np.testing.assert_array_equal(list_starts(200, 4, 9), list_starts(200, 4, 9))
    assert len(set(list_starts(200, 200, 9).tolist())) == 200
    np.testing.assert_array_equal(list_starts(200, 203, 9)[200:], list_starts(200, 3, 9))  # more lists than words
    assert not np.array_equal(list_starts(200, 4, 9), list_starts(200, 4, 10))
    lists = build_word_lists(small_embeddings, 4, 9, table)
    np.testing.assert_array_equal(lists.orders[:, 0], list_starts(200, 4, 9))
    np.testing.assert_array_equal(lists.orders, build_word_lists(small_embeddings, 4, 9, table).orders)


def test_lists_are_cached_by_embeddings_count_and_seed(small_embeddings, table, tmp_path, monkeypatch):
    cached_word_lists(small_embeddings, 2, 0, table, cache_dir=tmp_path)
    assert not list(tmp_path.iterdir())  # too small to be worth caching
    monkeypatch.setattr(diffractor, "CACHE_MIN_WORDS", 100)
    first = cached_word_lists(small_embeddings, 2, 0, table, cache_dir=tmp_path)
    (path,) = tmp_path.glob("diffractor-lists-*-n2-seed0-k8.npz")
    again = cached_word_lists(small_embeddings, 2, 0, table, cache_dir=tmp_path)
    np.testing.assert_array_equal(first.orders, again.orders)
    cached_word_lists(small_embeddings, 2, 1, table, cache_dir=tmp_path)
    other = clustered_embeddings(200, 3, seed=99)
    cached_word_lists(other, 2, 0, build_neighbour_table(other, k=8), cache_dir=tmp_path)
    assert len(list(tmp_path.glob("diffractor-lists-*.npz"))) == 3
    path.write_bytes(b"not lists")
    np.testing.assert_array_equal(cached_word_lists(small_embeddings, 2, 0, table, cache_dir=tmp_path).orders,
                                  first.orders)


def test_mechanism_from_given_lists_draws_like_the_built_one(small_embeddings, table):
    built = build_mechanism("diffractor", small_embeddings, epsilon=1.0, lists=2, neighbours=table)
    orders = built.word_lists.orders.astype(np.int64).tolist()  # plain ints, as an artifact would store them
    given = build_mechanism("diffractor", small_embeddings, epsilon=1.0, lists=2,
                            word_lists=WordLists(np.array(orders), 0, small_embeddings.fingerprint))
    ids = np.random.default_rng(0).integers(0, 200, 1000)
    keys = np.arange(1000, dtype=np.uint64)
    np.testing.assert_array_equal(built.perturb(ids, KeyedRandom(keys)), given.perturb(ids, KeyedRandom(keys)))


def test_given_lists_that_do_not_fit_are_refused(small_embeddings, table):
    lists = build_word_lists(small_embeddings, 2, 0, table)
    orders = lists.orders.copy()
    orders[1, 5] = orders[1, 6]
    with pytest.raises(ValueError, match=r"list 1 misses 1 vocabulary word\(s\)"):
        WordLists(orders, 0, small_embeddings.fingerprint)
    with pytest.raises(ValueError, match=r"ids outside \[0, 200\)"):
        WordLists(lists.orders + 1, 0, small_embeddings.fingerprint)
    with pytest.raises(ValueError, match="lists=3, list_seed=0"):
        Diffractor(small_embeddings, 1.0, lists=3, word_lists=lists)
    with pytest.raises(ValueError, match="list_seed=4"):
        Diffractor(small_embeddings, 1.0, lists=2, list_seed=4, word_lists=lists)
    other = Embeddings.from_arrays(small_embeddings.words, small_embeddings.vectors * 2)
    with pytest.raises(ValueError, match="other embeddings"):
        Diffractor(other, 1.0, lists=2, word_lists=lists)
    with pytest.raises(ValueError, match="other embeddings"):
        Diffractor(other, 1.0, neighbours=table)
    with pytest.raises(ValueError, match="word_lists must be WordLists"):
        Diffractor(small_embeddings, 1.0, word_lists=lists.orders)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"lists": 0}, "lists must be a positive integer"),
        ({"method": "laplace"}, "method must be one of geometric, tem; got 'laplace'"),
        ({"gamma": 3}, "gamma applies to method 'tem' only"),
        ({"method": "tem", "gamma": 0}, "gamma must be a positive integer"),
        ({"method": "tem", "gamma": 2.5}, "gamma must be a positive integer"),
        ({"list_seed": -1}, "list_seed must be a non-negative integer"),
        ({"list_seed": True}, "list_seed must be a non-negative integer"),
    ],
)
def test_invalid_parameters_are_named(small_embeddings, table, params, message):
    with pytest.raises(ValueError, match=message):
        build_mechanism("diffractor", small_embeddings, epsilon=1.0, neighbours=table, **params)


def test_registered_with_its_parameters_and_defaults(small_embeddings, table):
    assert mechanism_parameters("diffractor") == ("lists", "method", "gamma", "list_seed", "neighbours", "word_lists")
    mechanism = build_mechanism("diffractor", small_embeddings, epsilon=1.0, neighbours=table)
    assert (mechanism.lists, mechanism.method, mechanism.gamma, mechanism.list_seed) == (1, "geometric", None, 0)
    assert build_mechanism("diffractor", small_embeddings, epsilon=1.0, method="tem", neighbours=table).gamma == 5


@pytest.mark.parametrize("params", [{}, {"lists": 3}, {"method": "tem", "lists": 2, "gamma": 3}])
def test_keyed_draws_depend_only_on_the_key(small_embeddings, table, params):
    mechanism = build_mechanism("diffractor", small_embeddings, epsilon=0.7, neighbours=table, **params)
    rng = np.random.default_rng(4)
    ids = rng.integers(-1, 200, 3000)
    keys = rng.integers(0, 2**63, 3000).astype(np.uint64)
    whole = mechanism.perturb(ids, KeyedRandom(keys))
    order = rng.permutation(3000)
    for part in (order[:1000], order[1000:1001], order[1001:]):
        np.testing.assert_array_equal(mechanism.perturb(ids[part], KeyedRandom(keys[part])), whole[part])
    assert (whole != mechanism.perturb(ids, KeyedRandom(keys + np.uint64(1)))).mean() > 0.05


def test_outputs_stay_on_the_list_at_tiny_and_huge_epsilon(small_embeddings, table):
    """Tiny epsilon: offsets far beyond the list are clamped to its ends;
    huge epsilon: every word comes back unchanged."""
    ids = np.arange(200).repeat(20)
    for method in ("geometric", "tem"):
        loose = build_mechanism("diffractor", small_embeddings, epsilon=1e-9, method=method, neighbours=table)
        out = loose.perturb(ids, np.random.default_rng(0))
        assert ((out >= 0) & (out < 200)).all()
        tight = build_mechanism("diffractor", small_embeddings, epsilon=200.0, method=method, neighbours=table)
        np.testing.assert_array_equal(tight.perturb(ids, np.random.default_rng(0)), ids)
    geometric = build_mechanism("diffractor", small_embeddings, epsilon=1e-9, neighbours=table)
    ends = geometric.word_lists.orders[0, [0, -1]]
    assert np.isin(geometric.perturb(ids, np.random.default_rng(0)), ends).mean() > 0.99


def test_describe_reports_the_lists_and_the_guarantee(small_embeddings, table):
    mechanism = build_mechanism("diffractor", small_embeddings, epsilon=1.5, lists=3, method="tem", gamma=4,
                                list_seed=7, neighbours=table)
    described = mechanism.describe()
    assert described["lists"] == 3 and described["method"] == "tem" and described["gamma"] == 4
    assert described["list_seed"] == 7 and described["list_starts"] == list_starts(200, 3, 7).tolist()
    assert described["guarantee"] == "pure" and described["guarantee_epsilon"] == 1.5
    assert described["guarantee_metric"] == "list position, capped at gamma = 4 (max over 3 lists, list seed 7)"
