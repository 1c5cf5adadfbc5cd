"""Privacy and substitution statistics of a run, built batch by batch.

Counts are kept as sparse (key, count) arrays so that partial statistics from
many tasks merge with a few vectorised operations, and so that the driver
holds one entry per distinct word or (original, substitute) pair, not per token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Mapping

import numpy as np

if TYPE_CHECKING:
    from dp_spark.mechanisms.base import Mechanism


def _empty() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(0, np.int64), np.zeros(0, np.int64)


def count_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct keys and how often each occurs."""
    distinct, counts = np.unique(np.asarray(keys, dtype=np.int64), return_counts=True)
    return distinct, counts.astype(np.int64)


def add_named_counts(first: Mapping[str, int], second: Mapping[str, int]) -> dict[str, int]:
    """Sum counts by name over the union of the names."""
    return {name: first.get(name, 0) + second.get(name, 0) for name in {**first, **second}}


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
    (passed through, dropped or replaced per the OOV policy: never
    perturbed), ``unprotected`` the OOV tokens passed through as written
    (policy ``keep``: released without any protection; the other
    ``oov - unprotected`` were dropped or replaced), ``changed`` the
    perturbed ones whose output differs from the input. ``entities``: spans
    (or tokens) replaced by an entity placeholder, per entity type ("url",
    "email", "phone", "num"); they are not tokens.
    """

    vocab_size: int
    rows: int = 0
    null_rows: int = 0
    tokens: int = 0
    perturbed: int = 0
    oov: int = 0
    changed: int = 0
    skipped: int = 0
    unprotected: int = 0
    entities: dict[str, int] = field(default_factory=dict)
    perturbed_per_row: tuple[np.ndarray, np.ndarray] = field(default_factory=_empty)
    words_seen: tuple[np.ndarray, np.ndarray] = field(default_factory=_empty)
    words_changed: tuple[np.ndarray, np.ndarray] = field(default_factory=_empty)
    pairs: tuple[np.ndarray, np.ndarray] = field(default_factory=_empty)

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
            unprotected=self.unprotected + other.unprotected,
            entities=add_named_counts(self.entities, other.entities),
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
    """Accumulates batches cheaply and counts in ``build``: per batch only
    the counters and a few bincounts over the batch; the ids seen and the
    (original, substitute) pair codes are kept aside and counted when
    ``COMPACT_AT`` tokens are pending (a vocabulary-sized bincount per batch
    would cost more than the batch at 400k words)."""

    COMPACT_AT = 1_000_000

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self.counters = dict(
            rows=0, null_rows=0, tokens=0, perturbed=0, oov=0, changed=0, skipped=0, unprotected=0
        )
        self.entities: dict[str, int] = {}
        self.per_row = np.zeros(1, np.int64)
        self.seen = np.zeros(vocab_size, np.int64)
        self.changed_words = np.zeros(vocab_size, np.int64)
        self._pending_seen: list[np.ndarray] = []
        self._pending_pairs: list[np.ndarray] = []
        self._pending = 0
        self._pairs = _empty()

    def add_batch(
        self,
        *,
        valid_rows: np.ndarray,
        token_offsets: np.ndarray,
        original_ids: np.ndarray,
        perturbed_ids: np.ndarray,
        skipped: int = 0,
        unprotected: int = 0,
        entities: Mapping[str, int] | None = None,
    ) -> None:
        """Count one batch (row r holds tokens [token_offsets[r],
        token_offsets[r + 1])): ``skipped`` tokens that are not words,
        ``unprotected`` OOV tokens passed through as written, ``entities``
        replaced per type (see ``ColumnStatistics``)."""
        in_vocabulary = original_ids >= 0
        changed = in_vocabulary & (perturbed_ids != original_ids)
        perturbed = int(in_vocabulary.sum())
        counters = self.counters
        rows = int(valid_rows.sum())
        counters["rows"] += rows
        counters["null_rows"] += len(valid_rows) - rows
        counters["tokens"] += len(original_ids)
        counters["perturbed"] += perturbed
        counters["oov"] += len(original_ids) - perturbed
        counters["skipped"] += skipped
        counters["unprotected"] += unprotected
        if entities:
            self.entities = add_named_counts(self.entities, entities)
        in_vocabulary_before = np.concatenate([[0], np.cumsum(in_vocabulary)])
        per_row = np.diff(in_vocabulary_before[token_offsets])[valid_rows]
        row_counts = np.bincount(per_row)
        if len(row_counts) > len(self.per_row):
            row_counts[: len(self.per_row)] += self.per_row
            self.per_row = row_counts
        else:
            self.per_row[: len(row_counts)] += row_counts
        self._pending_seen.append(original_ids[in_vocabulary] if perturbed < len(original_ids) else original_ids)
        changed_rows = np.flatnonzero(changed)
        counters["changed"] += len(changed_rows)
        originals = original_ids[changed_rows]
        self._pending_pairs.append(originals * self.vocab_size + perturbed_ids[changed_rows])
        self._pending += len(original_ids)
        if self._pending >= self.COMPACT_AT:
            self._compact()

    def _compact(self) -> None:
        if self._pending_seen:
            self.seen += np.bincount(np.concatenate(self._pending_seen), minlength=self.vocab_size)
        codes = np.concatenate(self._pending_pairs) if self._pending_pairs else np.zeros(0, np.int64)
        self.changed_words += np.bincount(codes // self.vocab_size, minlength=self.vocab_size)
        self._pairs = merge_counts(self._pairs, count_keys(codes))
        self._pending_seen, self._pending_pairs, self._pending = [], [], 0

    def build(self) -> ColumnStatistics:
        self._compact()
        occupied = np.flatnonzero(self.per_row)
        seen = np.flatnonzero(self.seen)
        changed = np.flatnonzero(self.changed_words)
        return ColumnStatistics(
            vocab_size=self.vocab_size,
            **self.counters,
            entities=dict(self.entities),
            perturbed_per_row=(occupied, self.per_row[occupied]),
            words_seen=(seen, self.seen[seen]),
            words_changed=(changed, self.changed_words[changed]),
            pairs=self._pairs,
        )


# ---------------------------------------------------------------------------
# Plausible deniability over the vocabulary (calibration): N_w and S_w.

QUANTILES = (5, 25, 50, 75, 95)
# Bands of frequency rank (GloVe ids are frequency ranks): [start, stop).
FREQUENCY_BANDS = (("frequent", 0, 1_000), ("mid", 1_000, 10_000), ("rare", 10_000, None))


def plausible_deniability(
    mechanism: Mechanism,
    word_ids: np.ndarray,
    draws: int,
    *,
    seed: int = 0,
    batch_tokens: int = 200_000,
) -> tuple[np.ndarray, np.ndarray]:
    """N_w (fraction of ``draws`` draws of M(w) equal to w) and S_w (distinct
    outputs among them) for each word.

    Draw j of word w uses the noise keyed by (seed, w, j), whatever the
    mechanism's epsilon: sweeps over epsilon use common random numbers, so
    the curves are smooth and, for mlap, N_w is monotone in epsilon draw by
    draw (the noisy point moves along a fixed ray into w's convex Voronoi cell).
    """
    from dp_spark.randomness import KeyedRandom, mix64, token_keys

    word_ids = np.asarray(word_ids, dtype=np.int64)
    survival = np.empty(len(word_ids))
    support = np.empty(len(word_ids), dtype=np.int64)
    per_chunk = max(1, batch_tokens // draws)
    for start in range(0, len(word_ids), per_chunk):
        words = word_ids[start : start + per_chunk]
        row_keys = mix64(words.astype(np.uint64) ^ mix64(np.uint64(seed)))
        keys = token_keys(row_keys, np.full(len(words), draws))
        out = mechanism.perturb(np.repeat(words, draws), KeyedRandom(keys)).reshape(len(words), draws)
        survival[start : start + len(words)] = (out == words[:, None]).mean(axis=1)
        ordered = np.sort(out, axis=1)
        support[start : start + len(words)] = 1 + (np.diff(ordered, axis=1) != 0).sum(axis=1)
    return survival, support


def summarize(values: np.ndarray) -> dict[str, float]:
    """Mean and the QUANTILES of a statistic over words."""
    values = np.asarray(values, dtype=float)
    summary = {"mean": float(values.mean()) if len(values) else float("nan")}
    for q in QUANTILES:
        summary[f"p{q}"] = float(np.percentile(values, q)) if len(values) else float("nan")
    return summary


def frequency_band(word_ids: np.ndarray) -> np.ndarray:
    """Band name of each word id (ids are frequency ranks)."""
    word_ids = np.asarray(word_ids)
    bands = np.empty(len(word_ids), dtype=object)
    for name, start, stop in FREQUENCY_BANDS:
        bands[(word_ids >= start) & (word_ids < (stop if stop is not None else np.inf))] = name
    return bands


def stratified_sample(vocab_size: int, size: int, seed: int = 0) -> np.ndarray:
    """``size`` word ids, as evenly as possible from each frequency band
    present, without replacement, sorted."""
    rng = np.random.default_rng(seed)
    bands = [(start, min(stop or vocab_size, vocab_size)) for _, start, stop in FREQUENCY_BANDS
             if start < vocab_size]
    chosen = []
    remaining = size
    for i, (start, stop) in enumerate(bands):
        share = min(stop - start, remaining // (len(bands) - i))
        chosen.append(rng.choice(np.arange(start, stop), size=share, replace=False))
        remaining -= share
    return np.sort(np.concatenate(chosen))


def bisect_epsilon(
    median_survival: Callable[[float], float],
    target: float,
    low: float,
    high: float,
    *,
    relative_tolerance: float = 0.01,
    max_steps: int = 40,
) -> float | None:
    """The epsilon in [low, high] where ``median_survival`` crosses ``target``
    (it rises with epsilon), by bisection on log epsilon; None if the target
    is outside the values at the ends."""
    at_low, at_high = median_survival(low), median_survival(high)
    if not at_low <= target <= at_high:
        return None
    for _ in range(max_steps):
        if high / low - 1 <= relative_tolerance:
            break
        middle = float(np.sqrt(low * high))
        if median_survival(middle) < target:
            low = middle
        else:
            high = middle
    return float(np.sqrt(low * high))
