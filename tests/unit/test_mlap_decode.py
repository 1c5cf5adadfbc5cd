"""mlap's decode: the certified candidates, the batched IVF search and the
recall it is calibrated for, each against an independent brute force."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from dp_spark.index import BatchedIvfSearch, build_index, neighbour_table
from dp_spark.mechanisms import build_mechanism
from dp_spark.randomness import KeyedRandom
from tests.conftest import clustered_embeddings


@pytest.fixture(scope="module")
def vocabulary():
    """1,500 words in 8 dimensions with a short table (K = 8): at epsilon 10
    the noise radius is comparable to D_K, so the certificate holds for about
    half of the tokens and fails for the rest."""
    embeddings = clustered_embeddings(1500, 8, seed=11)
    return embeddings, neighbour_table(embeddings, 8, use_cache=False)


def brute_force(vectors: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Squared distances (float64) from each query to every vector (the
    expansion in float64 is exact to ~1e-14 here, far below float32 ties)."""
    q, x = queries.astype(np.float64), vectors.astype(np.float64)
    return np.maximum((q**2).sum(axis=1)[:, None] + (x**2).sum(axis=1)[None, :] - 2 * q @ x.T, 0)


def rounding(vectors: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Per query, how far a float32 squared distance computed as FAISS does
    (|q|^2 + |x|^2 - 2 q.x) can be off: a few ulps of |q|^2 + max |x|^2."""
    norms = (queries.astype(np.float64) ** 2).sum(axis=1)
    return 1e-6 * (norms + (vectors.astype(np.float64) ** 2).sum(axis=1).max())


def assert_same_nearest(found: np.ndarray, squared: np.ndarray, k: int, tolerance: np.ndarray) -> None:
    """``found`` (n, k) are the k nearest by ``squared``, except where two
    words are tied within ``tolerance`` (float32 rounding; rare)."""
    order = np.argsort(squared, axis=1, kind="stable")
    differs = (found != order[:, :k]).any(axis=1)
    if differs.any():
        ranked = np.take_along_axis(squared, order[:, : k + 1], axis=1)
        gaps = np.diff(ranked, axis=1).min(axis=1)
        assert (gaps[differs] < tolerance[differs]).all(), np.flatnonzero(differs)[:10]
    assert differs.mean() < 0.005


@pytest.mark.parametrize("k", [1, 2])
def test_certified_decode_is_the_exact_nearest(vocabulary, k):
    embeddings, table = vocabulary
    m = build_mechanism("mlap", embeddings, epsilon=10.0, neighbours=table)
    words = np.random.default_rng(0).integers(0, embeddings.size, 6000)
    vectors = m.noisy_vectors(words, np.random.default_rng(1))
    certified = m.certified(vectors, words, k)
    # The certificate must both hold (no search) and fail (search) for a good share.
    assert 0.15 < certified.mean() < 0.85
    squared = brute_force(embeddings.vectors, vectors)
    tolerance = rounding(embeddings.vectors, vectors)
    distances, found = m.nearest(vectors, words, k)
    assert_same_nearest(found, squared, k, tolerance)
    assert (np.abs(distances - np.sort(squared, axis=1)[:, :k]) <= 2 * tolerance[:, None]).all()
    # The certified ones alone (no search at all) are exact, to float32 rounding of direct differences.
    only_certified = m._candidates(vectors[certified], words[certified], k)[1]
    assert_same_nearest(only_certified, squared[certified], k, 1e-5 * squared[certified].max(axis=1))


def test_vickrey_takes_the_exact_two_nearest(vocabulary):
    embeddings, table = vocabulary
    m = build_mechanism("vickrey", embeddings, epsilon=10.0, neighbours=table, threshold=1.0)
    words = np.random.default_rng(2).integers(0, embeddings.size, 4000)
    rng = KeyedRandom(np.arange(len(words), dtype=np.uint64) * 7919)
    vectors = m.noisy_vectors(words, rng)
    assert 0.1 < m.certified(vectors, words, 2).mean() < 0.9
    # threshold 1: always the second nearest word
    second = np.argsort(brute_force(embeddings.vectors, vectors), axis=1)[:, 1]
    assert (m.perturb(words, rng) == second).mean() > 0.999


@pytest.mark.parametrize("index_type", ["flat", "ivf"])
def test_same_keyed_noise_gives_the_exact_decode_for_every_token(vocabulary, index_type):
    """The output distribution is the exact mechanism's: with index_type
    flat, every token decodes to the exact nearest word of its noisy vector
    (the same keyed noise as a plain exhaustive decode); ivf with recall 1
    probes every list and matches too."""
    embeddings, table = vocabulary
    m = build_mechanism("mlap", embeddings, epsilon=10.0, neighbours=table, index_type=index_type, recall=1.0)
    words = np.random.default_rng(3).integers(0, embeddings.size, 8000)
    rng = KeyedRandom(np.arange(len(words), dtype=np.uint64) * 104729 + 5)
    output = m.perturb(words, rng)
    vectors = m.noisy_vectors(words, rng)
    exact = brute_force(embeddings.vectors, vectors).argmin(axis=1)
    faiss_flat = faiss.knn(vectors, embeddings.vectors, 1)[1][:, 0]
    assert (output == exact).mean() > 0.999
    assert (output == faiss_flat).mean() > 0.999


@pytest.fixture(scope="module")
def ivf_setting():
    embeddings = clustered_embeddings(3000, 16, seed=5)
    index = build_index(embeddings.vectors, "ivf", ivf_nlist=40)
    queries = embeddings.vectors[np.random.default_rng(4).integers(0, 3000, 500)]
    queries = queries + np.random.default_rng(5).normal(scale=0.8, size=queries.shape).astype(np.float32)
    return embeddings, index, queries


@pytest.mark.parametrize("k", [1, 2, 5, 12])
@pytest.mark.parametrize("nprobe", [1, 3, 7])
def test_batched_ivf_search_is_exhaustive_over_the_probed_lists(ivf_setting, k, nprobe):
    embeddings, index, queries = ivf_setting
    searcher = BatchedIvfSearch(index)
    ivf = faiss.extract_index_ivf(index)
    centroids = ivf.quantizer.reconstruct_n(0, ivf.nlist)
    membership = ivf.quantizer.assign(embeddings.vectors, 1)[:, 0]
    probes = searcher.probes(queries, nprobe)
    # the probed lists are the nprobe nearest centroids
    to_centroids = brute_force(centroids, queries)
    expected_probes = np.sort(np.argsort(to_centroids, axis=1)[:, :nprobe], axis=1)
    assert (np.sort(probes, axis=1) == expected_probes).all(axis=1).mean() > 0.99
    distances, found = searcher.search(queries, k, nprobe)
    squared = brute_force(embeddings.vectors, queries)
    outside = ~(membership[None, :, None] == probes[:, None, :]).any(axis=2)
    squared[outside] = np.inf  # only the words of the probed lists count
    tolerance = rounding(embeddings.vectors, queries)
    assert_same_nearest(found, squared, k, tolerance)
    expected = np.sort(squared, axis=1)[:, :k]
    assert (np.abs(distances - expected) <= 2 * tolerance[:, None]).all()
    # and FAISS's own IVF search at the same nprobe finds the same words
    index.nprobe = nprobe
    assert (index.search(queries, k)[1] == found).all(axis=1).mean() > 0.99


def test_batched_ivf_search_probing_every_list_is_exact(ivf_setting):
    embeddings, index, queries = ivf_setting
    searcher = BatchedIvfSearch(index)
    distances, found = searcher.search(queries, 3, searcher.nlist)
    assert_same_nearest(found, brute_force(embeddings.vectors, queries), 3, rounding(embeddings.vectors, queries))


@pytest.mark.parametrize("recall", [0.95, 0.99])
def test_ivf_decode_reaches_its_recall_on_held_out_words(recall):
    """nprobe is chosen on 2,000 calibration words; on 5,000 other noisy
    words the recall@1 against exact search is at least the configured
    recall less 0.01 (about 3 standard errors of the two estimates)."""
    embeddings = clustered_embeddings(8000, 16, seed=9)
    m = build_mechanism("mlap", embeddings, epsilon=6.0, index_type="ivf", recall=recall)
    assert m.ivf_nprobe < m._ivf.nlist  # the test is not the trivial exhaustive case
    weights = 1.0 / np.arange(1, embeddings.size + 1)
    words = np.random.default_rng(77).choice(embeddings.size, 5000, p=weights / weights.sum())
    vectors = m.noisy_vectors(words, np.random.default_rng(78))
    exact = faiss.knn(vectors, embeddings.vectors, 1)[1][:, 0]
    held_out = np.mean(m.nearest(vectors, words)[1][:, 0] == exact)
    assert held_out >= recall - 0.01, (m.ivf_nprobe, held_out)


@pytest.mark.parametrize("index_type", ["flat", "ivf"])
@pytest.mark.parametrize("epsilon", [1e-3, 1e-6, 1e-12])
def test_tiny_epsilon_gives_valid_words(index_type, epsilon):
    embeddings = clustered_embeddings(2000, 50, seed=3)
    m = build_mechanism("mlap", embeddings, epsilon=epsilon, index_type=index_type)
    output = m.perturb(np.arange(2000), np.random.default_rng(0))
    assert output.dtype == np.int64 and ((output >= 0) & (output < 2000)).all()


@pytest.mark.parametrize("mechanism", ["mlap", "vickrey", "mahalanobis"])
def test_epsilon_too_small_for_the_float32_decode_is_refused(mechanism):
    embeddings = clustered_embeddings(200, 50, seed=3)
    with pytest.raises(ValueError, match=r"epsilon 1e-20 is too small .* use epsilon >= 2\.25e-15"):
        build_mechanism(mechanism, embeddings, epsilon=1e-20)
    # a capped radius is fine at any epsilon
    capped = build_mechanism("mlap", embeddings, epsilon=1e-20, max_distance=100.0)
    output = capped.perturb(np.arange(200), np.random.default_rng(0))
    assert ((output >= 0) & (output < 200)).all()
