"""Perturbing one text column of one Arrow batch: tokens to ids, mechanism,
ids back to strings with the same row structure, and the batch's statistics.

Pure pyarrow and numpy, so the Spark UDFs stay thin and this is tested
without Spark.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dp_spark.mechanisms.base import DEFAULT_PLACEHOLDER, OOV_POLICIES, Mechanism, choice
from dp_spark.randomness import TokenRandom
from dp_spark.stats import StatisticsBuilder
from dp_spark.tokenize import Vocabulary, has_word_character, match_case, segment

INPUT_KINDS = ("string", "tokens")

# Gets the random source for a batch, given how many tokens each row has.
RandomFactory = Callable[[np.ndarray], TokenRandom]


@dataclass(frozen=True)
class ColumnPerturbation:
    """How one column is perturbed: ``kind`` ``string`` (tokenised, then
    joined back) or ``tokens`` (array<string>); ``oov`` policy for tokens
    outside the vocabulary: ``keep``, ``drop`` or ``replace`` by ``placeholder``."""

    mechanism: Mechanism
    vocabulary: Vocabulary
    kind: str
    oov: str = "keep"
    placeholder: str = DEFAULT_PLACEHOLDER

    def __post_init__(self) -> None:
        choice("kind", self.kind, INPUT_KINDS)
        choice("oov", self.oov, OOV_POLICIES)

    def apply(self, column: pa.Array, random_for: RandomFactory, statistics: StatisticsBuilder) -> pa.Array:
        """The perturbed column; the batch's statistics are added to ``statistics``."""
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        if self.kind == "string":
            return self._apply_to_strings(column, random_for, statistics)
        return self._apply_to_token_lists(column, random_for, statistics)

    def _replacements(
        self, words: pa.Array, ids: np.ndarray, new_ids: np.ndarray, base: int
    ) -> tuple[list[pa.Array], np.ndarray]:
        """Strings to append to a pool of ``base`` strings, and for each word
        the pool index of its output (-1: the word stays as written).
        Dropped OOV words point at an empty string."""
        changed = np.flatnonzero((ids >= 0) & (new_ids != ids))
        pieces = [
            match_case(words.take(pa.array(changed)), self.vocabulary.strings(new_ids[changed])).cast(pa.string())
        ]
        where = np.full(len(words), -1, dtype=np.int64)
        where[changed] = base + np.arange(len(changed))
        if self.oov != "keep":
            filler = self.placeholder if self.oov == "replace" else ""
            pieces.append(pa.array([filler], pa.string()))
            where[ids < 0] = base + len(changed)
        return pieces, where

    @staticmethod
    def _assemble(pool: list[pa.Array], positions: np.ndarray, where: np.ndarray) -> pa.Array:
        """The pool's first array with the strings at ``positions`` replaced
        by the pool entries ``where`` points to (one take over the pool)."""
        source = np.arange(len(pool[0]), dtype=np.int64)
        replaced = where >= 0
        source[positions[replaced]] = where[replaced]
        if not replaced.any():
            return pool[0]
        return pa.concat_arrays(pool).take(pa.array(source))

    def _apply_to_strings(
        self, column: pa.Array, random_for: RandomFactory, statistics: StatisticsBuilder
    ) -> pa.Array:
        segments = segment(column)
        rows = len(column)
        segment_rows = np.repeat(np.arange(rows), np.diff(segments.row_offsets))
        word_positions = np.flatnonzero(segments.is_word)
        words = segments.values.take(pa.array(word_positions))
        token_rows = segment_rows[word_positions]
        ids = self.vocabulary.ids(words)
        new_ids = self.mechanism.perturb(ids, random_for(np.bincount(token_rows, minlength=rows)))
        values = segments.values.cast(pa.string())
        pieces, where = self._replacements(words, ids, new_ids, len(values))
        out_segments = self._assemble([values, *pieces], word_positions, where)
        joined = pc.binary_join(
            pa.ListArray.from_arrays(pa.array(segments.row_offsets, pa.int32()), out_segments), ""
        )
        if not segments.valid.all():
            joined = pc.if_else(pa.array(segments.valid), joined, pa.scalar(None, pa.string()))
        statistics.add_batch(
            valid_rows=segments.valid, token_rows=token_rows, original_ids=ids, perturbed_ids=new_ids
        )
        return joined.cast(column.type)

    def _apply_to_token_lists(
        self, column: pa.Array, random_for: RandomFactory, statistics: StatisticsBuilder
    ) -> pa.Array:
        rows = len(column)
        valid = ~np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy().astype(np.int64)
        tokens = column.flatten().cast(pa.string())
        token_rows = np.repeat(np.arange(rows), lengths)
        ids = self.vocabulary.ids(pc.fill_null(tokens, ""))
        # Vocabulary entries are words; of the rest, tokens without a letter
        # or digit (punctuation, nulls) are skipped, the others are OOV words.
        word = ids >= 0
        outside = np.flatnonzero(~word)
        word[outside] = has_word_character(tokens.take(pa.array(outside)))
        word_positions = np.flatnonzero(word)
        words = tokens.take(pa.array(word_positions)) if len(outside) else tokens
        word_ids = ids[word_positions] if len(outside) else ids
        random = random_for(np.bincount(token_rows[word_positions], minlength=rows))
        new_ids = self.mechanism.perturb(word_ids, random)
        pieces, where = self._replacements(words, word_ids, new_ids, len(tokens))
        out_tokens = self._assemble([tokens, *pieces], word_positions, where)
        if self.oov == "drop" and (word_ids < 0).any():
            keep_token = np.ones(len(tokens), dtype=bool)
            keep_token[word_positions[word_ids < 0]] = False
            out_tokens = out_tokens.filter(pa.array(keep_token))
            lengths = np.bincount(token_rows[keep_token], minlength=rows)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        out = pa.ListArray.from_arrays(
            pa.array(offsets), out_tokens, mask=pa.array(~valid) if not valid.all() else None
        )
        statistics.add_batch(
            valid_rows=valid,
            token_rows=token_rows[word_positions],
            original_ids=word_ids,
            perturbed_ids=new_ids,
            skipped=len(tokens) - len(word_positions),
        )
        return out.cast(column.type)
