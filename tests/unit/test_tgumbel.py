"""tgumbel's sampler against the scoring it replaced: the same noise stream,
the same outputs, token for token (a replayed release must not draw anew)."""

from __future__ import annotations

import numpy as np
import pytest

from dp_spark.embeddings import Embeddings
from dp_spark.index import NeighbourTable, build_index, nearest_other_words, neighbour_table
from dp_spark.mechanisms.noise import sample_from_cdf, truncated_gumbel, truncated_poisson_cdf
from dp_spark.mechanisms.tgumbel import TruncatedGumbel, _guide_table, _sample_with_guide, minimum_epsilon
from dp_spark.randomness import KeyedRandom, TokenRandom, as_token_random


@pytest.fixture(scope="module")
def embeddings():
    rng = np.random.default_rng(3)
    return Embeddings.from_arrays([f"w{i}" for i in range(400)], rng.normal(size=(400, 8)))


def dense_reference(mechanism: TruncatedGumbel, ids: np.ndarray, rng: TokenRandom) -> np.ndarray:
    """The sampler as it was: every token of a group scored on a (tokens x
    width) matrix of uniforms drawn at once, chunk by chunk."""
    out = []
    for start in range(0, len(ids), mechanism.CHUNK):
        rows = np.arange(start, min(start + mechanism.CHUNK, len(ids)))
        chunk, source = ids[rows], rng.restrict(rows)
        k = sample_from_cdf(mechanism.k_cdf, source.uniform(mechanism.K_STREAM, 1)[:, 0])
        table = mechanism.neighbours
        candidates = np.hstack([chunk[:, None], table.ids[chunk]])
        distances = np.hstack([np.zeros((len(chunk), 1), np.float32), table.distances[chunk]])
        chosen = np.empty(len(chunk), np.int64)
        narrow = k < mechanism._narrow_width
        groups = [(np.flatnonzero(narrow), mechanism._narrow_width), (np.flatnonzero(~narrow & (k <= table.k)), table.k + 1)]
        beyond = np.flatnonzero(k > table.k)
        for group, width in groups:
            if len(group) == 0:
                continue
            uniforms = source.restrict(group).uniform(mechanism.NOISE_STREAM, width, np.float32)
            scores = truncated_gumbel(uniforms, mechanism.scale, mechanism.diameter) + distances[group, :width]
            scores[np.arange(width)[None, :] > k[group, None]] = np.inf
            chosen[group] = candidates[group, scores.argmin(axis=1)]
        if len(beyond):
            width = int(k[beyond].max())
            found, found_distances = nearest_other_words(
                build_index(mechanism.embeddings.vectors), mechanism.embeddings.vectors, chunk[beyond], width
            )
            uniforms = source.restrict(beyond).uniform(mechanism.NOISE_STREAM, width + 1, np.float32)
            scores = truncated_gumbel(uniforms, mechanism.scale, mechanism.diameter)
            scores += np.hstack([np.zeros((len(beyond), 1), np.float32), found_distances])
            scores[np.arange(width + 1)[None, :] > k[beyond, None]] = np.inf
            chosen[beyond] = np.hstack([chunk[beyond, None], found])[np.arange(len(beyond)), scores.argmin(axis=1)]
        out.append(chosen)
    return np.concatenate(out)


@pytest.mark.parametrize("neighbours, rate", [(32, None), (4, None), (32, 20.0), (32, 0.0)])
@pytest.mark.parametrize("keyed", [True, False])
def test_outputs_equal_the_dense_scoring_token_for_token(embeddings, neighbours, rate, keyed, monkeypatch):
    """Narrow and full-width groups scored by candidate and on the matrix,
    the exact scan beyond the table (K = 4), several chunks, a Poisson rate
    of 0: identical outputs."""
    table = neighbour_table(embeddings, neighbours, use_cache=False)
    mechanism = TruncatedGumbel(embeddings, 2 * minimum_epsilon(embeddings.size, table.min_distance),
                                neighbours=table, poisson_rate=rate)
    monkeypatch.setattr(TruncatedGumbel, "CHUNK", 700)
    monkeypatch.setattr(TruncatedGumbel, "DENSE_BELOW", 100)
    ids = np.random.default_rng(0).integers(0, embeddings.size, 2000)

    def source(seed):
        if keyed:
            return KeyedRandom(np.random.default_rng(seed).integers(0, 2**63, len(ids), dtype=np.uint64))
        return as_token_random(np.random.default_rng(seed), len(ids))

    expected = dense_reference(mechanism, ids, source(1))
    np.testing.assert_array_equal(mechanism.perturb(ids, source(1)), expected)


def test_the_guide_table_samples_the_same_integers_as_a_binary_search():
    cdf = truncated_poisson_cdf(11.43, 99_999)
    guide = _guide_table(cdf)
    u = np.concatenate([
        np.random.default_rng(0).random(200_000),
        cdf[:-1],  # exactly on a CDF value
        np.nextafter(cdf[:-1], 0),
        np.nextafter(cdf[:-1], 1),
        np.arange(4096) / 4096 + 2**-60,  # at bucket edges
        [1 - 2**-53, 2**-53],
    ])
    u = u[(u > 0) & (u < 1)]
    np.testing.assert_array_equal(_sample_with_guide(cdf, guide, u), sample_from_cdf(cdf, u))


def test_the_table_is_read_in_place_not_copied(embeddings):
    table = neighbour_table(embeddings, 16, use_cache=False)
    mapped = NeighbourTable(table.ids, table.distances, table.diameter, table.fingerprint)
    mechanism = TruncatedGumbel(embeddings, 2 * minimum_epsilon(embeddings.size, table.min_distance), neighbours=mapped)
    assert np.shares_memory(mechanism._neighbour_distances, table.distances)
    assert np.shares_memory(mechanism._neighbour_ids, table.ids)
