from __future__ import annotations

import numpy as np
import pytest

from dp_spark.index import (
    build_index,
    build_neighbour_table,
    deserialize_index,
    neighbour_table,
    serialize_index,
    vocabulary_diameter,
)
from tests.conftest import clustered_embeddings


def brute_force_distances(vectors):
    v = vectors.astype(np.float64)
    return np.sqrt(((v[:, None, :] - v[None, :, :]) ** 2).sum(axis=2))


def test_neighbour_table_matches_brute_force(small_embeddings):
    table = build_neighbour_table(small_embeddings, k=16)
    full = brute_force_distances(small_embeddings.vectors)
    np.fill_diagonal(full, np.inf)
    expected = np.sort(full, axis=1)[:, :16]
    assert table.ids.shape == (200, 16) and table.ids.dtype == np.int32
    np.testing.assert_allclose(table.distances, expected, rtol=1e-4, atol=1e-4)
    assert not (table.ids == np.arange(200)[:, None]).any()
    assert table.min_distance == pytest.approx(expected[:, 0].min(), rel=1e-4)
    assert table.diameter == pytest.approx(brute_force_distances(small_embeddings.vectors).max(), rel=1e-9)


def test_diameter_is_exact_on_many_points():
    vectors = clustered_embeddings(3000, 10, seed=2).vectors
    full = max(
        np.sqrt(((vectors[i : i + 500, None].astype(np.float64) - vectors[None]) ** 2).sum(2)).max()
        for i in range(0, 3000, 500)
    )
    assert vocabulary_diameter(vectors) == pytest.approx(full, rel=1e-9)


def test_neighbour_table_is_cached_by_fingerprint_and_k(small_embeddings, tmp_path):
    first = neighbour_table(small_embeddings, 8, cache_dir=tmp_path)
    cached = list(tmp_path.glob("neighbours-*-k8.npz"))
    assert len(cached) == 1
    again = neighbour_table(small_embeddings, 8, cache_dir=tmp_path)
    np.testing.assert_array_equal(first.ids, again.ids)
    other = clustered_embeddings(200, 3, seed=99)
    neighbour_table(other, 8, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("neighbours-*-k8.npz"))) == 2


def test_corrupt_cache_is_rebuilt(small_embeddings, tmp_path):
    neighbour_table(small_embeddings, 8, cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.npz")
    path.write_bytes(b"not a table")
    table = neighbour_table(small_embeddings, 8, cache_dir=tmp_path)
    assert table.ids.shape == (200, 8)


def test_k_is_capped_by_vocabulary_and_validated(small_embeddings, tmp_path):
    assert neighbour_table(small_embeddings, 10_000, cache_dir=tmp_path).k == 199
    with pytest.raises(ValueError, match="neighbours"):
        neighbour_table(small_embeddings, 0, cache_dir=tmp_path)


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivf"])
def test_index_round_trips_through_bytes(small_embeddings, index_type):
    index = build_index(small_embeddings.vectors, index_type)
    restored = deserialize_index(serialize_index(index))
    queries = small_embeddings.vectors[:50] + 0.01
    np.testing.assert_array_equal(index.search(queries, 1)[1], restored.search(queries, 1)[1])
    assert restored.ntotal == 200


def test_unknown_index_type(small_embeddings):
    with pytest.raises(ValueError, match="index type must be one of flat, hnsw, ivf; got 'annoy'"):
        build_index(small_embeddings.vectors, "annoy")


def test_exact_order_is_the_float64_order_with_near_ties_and_duplicates():
    """The float32 re-rank gives the float64 order, ties in search order,
    also where words are near-copies (distances equal to ~1e-7, inside the
    float32 rounding) or exact duplicates."""
    from dp_spark.index import exact_order

    rng = np.random.default_rng(3)
    base = rng.normal(size=(300, 50)).astype(np.float32)
    copies = base[:100] + rng.normal(scale=3e-7, size=(100, 50)).astype(np.float32)
    vectors = np.vstack([base, copies, base[:20]])  # near-copies, then exact duplicates
    rows = np.arange(len(vectors))
    ids = np.stack([rng.permutation(np.delete(rows, row))[:40] for row in rows])
    ids[:, :2] = (rows[:, None] + np.array([[100, 300]])) % len(vectors)  # a copy's pair among the neighbours
    ids[ids == rows[:, None]] = (rows[:, None] + 1).repeat(40, axis=1)[ids == rows[:, None]]
    found, distances = exact_order(vectors, rows, ids)
    exact = np.sqrt(((vectors[ids].astype(np.float64) - vectors[rows, None, :].astype(np.float64)) ** 2).sum(axis=2))
    order = np.argsort(exact, axis=1, kind="stable")
    np.testing.assert_array_equal(found, np.take_along_axis(ids, order, axis=1))
    np.testing.assert_allclose(distances, np.take_along_axis(exact, order, axis=1), rtol=1e-6)
    gaps = np.diff(np.sort(exact, axis=1), axis=1) / np.maximum(np.sort(exact, axis=1)[:, 1:], 1e-30)
    assert (gaps < 1e-6).any(axis=1).sum() > 20  # near-ties were exercised
