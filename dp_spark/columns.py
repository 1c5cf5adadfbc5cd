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
from dp_spark.tokenize import (
    ENTITY_PLACEHOLDERS,
    ENTITY_TYPES,
    Vocabulary,
    entity_types,
    has_word_character,
    match_case,
    segment,
)

INPUT_KINDS = ("string", "tokens")
ENTITY_POLICIES = ("replace", "keep")

# Gets the random source for a batch, given how many tokens each row has.
RandomFactory = Callable[[np.ndarray], TokenRandom]


@dataclass(frozen=True)
class ColumnPerturbation:
    """How one column is perturbed: ``kind`` ``string`` (tokenised, then
    joined back) or ``tokens`` (array<string>); ``oov`` policy for tokens
    outside the vocabulary: ``keep``, ``drop`` or ``replace`` by ``placeholder``;
    ``entities``: ``replace`` urls, emails, phone numbers and numbers (whole
    spans, or whole tokens, matched by ``dp_spark.tokenize.ENTITY_PATTERNS``)
    by ``<url>``, ``<email>``, ``<phone>``, ``<num>``, or ``keep`` them on the
    word path (numbers in the vocabulary perturbed, the rest per ``oov``)."""

    mechanism: Mechanism
    vocabulary: Vocabulary
    kind: str
    oov: str = "keep"
    placeholder: str = DEFAULT_PLACEHOLDER
    entities: str = "replace"

    def __post_init__(self) -> None:
        choice("kind", self.kind, INPUT_KINDS)
        choice("oov", self.oov, OOV_POLICIES)
        choice("entities", self.entities, ENTITY_POLICIES)

    def apply(self, column: pa.Array, random_for: RandomFactory, statistics: StatisticsBuilder) -> pa.Array:
        """The perturbed column; the batch's statistics are added to ``statistics``."""
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        if self.kind == "string":
            return self._apply_to_strings(column, random_for, statistics)
        return self._apply_to_token_lists(column, random_for, statistics)

    def _replacements(
        self, words: pa.Array, ids: np.ndarray, new_ids: np.ndarray, clitic: np.ndarray, base: int
    ) -> tuple[list[pa.Array], np.ndarray]:
        """Strings to append to a pool of ``base`` strings, and for each word
        the pool index of its output (-1: the word stays as written).
        Dropped OOV words point at an empty string. A clitic (``clitic``)
        whose output is not a clitic is written after a space, so that it
        never glues to its stem ("Bush's" -> "Bush the", not "Bushthe")."""
        changed = np.flatnonzero((ids >= 0) & (new_ids != ids))
        substitutes = match_case(
            words.take(pa.array(changed)), self.vocabulary.strings(new_ids[changed])
        ).cast(pa.string())
        pieces = [substitutes]
        where = np.full(len(words), -1, dtype=np.int64)
        where[changed] = base + np.arange(len(changed))
        apart = np.flatnonzero(clitic[changed] & ~self.vocabulary.clitics[new_ids[changed]])
        if len(apart):
            pieces.append(_after_space(substitutes.take(pa.array(apart))))
            where[changed[apart]] = base + len(changed) + np.arange(len(apart))
        offset = base + sum(len(piece) for piece in pieces)
        outside = ids < 0
        if self.oov == "replace":
            pieces.append(pa.array([self.placeholder, " " + self.placeholder], pa.string()))
            where[outside] = offset + clitic[outside]
        elif self.oov == "drop":
            pieces.append(pa.array([""], pa.string()))
            where[outside] = offset
        return pieces, where

    def _unprotected(self, ids: np.ndarray) -> int:
        """Tokens written out as they came although the mechanism never saw them."""
        return int((ids < 0).sum()) if self.oov == "keep" else 0

    @staticmethod
    def _assemble(
        values: pa.Array,
        pieces: list[pa.Array],
        word_positions: np.ndarray,
        where: np.ndarray,
        entity_positions: np.ndarray,
        entity_kinds: np.ndarray,
    ) -> pa.Array:
        """``values`` with the words at ``word_positions`` replaced by the
        entries of the pool ``values`` + ``pieces`` that ``where`` points to
        (-1: kept), and the entities at ``entity_positions`` by the
        placeholders of their types: one take over the pool."""
        pool = [values, *pieces, _ENTITY_PLACEHOLDERS]
        placeholders_at = sum(len(array) for array in pool[:-1])
        positions = np.concatenate([word_positions, entity_positions])
        targets = np.concatenate([where, placeholders_at + entity_kinds.astype(np.int64)])
        replaced = targets >= 0
        if not replaced.any():
            return values
        source = np.arange(len(values), dtype=np.int64)
        source[positions[replaced]] = targets[replaced]
        return pa.concat_arrays(pool).take(pa.array(source))

    def _apply_to_strings(
        self, column: pa.Array, random_for: RandomFactory, statistics: StatisticsBuilder
    ) -> pa.Array:
        segments = segment(column, entities=self.entities == "replace")
        rows = len(column)
        segment_rows = np.repeat(np.arange(rows), np.diff(segments.row_offsets))
        word_positions = np.flatnonzero(segments.is_word)
        words = segments.values.take(pa.array(word_positions))
        token_rows = segment_rows[word_positions]
        ids = self.vocabulary.ids(words)
        new_ids = self.mechanism.perturb(ids, random_for(np.bincount(token_rows, minlength=rows)))
        values = segments.values.cast(pa.string())
        pieces, where = self._replacements(words, ids, new_ids, segments.is_clitic[word_positions], len(values))
        entity_positions = np.flatnonzero(segments.entity >= 0)
        kinds = segments.entity[entity_positions]
        out_segments = self._assemble(values, pieces, word_positions, where, entity_positions, kinds)
        joined = pc.binary_join(
            pa.ListArray.from_arrays(pa.array(segments.row_offsets, pa.int32()), out_segments), ""
        )
        if not segments.valid.all():
            joined = pc.if_else(pa.array(segments.valid), joined, pa.scalar(None, pa.string()))
        statistics.add_batch(
            valid_rows=segments.valid,
            token_rows=token_rows,
            original_ids=ids,
            perturbed_ids=new_ids,
            unprotected=self._unprotected(ids),
            entities=_entity_counts(kinds),
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
        kinds = entity_types(tokens) if self.entities == "replace" else np.full(len(tokens), -1, np.int8)
        entity = kinds >= 0
        # Vocabulary entries are words unless they are entities; of the rest,
        # tokens without a letter or digit (punctuation, nulls) are skipped,
        # the others are OOV words.
        word = (ids >= 0) & ~entity
        outside = np.flatnonzero(~word & ~entity)
        word[outside] = has_word_character(tokens.take(pa.array(outside)))
        word_positions = np.flatnonzero(word)
        every_token = len(word_positions) == len(tokens)
        words = tokens if every_token else tokens.take(pa.array(word_positions))
        word_ids = ids if every_token else ids[word_positions]
        random = random_for(np.bincount(token_rows[word_positions], minlength=rows))
        new_ids = self.mechanism.perturb(word_ids, random)
        pieces, where = self._replacements(words, word_ids, new_ids, np.zeros(len(words), bool), len(tokens))
        entity_positions = np.flatnonzero(entity)
        out_tokens = self._assemble(tokens, pieces, word_positions, where, entity_positions, kinds[entity_positions])
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
            skipped=len(tokens) - len(word_positions) - len(entity_positions),
            unprotected=self._unprotected(word_ids),
            entities=_entity_counts(kinds[entity_positions]),
        )
        return out.cast(column.type)


_ENTITY_PLACEHOLDERS = pa.array([ENTITY_PLACEHOLDERS[name] for name in ENTITY_TYPES], pa.string())


def _entity_counts(kinds: np.ndarray) -> dict[str, int]:
    """Entities replaced, per type, from their indices in ``ENTITY_TYPES``."""
    return dict(zip(ENTITY_TYPES, np.bincount(kinds, minlength=len(ENTITY_TYPES)).tolist()))


def _after_space(strings: pa.Array) -> pa.Array:
    return pc.utf8_replace_slice(strings, start=0, stop=0, replacement=" ")
