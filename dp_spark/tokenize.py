"""Tokenising string columns and looking tokens up in the vocabulary, in Arrow.

A string is cut into alternating segments: words (runs of letters, digits and
combining marks, with apostrophes inside a word, as in "don't") and the
separators between them (spaces, punctuation, symbols). Only words are
perturbed; joining the segments of a row gives the text back, so a string
column is detokenised exactly as it was written, apart from the replaced
words. Everything is vectorised over the whole Arrow batch: the segments are
zero-copy slices of the column's own data buffer.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

_APOSTROPHES = (ord("'"), 0x2019)
_ASCII_WORD = np.zeros(128, dtype=bool)
for _c in "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ":
    _ASCII_WORD[ord(_c)] = True


@dataclass(frozen=True)
class Segments:
    """The segments of a batch of strings.

    ``values``: every segment, row after row (a StringArray over the input's
    data). ``is_word``: which segments are words. ``row_offsets``: row i owns
    segments [row_offsets[i], row_offsets[i + 1]). ``valid``: False for null rows.
    """

    values: pa.Array
    is_word: np.ndarray
    row_offsets: np.ndarray
    valid: np.ndarray


def segment(strings: pa.Array) -> Segments:
    """Cut every string of a (large_)string array into words and separators."""
    if isinstance(strings, pa.ChunkedArray):
        strings = strings.combine_chunks()
    valid = ~np.asarray(strings.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    strings = pc.fill_null(strings, "") if strings.null_count else strings
    offsets_type = np.int64 if pa.types.is_large_string(strings.type) else np.int32
    offsets = np.frombuffer(strings.buffers()[1], dtype=offsets_type)[
        strings.offset : strings.offset + len(strings) + 1
    ].astype(np.int64)
    base = int(offsets[0])
    data = strings.buffers()[2]
    raw = (
        np.frombuffer(data, dtype=np.uint8)[base : int(offsets[-1])]
        if data is not None
        else np.zeros(0, np.uint8)
    )
    row_starts = offsets[:-1] - base
    total = len(raw)

    lead_positions = np.flatnonzero((raw & 0xC0) != 0x80)
    code_points = _decode(raw, lead_positions)
    word = _word_characters(code_points)
    starts_row = np.zeros(len(lead_positions), dtype=bool)
    starts_row[np.searchsorted(lead_positions, row_starts[row_starts < total])] = True
    # An apostrophe between two word characters of the same row is part of the word.
    inner = np.flatnonzero(np.isin(code_points[1:-1], _APOSTROPHES)) + 1
    if len(inner):
        joins = word[inner - 1] & word[inner + 1] & ~starts_row[inner] & ~starts_row[inner + 1]
        word[inner[joins]] = True

    boundary = starts_row.copy()
    if len(word):
        boundary[1:] |= word[1:] != word[:-1]
        boundary[0] = True
    segment_starts = lead_positions[boundary]
    segment_offsets = np.append(segment_starts, total)
    row_offsets = np.searchsorted(segment_starts, row_starts, side="left")
    row_offsets = np.append(row_offsets, len(segment_starts)).astype(np.int64)

    absolute = segment_offsets + base
    if total == 0:
        values = pa.array([], type=pa.string())
    elif absolute[-1] < 2**31:
        values = pa.StringArray.from_buffers(
            len(segment_starts), pa.py_buffer(absolute.astype(np.int32)), data
        )
    else:
        values = pa.LargeStringArray.from_buffers(len(segment_starts), pa.py_buffer(absolute), data)
    return Segments(values, word[boundary], row_offsets, valid)


def _decode(raw: np.ndarray, leads: np.ndarray) -> np.ndarray:
    """Code point at each UTF-8 lead byte (input is valid UTF-8, as Arrow strings are)."""
    padded = np.concatenate([raw, np.zeros(3, np.uint8)]).astype(np.int64)
    first = padded[leads]
    cp = first.copy()
    two = (first >= 0xC0) & (first < 0xE0)
    three = (first >= 0xE0) & (first < 0xF0)
    four = first >= 0xF0
    b1 = padded[leads + 1] & 0x3F
    b2 = padded[leads + 2] & 0x3F
    b3 = padded[leads + 3] & 0x3F
    cp[two] = ((first[two] & 0x1F) << 6) | b1[two]
    cp[three] = ((first[three] & 0x0F) << 12) | (b1[three] << 6) | b2[three]
    cp[four] = ((first[four] & 0x07) << 18) | (b1[four] << 12) | (b2[four] << 6) | b3[four]
    return cp


def _word_characters(code_points: np.ndarray) -> np.ndarray:
    """Letters, digits and combining marks; ASCII by table, the rest by
    Unicode category of each distinct code point."""
    word = np.zeros(len(code_points), dtype=bool)
    ascii_cp = code_points < 128
    word[ascii_cp] = _ASCII_WORD[code_points[ascii_cp]]
    if not ascii_cp.all():
        other = ~ascii_cp
        distinct, inverse = np.unique(code_points[other], return_inverse=True)
        flags = np.array(
            [unicodedata.category(chr(c))[0] in "LNM" for c in distinct.tolist()], dtype=bool
        )
        word[other] = flags[inverse]
    return word


def has_word_character(tokens: pa.Array) -> np.ndarray:
    """For given tokens (array<string> columns): True where a token contains a
    letter or digit; punctuation-only tokens are never perturbed."""
    matches = pc.match_substring_regex(tokens, r"[\p{L}\p{N}]")
    return np.asarray(pc.fill_null(matches, False).to_numpy(zero_copy_only=False), dtype=bool)


class Vocabulary:
    """Token strings to vocabulary ids and back, for whole Arrow arrays."""

    def __init__(self, words: np.ndarray) -> None:
        self.words = pa.array(np.asarray(words, dtype=object), type=pa.string())
        self._lookup = pd.Index(np.asarray(words, dtype=object))

    def __len__(self) -> int:
        return len(self.words)

    def ids(self, tokens: pa.Array) -> np.ndarray:
        """Ids (int64) of tokens, matched lowercased; -1 outside the vocabulary.
        Tokens are Zipfian: each distinct token is lowercased and looked up
        once per batch."""
        if len(tokens) == 0:
            return np.zeros(0, dtype=np.int64)
        encoded = pc.dictionary_encode(tokens)
        if isinstance(encoded, pa.ChunkedArray):
            encoded = encoded.combine_chunks()
        distinct = pc.utf8_lower(encoded.dictionary).to_numpy(zero_copy_only=False)
        distinct_ids = self._lookup.get_indexer(distinct).astype(np.int64)
        indices = encoded.indices.to_numpy(zero_copy_only=False)
        return distinct_ids[indices]

    def strings(self, ids: np.ndarray) -> pa.Array:
        return self.words.take(pa.array(ids, type=pa.int64()))


def match_case(originals: pa.Array, substitutes: pa.Array) -> pa.Array:
    """Substitutes (lowercase vocabulary words) cased like the words they
    replace: "Paris" -> "London", "NASA" -> "ESA", otherwise lowercase.
    Only the originals with an uppercase letter are looked at (most words
    in running text have none)."""
    if len(originals) == 0:
        return substitutes
    cased = np.flatnonzero(
        pc.fill_null(pc.invert(pc.utf8_is_lower(originals)), False).to_numpy(zero_copy_only=False)
    )
    if len(cased) == 0:
        return substitutes
    words = originals.take(pa.array(cased))
    replacements = substitutes.take(pa.array(cased))
    upper = pc.and_(pc.utf8_is_upper(words), pc.greater(pc.utf8_length(words), 1))
    recased = pc.if_else(
        upper,
        pc.utf8_upper(replacements),
        pc.if_else(pc.utf8_is_title(words), pc.utf8_capitalize(replacements), replacements),
    )
    source = np.arange(len(substitutes), dtype=np.int64)
    source[cased] = len(substitutes) + np.arange(len(cased))
    return pa.concat_arrays([substitutes.cast(pa.string()), recased.cast(pa.string())]).take(pa.array(source))
