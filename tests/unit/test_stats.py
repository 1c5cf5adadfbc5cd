from __future__ import annotations

import numpy as np
import pytest

from dp_spark.stats import ColumnStatistics, StatisticsBuilder, merge_counts


def statistics_of(vocab_size=10, **batch):
    """Statistics of one batch, as a task builds them."""
    builder = StatisticsBuilder(vocab_size)
    builder.add_batch(**batch)
    return builder.build()


def batch(original, perturbed, rows, valid):
    """Statistics of tokens in the given (sorted) rows."""
    return statistics_of(
        valid_rows=np.array(valid),
        token_offsets=np.searchsorted(np.array(rows), np.arange(len(valid) + 1)),
        original_ids=np.array(original),
        perturbed_ids=np.array(perturbed),
    )


def test_batch_counts():
    s = batch([1, 2, -1, 3, 3], [1, 5, -1, 4, 4], [0, 0, 0, 2, 2], [True, False, True])
    assert (s.rows, s.null_rows, s.tokens, s.perturbed, s.oov, s.changed) == (2, 1, 5, 4, 1, 3)
    assert s.substitution_rate == pytest.approx(0.75)
    # perturbed tokens per valid row: row 0 has 2, row 2 has 2
    assert s.perturbed_per_row[0].tolist() == [2] and s.perturbed_per_row[1].tolist() == [2]
    originals, substitutes, counts = s.frequent_pairs(1)
    assert list(zip(originals, substitutes, counts)) == [(2, 5, 1), (3, 4, 2)]
    assert s.frequent_pairs(2)[2].tolist() == [2]
    words, seen, changed = s.word_rates(1)
    assert words.tolist() == [1, 2, 3] and seen.tolist() == [1, 1, 2] and changed.tolist() == [0, 1, 2]


def test_merge_equals_one_big_batch():
    rng = np.random.default_rng(0)
    original = rng.integers(-1, 10, 1000)
    perturbed = np.where(rng.random(1000) < 0.5, original, rng.integers(0, 10, 1000))
    perturbed[original < 0] = -1
    rows = np.sort(rng.integers(0, 100, 1000))
    valid = np.ones(100, bool)
    whole = batch(original, perturbed, rows, valid)
    first = batch(original[rows < 50], perturbed[rows < 50], rows[rows < 50], valid[:50])
    second = batch(original[rows >= 50], perturbed[rows >= 50], rows[rows >= 50] - 50, valid[50:])
    merged = first.merge(second)
    for name in ("rows", "tokens", "perturbed", "oov", "changed"):
        assert getattr(merged, name) == getattr(whole, name)
    for name in ("perturbed_per_row", "words_seen", "words_changed", "pairs"):
        for a, b in zip(getattr(merged, name), getattr(whole, name)):
            np.testing.assert_array_equal(a, b)


def test_row_epsilon_quantiles_are_exact():
    # 100 rows: 98 with 1 perturbed token, one with 5, one with 40
    per_row = [1] * 98 + [5, 40]
    rows = np.repeat(np.arange(100), per_row)
    s = batch(np.zeros(len(rows), int), np.zeros(len(rows), int), rows, [True] * 100)
    r = s.row_epsilon(2.0)
    assert r["p50"] == 2.0 and r["p99"] == 10.0 and r["max"] == 80.0
    assert r["mean"] == pytest.approx(2.0 * sum(per_row) / 100)
    assert ColumnStatistics(10).row_epsilon(1.0)["max"] == 0.0


def test_merge_counts_and_vocabulary_check():
    keys, counts = merge_counts((np.array([1, 3]), np.array([2, 2])), (np.array([3, 4]), np.array([1, 7])))
    assert keys.tolist() == [1, 3, 4] and counts.tolist() == [2, 3, 7]
    with pytest.raises(ValueError):
        ColumnStatistics(10).merge(ColumnStatistics(11))


def test_unprotected_and_entity_counts_add_up_in_build_and_merge():
    def counted(unprotected, entities):
        return statistics_of(
            valid_rows=np.ones(1, bool),
            token_offsets=np.array([0, 2]),
            original_ids=np.array([1, -1]),
            perturbed_ids=np.array([1, -1]),
            unprotected=unprotected,
            entities=entities,
        )

    first, second = counted(1, {"num": 2, "url": 1}), counted(0, {"num": 1, "phone": 3})
    merged = first.merge(second)
    assert (merged.oov, merged.unprotected) == (2, 1)
    assert merged.entities == {"num": 3, "url": 1, "phone": 3}
    builder = StatisticsBuilder(10)
    for unprotected, entities in ((1, {"num": 2, "url": 1}), (0, {"num": 1, "phone": 3}), (0, None)):
        builder.add_batch(valid_rows=np.ones(1, bool), token_offsets=np.array([0, 2]), original_ids=np.array([1, -1]),
                          perturbed_ids=np.array([1, -1]), unprotected=unprotected, entities=entities)
    built = builder.build()
    assert (built.unprotected, built.entities) == (1, {"num": 3, "url": 1, "phone": 3})
    empty = ColumnStatistics(10)
    assert (empty.unprotected, empty.entities) == (0, {})
    assert empty.merge(first).entities == first.entities


def test_counts_kept_aside_are_the_same_compacted_often_or_once(monkeypatch):
    rng = np.random.default_rng(1)
    batches = []
    for _ in range(7):
        original = rng.integers(-1, 10, 300)
        perturbed = np.where(rng.random(300) < 0.5, original, rng.integers(0, 10, 300))
        perturbed[original < 0] = -1
        batches.append((original, perturbed, np.searchsorted(np.sort(rng.integers(0, 30, 300)), np.arange(31))))

    def built(compact_at):
        monkeypatch.setattr(StatisticsBuilder, "COMPACT_AT", compact_at)
        builder = StatisticsBuilder(10)
        for original, perturbed, offsets in batches:
            builder.add_batch(valid_rows=np.ones(30, bool), token_offsets=offsets, original_ids=original,
                              perturbed_ids=perturbed)
        return builder.build()

    often, once = built(100), built(10**9)
    for name in ("tokens", "perturbed", "changed", "words_seen", "words_changed", "pairs", "perturbed_per_row"):
        for a, b in zip(np.atleast_1d(getattr(often, name)), np.atleast_1d(getattr(once, name))):
            np.testing.assert_array_equal(a, b)
