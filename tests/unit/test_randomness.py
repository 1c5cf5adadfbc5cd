"""Random sources: keyed draws are uniform, independent across streams and
columns, and depend on nothing but the token's key."""

from __future__ import annotations

import numpy as np
import pytest

from dp_spark.randomness import (
    GeneratorRandom,
    KeyedRandom,
    as_token_random,
    derive_key,
    open_unit_interval,
    release_key,
    token_keys,
)
from tests.stats.distributions import P_VALUE_THRESHOLD, chi_square_gof


@pytest.mark.parametrize("dtype, bins", [(np.float64, 1000), (np.float32, 256)])
def test_keyed_uniforms_are_uniform_in_the_unit_interval(dtype, bins):
    u = KeyedRandom(np.arange(200_000, dtype=np.uint64)).uniform(3, 5, dtype)
    assert u.dtype == dtype and u.shape == (200_000, 5)
    assert (u > 0).all() and (u < 1).all()
    cells = np.floor(u.ravel() * bins).astype(np.int64)
    assert chi_square_gof(cells, np.full(bins, 1 / bins)) > P_VALUE_THRESHOLD


def test_keyed_pairs_are_independent():
    """Adjacent columns and adjacent streams: the 2-D histogram of pairs is flat."""
    source = KeyedRandom(np.arange(100_000, dtype=np.uint64))
    a = source.uniform(0, 2)
    b = source.uniform(1, 1)
    for x, y in ((a[:, 0], a[:, 1]), (a[:, 0], b[:, 0])):
        cells = (np.floor(x * 20) * 20 + np.floor(y * 20)).astype(np.int64)
        assert chi_square_gof(cells, np.full(400, 1 / 400)) > P_VALUE_THRESHOLD
    # Negative control: the same check sees a dependence of 1 part in 20.
    dependent = np.where(np.arange(100_000) % 20 == 0, a[:, 0], a[:, 1])
    cells = (np.floor(a[:, 0] * 20) * 20 + np.floor(dependent * 20)).astype(np.int64)
    assert chi_square_gof(cells, np.full(400, 1 / 400)) < P_VALUE_THRESHOLD


def test_keyed_draws_depend_only_on_the_key():
    keys = np.array([5, 17, 99, 1234], dtype=np.uint64)
    whole = KeyedRandom(keys).uniform(2, 8)
    restricted = KeyedRandom(keys).restrict(np.array([3, 1])).uniform(2, 8)
    np.testing.assert_array_equal(restricted, whole[[3, 1]])
    narrow = KeyedRandom(keys).uniform(2, 3)
    np.testing.assert_array_equal(narrow, whole[:, :3])


def test_generator_source_draws_in_open_interval_and_checks_size():
    u = GeneratorRandom(np.random.default_rng(0), 1000).uniform(0, 4, np.float32)
    assert u.shape == (1000, 4) and (u > 0).all() and (u < 1).all()
    with pytest.raises(ValueError, match="covers 3 tokens, the batch has 4"):
        as_token_random(KeyedRandom(np.zeros(3, np.uint64)), 4)
    with pytest.raises(TypeError):
        as_token_random(42, 4)


def test_a_key_whose_word_is_all_ones_still_draws_below_one():
    """Regression: with 53 bits, (2^53 - 1/2) 2^-53 rounded up to exactly 1.0,
    and mlap then returned id -1 (log(1 - u) = -inf) on every retry."""
    assert KeyedRandom(np.array([9341603376841967378], np.uint64)).uniform(1, 1)[0, 0] < 1.0
    extremes = np.array([0, 2**64 - 1], dtype=np.uint64)
    for dtype in (np.float64, np.float32):
        u = open_unit_interval(extremes, dtype)
        assert u.dtype == dtype and 0 < u[0] and u[1] < 1


def test_generator_uniforms_never_hit_zero_or_one_at_the_ends():
    """The generator path draws the same (t + 1/2) 2^-b grid: its extremes are inside too."""
    class Extremes:
        def integers(self, low, high, size, dtype, endpoint):
            return np.resize(np.array([0, 2**64 - 1], dtype=np.uint64), size)

    for dtype in (np.float64, np.float32):
        u = GeneratorRandom(Extremes(), 2).uniform(0, 2, dtype)
        assert (u > 0).all() and (u < 1).all()


def test_release_keys_differ_with_every_part_of_the_release():
    assert release_key(b"s", '{"epsilon": 12}') == release_key(b"s", '{"epsilon": 12}')
    assert release_key(b"s", '{"epsilon": 12}') != release_key(b"s", '{"epsilon": 12, "max_distance": 3}')
    assert release_key(b"s", '{"epsilon": 12}') != release_key(b"t", '{"epsilon": 12}')


def test_token_keys_follow_rows_not_batches():
    rows = np.array([10, 20, 30], dtype=np.uint64)
    keys = token_keys(rows, np.array([2, 0, 3]))
    assert len(keys) == 5 and len(set(keys.tolist())) == 5
    np.testing.assert_array_equal(token_keys(rows[2:], np.array([3])), keys[2:])


def test_derive_key_is_keyed_and_labelled():
    assert derive_key(b"secret", "text", 1) == derive_key(b"secret", "text", 1)
    assert derive_key(b"secret", "text", 1) != derive_key(b"secret", "text", 2)
    assert derive_key(b"secret", "text", 1) != derive_key(b"other", "text", 1)


@pytest.mark.parametrize("keyed", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_uniform_columns_read_the_matrix_uniform_returns(keyed, dtype):
    def source():
        if keyed:
            return KeyedRandom(np.arange(50, dtype=np.uint64) * 7919)
        return GeneratorRandom(np.random.default_rng(4), 50)

    matrix = source().uniform(2, 6, dtype)
    columns = source().uniform_columns(2, 6, dtype)
    order = np.random.default_rng(0).permutation(50)
    permuted = columns.permuted(order)
    for j in range(6):
        np.testing.assert_array_equal(columns.column(j, 50), matrix[:, j])
        np.testing.assert_array_equal(permuted.column(j, 20), matrix[order[:20], j])
        assert permuted.column(j, 20).dtype == dtype


def test_mix64_of_a_scalar_is_a_scalar():
    from dp_spark.randomness import mix64

    assert isinstance(mix64(np.uint64(7)), np.uint64)
    assert mix64(np.uint64(7)) == mix64(np.array([7], np.uint64))[0]
