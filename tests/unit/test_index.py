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
