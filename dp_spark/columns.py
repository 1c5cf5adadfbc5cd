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
    might_be_cased,
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

    def _word_targets(
        self, pool: "_Pool", tokens: pa.Array, positions: np.ndarray, ids: np.ndarray, new_ids: np.ndarray,
        clitic: np.ndarray,
    ) -> np.ndarray:
        """For each word (``tokens[positions]``) the pool index of its
        output, -1 where it stays as written; the replacements go into
        ``pool``. Substitutes are the vocabulary's own strings, recased like
        the words they replace (only words with an uppercase or non-ASCII
        letter are looked at); dropped OOV words point at an empty string.
        A clitic (``clitic``) whose output is not a clitic is written after
        a space, so that it never glues to its stem ("Bush's" -> "Bush the",
        not "Bushthe")."""
        where = np.full(len(ids), -1, dtype=np.int64)
        changed = np.flatnonzero((ids >= 0) & (new_ids != ids))
        if len(changed):
            where[changed] = pool.add(self.vocabulary.words) + new_ids[changed]
            cased = changed[might_be_cased(tokens, positions[changed])]
            if len(cased):
                where[cased] = pool.add(self._recased(tokens, positions[cased], new_ids[cased])) + np.arange(len(cased))
            apart = changed[clitic[changed] & ~self.vocabulary.clitics[new_ids[changed]]]
            if len(apart):
                substitutes = _after_space(self._recased(tokens, positions[apart], new_ids[apart]))
                where[apart] = pool.add(substitutes) + np.arange(len(apart))
        outside = ids < 0
        if self.oov == "replace" and outside.any():
            placeholders = pa.array([self.placeholder, " " + self.placeholder], pa.string())
            where[outside] = pool.add(placeholders) + clitic[outside]
        elif self.oov == "drop" and outside.any():
            where[outside] = pool.add(pa.array([""], pa.string()))
        return where

    def _recased(self, tokens: pa.Array, positions: np.ndarray, new_ids: np.ndarray) -> pa.Array:
        return match_case(tokens.take(pa.array(positions)), self.vocabulary.strings(new_ids))

    def _unprotected(self, ids: np.ndarray) -> int:
        """Tokens written out as they came although the mechanism never saw them."""
        return int((ids < 0).sum()) if self.oov == "keep" else 0

    def _apply_to_strings(
        self, column: pa.Array, random_for: RandomFactory, statistics: StatisticsBuilder
    ) -> pa.Array:
        segments = segment(column, entities=self.entities == "replace")
        word_positions = np.flatnonzero(segments.is_word)
        words_before = np.concatenate([[0], np.cumsum(segments.is_word)])
        word_offsets = words_before[segments.row_offsets]
        ids = self.vocabulary.ids(segments.values, word_positions)
        new_ids = self.mechanism.perturb(ids, random_for(np.diff(word_offsets)))
        pool = _Pool(segments.values)
        where = self._word_targets(pool, segments.values, word_positions, ids, new_ids,
                                   segments.is_clitic[word_positions])
        entity_positions = np.flatnonzero(segments.entity >= 0)
        kinds = segments.entity[entity_positions]
        replaced = np.concatenate([word_positions[where >= 0], entity_positions])
        targets = np.concatenate([where[where >= 0], _entity_targets(pool, kinds)])
        statistics.add_batch(
            valid_rows=segments.valid,
            token_offsets=word_offsets,
            original_ids=ids,
            perturbed_ids=new_ids,
            unprotected=self._unprotected(ids),
            entities=_entity_counts(kinds),
        )
        if not len(replaced):
            return column
        return pool.rewrite(segments.row_offsets, replaced, targets, segments.valid).cast(column.type)

    def _apply_to_token_lists(
        self, column: pa.Array, random_for: RandomFactory, statistics: StatisticsBuilder
    ) -> pa.Array:
        valid = ~np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy().astype(np.int64)
        list_offsets = np.concatenate([[0], np.cumsum(lengths)])
        tokens = column.flatten().cast(pa.string())
        filled = pc.fill_null(tokens, "") if tokens.null_count else tokens
        ids = self.vocabulary.ids(filled)
        kinds = entity_types(tokens) if self.entities == "replace" else np.full(len(tokens), -1, np.int8)
        entity = kinds >= 0
        # Vocabulary entries are words unless they are entities; of the rest,
        # tokens without a letter or digit (punctuation, nulls) are skipped,
        # the others are OOV words.
        word = (ids >= 0) & ~entity
        outside = np.flatnonzero(~word & ~entity)
        word[outside] = has_word_character(tokens.take(pa.array(outside)))
        word_positions = np.flatnonzero(word)
        word_offsets = np.concatenate([[0], np.cumsum(word)])[list_offsets]
        word_ids = ids[word_positions]
        new_ids = self.mechanism.perturb(word_ids, random_for(np.diff(word_offsets)))
        pool = _Pool(tokens)
        where = self._word_targets(pool, filled, word_positions, word_ids, new_ids, np.zeros(len(word_ids), bool))
        entity_positions = np.flatnonzero(entity)
        statistics.add_batch(
            valid_rows=valid,
            token_offsets=word_offsets,
            original_ids=word_ids,
            perturbed_ids=new_ids,
            skipped=len(tokens) - len(word_positions) - len(entity_positions),
            unprotected=self._unprotected(word_ids),
            entities=_entity_counts(kinds[entity_positions]),
        )
        replaced = np.concatenate([word_positions[where >= 0], entity_positions])
        if not len(replaced):
            return column
        targets = np.concatenate([where[where >= 0], _entity_targets(pool, kinds[entity_positions])])
        source = np.arange(len(tokens), dtype=np.int64)
        source[replaced] = targets
        out_tokens = pool.take(source)
        if self.oov == "drop" and (word_ids < 0).any():
            keep_token = np.ones(len(tokens), dtype=bool)
            keep_token[word_positions[word_ids < 0]] = False
            out_tokens = out_tokens.filter(pa.array(keep_token))
            list_offsets = np.concatenate([[0], np.cumsum(keep_token)])[list_offsets]
        out = pa.ListArray.from_arrays(
            pa.array(list_offsets.astype(np.int32)), out_tokens, mask=pa.array(~valid) if not valid.all() else None
        )
        return out.cast(column.type)


class _Pool:
    """The strings an output is put together from: the input's own
    strings (segments or tokens) first, then what replaces some of them;
    one take over the pool writes the output."""

    def __init__(self, strings: pa.Array) -> None:
        self.arrays = [strings]
        self.size = len(strings)

    def add(self, strings: pa.Array) -> int:
        """Append strings; returns the pool index of the first."""
        start = self.size
        self.arrays.append(strings.cast(self.arrays[0].type))
        self.size += len(strings)
        return start

    def take(self, indices: np.ndarray) -> pa.Array:
        return pa.concat_arrays(self.arrays).take(pa.array(indices))

    def rewrite(
        self, row_offsets: np.ndarray, replaced: np.ndarray, targets: np.ndarray, valid: np.ndarray
    ) -> pa.Array:
        """Rows of the input segments (row i owns segments [row_offsets[i],
        row_offsets[i + 1])) with segments ``replaced`` by the pool's
        ``targets``, joined back into strings. Unchanged segments between
        replacements are taken as one piece (a zero-copy slice of the
        input), and the rows are offsets into the one take's output: the
        text is copied once."""
        segments = self.arrays[0]
        count = len(segments)
        boundary = np.zeros(count + 1, dtype=bool)
        boundary[replaced] = True
        boundary[replaced + 1] = True
        boundary[row_offsets] = True
        first_segments = np.flatnonzero(boundary[:count])
        # The piece of every segment, and of the end (a running count: cheaper than a binary search per replacement).
        piece_of = np.cumsum(boundary, dtype=np.int64) - 1
        piece_of[count] = len(first_segments)
        segment_offsets = _offsets(segments)
        piece_offsets = np.append(segment_offsets[first_segments], segment_offsets[count])
        pieces = type(segments).from_buffers(
            len(first_segments), pa.py_buffer(piece_offsets), segments.buffers()[2]
        )
        source = np.arange(len(first_segments), dtype=np.int64)
        source[piece_of[replaced]] = targets - count + len(first_segments)
        self.arrays[0] = pieces
        self.size += len(first_segments) - count
        out = self.take(source)
        row_pieces = piece_of[row_offsets]
        offsets = _offsets(out)[row_pieces]
        validity = None if valid.all() else pa.array(valid).buffers()[1]
        return type(out).from_buffers(
            len(row_offsets) - 1, pa.py_buffer(offsets), out.buffers()[2], validity, int((~valid).sum())
        )


def _offsets(strings: pa.Array) -> np.ndarray:
    """The offsets of a (large_)string array's strings into its data buffer."""
    offsets_type = np.int64 if pa.types.is_large_string(strings.type) else np.int32
    return np.frombuffer(strings.buffers()[1], dtype=offsets_type)[strings.offset : strings.offset + len(strings) + 1]


def _entity_targets(pool: _Pool, kinds: np.ndarray) -> np.ndarray:
    if not len(kinds):
        return np.zeros(0, np.int64)
    return pool.add(_ENTITY_PLACEHOLDERS) + kinds.astype(np.int64)


_ENTITY_PLACEHOLDERS = pa.array([ENTITY_PLACEHOLDERS[name] for name in ENTITY_TYPES], pa.string())


def _entity_counts(kinds: np.ndarray) -> dict[str, int]:
    """Entities replaced, per type, from their indices in ``ENTITY_TYPES``."""
    return dict(zip(ENTITY_TYPES, np.bincount(kinds, minlength=len(ENTITY_TYPES)).tolist()))


def _after_space(strings: pa.Array) -> pa.Array:
    return pc.utf8_replace_slice(strings, start=0, stop=0, replacement=" ")
