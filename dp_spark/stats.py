"""Privacy and substitution statistics of a run, built batch by batch.

Counts are kept as sparse (key, count) arrays so that partial statistics from
many tasks merge with a few vectorised operations, and so that the driver
holds one entry per distinct word or (original, substitute) pair, not per token.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def _empty() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(0, np.int64), np.zeros(0, np.int64)


def count_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct keys and how often each occurs."""
    distinct, counts = np.unique(np.asarray(keys, dtype=np.int64), return_counts=True)
    return distinct, counts.astype(np.int64)


def merge_counts(*parts: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Sum sparse counts over the union of their keys."""
    keys = np.concatenate([p[0] for p in parts])
    counts = np.concatenate([p[1] for p in parts])
    if len(keys) == 0:
        return _empty()
    distinct, inverse = np.unique(keys, return_inverse=True)
    return distinct, np.bincount(inverse, weights=counts, minlength=len(distinct)).astype(np.int64)


@dataclass
class ColumnStatistics:
    """What one column's perturbation did, over any set of rows.

    Tokens are words (strings) or letter/digit-bearing tokens (token arrays);
    ``perturbed`` are those in the vocabulary, ``oov`` those outside it
    (passed through, dropped or replaced per the OOV policy: unprotected),
    ``changed`` the perturbed ones whose output differs from the input.
    """

    vocab_size: int
    rows: int = 0
    null_rows: int = 0
    tokens: int = 0
    perturbed: int = 0
    oov: int = 0
    changed: int = 0
    skipped: int = 0
    perturbed_per_row: tuple[np.ndarray, np.ndarray] = field(default_factory=_empty)
    words_seen: tuple[np.ndarray, np.ndarray] = field(default_factory=_empty)
    words_changed: tuple[np.ndarray, np.ndarray] = field(default_factory=_empty)
    pairs: tuple[np.ndarray, np.ndarray] = field(default_factory=_empty)

    @classmethod
    def of_batch(
        cls,
        vocab_size: int,
        *,
        valid_rows: np.ndarray,
        token_rows: np.ndarray,
        original_ids: np.ndarray,
        perturbed_ids: np.ndarray,
        skipped: int = 0,
    ) -> "ColumnStatistics":
        """Statistics of one batch: ``token_rows[i]`` is the row of token i,
        ``original_ids``/``perturbed_ids`` its ids (-1 outside the vocabulary)."""
        builder = StatisticsBuilder(vocab_size)
        builder.add_batch(
            valid_rows=valid_rows,
            token_rows=token_rows,
            original_ids=original_ids,
            perturbed_ids=perturbed_ids,
            skipped=skipped,
        )
        return builder.build()

    def merge(self, other: "ColumnStatistics") -> "ColumnStatistics":
        if other.vocab_size != self.vocab_size:
            raise ValueError("cannot merge statistics over different vocabularies")
        return ColumnStatistics(
            vocab_size=self.vocab_size,
            rows=self.rows + other.rows,
            null_rows=self.null_rows + other.null_rows,
            tokens=self.tokens + other.tokens,
            perturbed=self.perturbed + other.perturbed,
            oov=self.oov + other.oov,
            changed=self.changed + other.changed,
            skipped=self.skipped + other.skipped,
            perturbed_per_row=merge_counts(self.perturbed_per_row, other.perturbed_per_row),
            words_seen=merge_counts(self.words_seen, other.words_seen),
            words_changed=merge_counts(self.words_changed, other.words_changed),
            pairs=merge_counts(self.pairs, other.pairs),
        )

    @property
    def substitution_rate(self) -> float:
        """Changed tokens over perturbed (in-vocabulary) tokens."""
        return self.changed / self.perturbed if self.perturbed else 0.0

    def row_epsilon(self, epsilon: float) -> dict[str, float]:
        """Per-row privacy spent, epsilon x perturbed tokens in the row, over
        the non-null rows: mean, p50, p99 (lower quantiles, exact) and max."""
        values, rows = self.perturbed_per_row
        if rows.sum() == 0:
            return {"mean": 0.0, "p50": 0.0, "p99": 0.0, "max": 0.0}
        cumulative = np.cumsum(rows) / rows.sum()
        quantile = lambda q: float(values[np.searchsorted(cumulative, q - 1e-12)])  # noqa: E731
        return {
            "mean": epsilon * float((values * rows).sum() / rows.sum()),
            "p50": epsilon * quantile(0.5),
            "p99": epsilon * quantile(0.99),
            "max": epsilon * float(values.max()),
        }

    def frequent_pairs(self, min_count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(original ids, substitute ids, counts) of pairs seen >= min_count times."""
        codes, counts = self.pairs
        keep = counts >= min_count
        return codes[keep] // self.vocab_size, codes[keep] % self.vocab_size, counts[keep]

    def word_rates(self, min_count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(word ids, times seen, times changed) of words seen >= min_count times."""
        words, seen = self.words_seen
        changed_words, changed = self.words_changed
        changed_of_word = np.zeros(len(words), np.int64)
        changed_of_word[np.searchsorted(words, changed_words)] = changed
        keep = seen >= min_count
        return words[keep], seen[keep], changed_of_word[keep]


class StatisticsBuilder:
    """Accumulates batches cheaply (dense counters, pair codes kept aside) and
    sorts once in ``build``: per batch only bincounts, no sorting or merging."""

    # Pair codes are compacted into counts when this many are pending.
    COMPACT_AT = 4_000_000

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self.counters = dict(rows=0, null_rows=0, tokens=0, perturbed=0, oov=0, changed=0, skipped=0)
        self.per_row = np.zeros(1, np.int64)
        self.seen = np.zeros(vocab_size, np.int64)
        self.changed_words = np.zeros(vocab_size, np.int64)
        self._pending_pairs: list[np.ndarray] = []
        self._pending = 0
        self._pairs = _empty()

    def add_batch(
        self,
        *,
        valid_rows: np.ndarray,
        token_rows: np.ndarray,
        original_ids: np.ndarray,
        perturbed_ids: np.ndarray,
        skipped: int = 0,
    ) -> None:
        in_vocabulary = original_ids >= 0
        changed = in_vocabulary & (perturbed_ids != original_ids)
        counters = self.counters
        counters["rows"] += int(valid_rows.sum())
        counters["null_rows"] += int(len(valid_rows) - valid_rows.sum())
        counters["tokens"] += len(original_ids)
        counters["perturbed"] += int(in_vocabulary.sum())
        counters["oov"] += int(len(original_ids) - in_vocabulary.sum())
        counters["changed"] += int(changed.sum())
        counters["skipped"] += skipped
        per_row = np.bincount(token_rows[in_vocabulary], minlength=len(valid_rows))[valid_rows]
        row_counts = np.bincount(per_row)
        if len(row_counts) > len(self.per_row):
            row_counts[: len(self.per_row)] += self.per_row
            self.per_row = row_counts
        else:
            self.per_row[: len(row_counts)] += row_counts
        self.seen += np.bincount(original_ids[in_vocabulary], minlength=self.vocab_size)
        originals = original_ids[changed]
        self.changed_words += np.bincount(originals, minlength=self.vocab_size)
        self._pending_pairs.append(originals * self.vocab_size + perturbed_ids[changed])
        self._pending += len(originals)
        if self._pending >= self.COMPACT_AT:
            self._compact()

    def _compact(self) -> None:
        codes = np.concatenate(self._pending_pairs) if self._pending_pairs else np.zeros(0, np.int64)
        self._pairs = merge_counts(self._pairs, count_keys(codes))
        self._pending_pairs, self._pending = [], 0

    def build(self) -> ColumnStatistics:
        self._compact()
        occupied = np.flatnonzero(self.per_row)
        seen = np.flatnonzero(self.seen)
        changed = np.flatnonzero(self.changed_words)
        return ColumnStatistics(
            vocab_size=self.vocab_size,
            **self.counters,
            perturbed_per_row=(occupied, self.per_row[occupied]),
            words_seen=(seen, self.seen[seen]),
            words_changed=(changed, self.changed_words[changed]),
            pairs=self._pairs,
        )
