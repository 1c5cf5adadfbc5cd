"""Tokenising string columns and looking tokens up in the vocabulary, in Arrow.

A string is cut into segments: words, the separators between them (spaces,
punctuation, symbols) and, when asked for, entities. Only words are
perturbed; joining the segments of a row gives the text back, so a string
column is detokenised exactly as it was written, apart from the replaced
words and entities. Everything is vectorised over the whole Arrow batch: the
segments are zero-copy slices of the column's data buffer, and the bytes are
classified as bytes (ASCII by arithmetic, only non-ASCII characters decoded).

Words are runs of letters, digits and combining marks, with apostrophes (' or
’) inside a word ("o'clock", "rock'n'roll"). Clitics are split off the way
GloVe 6B's training text was tokenised (Stanford PTB): 's n't 're 'll 'd 've
'm ending a word, with either apostrophe and in any case, become word
segments of their own directly after their stem: "Bush's" -> "Bush" "'s",
"don't" -> "do" "n't", "can't" -> "ca" "n't", "won't" -> "wo" "n't". GloVe has
the clitics as words and has no "bush's" or "don't".

Entities are spans recognised on the whole string before it is cut into
words, by these RE2 patterns (``ENTITY_PATTERNS``), in this order; a span
taken by one type is not looked at again, so urls and emails win over phone
numbers and phone numbers over numbers:

- ``url``: ``http://``, ``https://``, ``ftp://`` or ``www.`` (any case) and
  what follows up to a space, quote or angle bracket, less trailing
  punctuation.
- ``email``: ``local@domain.tld``, ASCII local part and domain.
- ``phone``: "+", a country code and 2-5 more groups ("+44 20 7946 0958");
  a parenthesised area code and two groups ("(555) 123-4567"); 3+4 digits
  or three groups joined by "-" or "." ("555-0199", "555.123.4567"); three
  space-separated groups starting with 0 ("020 7946 0958") or shaped 3-3-4
  ("555 123 4567"); and any run of 7 or more digits, even inside a word
  ("08452810075over18": order and account numbers too).
- ``num``: digits with "." or "," between groups ("42", "1,000", "3.14")
  not touching an ASCII letter or digit ("21st", "mp3" stay words; RE2's
  word boundary is ASCII, so a number glued to a non-ASCII letter, "é42",
  is taken).

Url, email and phone spans are replaced by one marker character each (a
Unicode noncharacter that the batch does not contain), in the rows that can
hold them, found from a few bytes: "://", "www.", "@", and for phones a
shape of digits that every alternative needs (7 digits in a row, "+" or a
parenthesised group before digits, two groups of 3 or more joined by " ",
"." or "-": most dates, prices and years have none, and the regex is most
of the cost); numbers are then found on the bytes, as RE2 would match the
pattern, without reading every byte of a row with a regex. Every span is an
entity segment of its own, for the caller to put a placeholder in; a clitic
after it stays a clitic ("1990's" -> "<num>" "'s").
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from functools import cache

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from dp_spark.randomness import mix64

ENTITY_TYPES = ("url", "email", "phone", "num")
ENTITY_PATTERNS = {
    "url": r"""\b(?:(?i:https?|ftp)://|(?i:www)\.)[^\s\p{Z}<>"']*[^\s\p{Z}<>"'.,;:!?)\]}]""",
    "email": r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
    "phone": (
        r"\+[0-9]{1,3}(?:[ .-]?\(?[0-9]{2,5}\)?){2,5}"
        r"|\([0-9]{2,5}\)[ .-]?[0-9]{3,4}[ .-]?[0-9]{3,4}"
        r"|\b(?:[0-9]{3}[.-][0-9]{4}|[0-9]{2,5}[.-][0-9]{3,4}[.-][0-9]{3,4}"
        r"|0[0-9]{2,4} [0-9]{3,4} ?[0-9]{3,4}|[0-9]{3} [0-9]{3} [0-9]{4})\b"
        r"|[0-9]{7,}"
    ),
    "num": r"\b[0-9]+(?:[.,][0-9]+)*\b",
}
ENTITY_PLACEHOLDERS = {name: f"<{name}>" for name in ENTITY_TYPES}

_APOSTROPHES = ("'", "\u2019")
CLITICS = frozenset(
    [apostrophe + suffix for apostrophe in _APOSTROPHES for suffix in ("s", "re", "ll", "d", "ve", "m")]
    + [f"n{apostrophe}t" for apostrophe in _APOSTROPHES]
)

# Noncharacters, which Unicode reserves for a program's internal use: the
# first ones that a batch does not contain mark its url, email and phone spans.
_MARKER_CANDIDATES = np.arange(0xFDD0, 0xFDF0)
_MARKER_BYTES = 3  # each of them in UTF-8
# Replaced by markers through their patterns; numbers are found on the bytes.
_MARKED_TYPES = ("url", "email", "phone")


@dataclass(frozen=True)
class Segments:
    """The segments of a batch of strings.

    ``values``: every segment, row after row (a StringArray over the input's
    data, or over the data with entity spans marked). ``is_word``: which
    segments are words. ``is_clitic``: which words are clitics split off the
    segment before them. ``entity``: index in ``ENTITY_TYPES`` of entity
    segments, -1 for the others. ``row_offsets``: row i owns segments
    [row_offsets[i], row_offsets[i + 1]). ``valid``: False for null rows.
    """

    values: pa.Array
    is_word: np.ndarray
    is_clitic: np.ndarray
    entity: np.ndarray
    row_offsets: np.ndarray
    valid: np.ndarray


def segment(strings: pa.Array, entities: bool = False) -> Segments:
    """Cut every string of a (large_)string array into words and separators,
    and with ``entities`` first take the spans of ``ENTITY_PATTERNS`` out as
    entity segments."""
    if isinstance(strings, pa.ChunkedArray):
        strings = strings.combine_chunks()
    valid = ~np.asarray(strings.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    strings = pc.fill_null(strings, "") if strings.null_count else strings
    markers = np.zeros(0, np.int64)
    if entities:
        strings, markers = _mark_entities(strings)
    offsets, raw, base = _text_bytes(strings)
    total = len(raw)
    row_starts = offsets[:-1]

    word = _ascii_word_bytes(raw)
    curly = entity_starts = entity_kinds = np.zeros(0, np.int64)
    if total and raw.max() >= 0x80:
        curly, entity_starts, entity_kinds = _classify_non_ascii(raw, word, markers)
    entity_ends = entity_starts + _MARKER_BYTES
    if entities:
        number_starts, number_ends = _number_spans(raw, offsets)
        word[_ranges(number_starts, number_ends)] = False
        entity_starts = np.concatenate([entity_starts, number_starts])
        entity_ends = np.concatenate([entity_ends, number_ends])
        entity_kinds = np.concatenate([entity_kinds, np.full(len(number_starts), ENTITY_TYPES.index("num"))])
    clitic_starts = _join_apostrophes(raw, word, offsets, curly, entity_ends)

    boundary = np.empty(total, dtype=bool)
    if total:
        boundary[0] = True
        np.not_equal(word[1:], word[:-1], out=boundary[1:])
        boundary[row_starts[row_starts < total]] = True
        boundary[clitic_starts] = True
        boundary[entity_starts] = True
        boundary[entity_ends[entity_ends < total]] = True
    segment_starts = np.flatnonzero(boundary)
    row_offsets = np.searchsorted(segment_starts, row_starts, side="left")
    row_offsets = np.append(row_offsets, len(segment_starts)).astype(np.int64)
    is_clitic = np.zeros(len(segment_starts), dtype=bool)
    is_clitic[np.searchsorted(segment_starts, clitic_starts)] = True
    entity = np.full(len(segment_starts), -1, dtype=np.int8)
    entity[np.searchsorted(segment_starts, entity_starts)] = entity_kinds

    absolute = np.append(segment_starts, total) + base
    data = strings.buffers()[2]
    if total == 0:
        values = pa.array([], type=pa.string())
    elif absolute[-1] < 2**31:
        values = pa.StringArray.from_buffers(
            len(segment_starts), pa.py_buffer(absolute.astype(np.int32)), data
        )
    else:
        values = pa.LargeStringArray.from_buffers(len(segment_starts), pa.py_buffer(absolute), data)
    return Segments(values, word[segment_starts], is_clitic, entity, row_offsets, valid)


def _text_bytes(strings: pa.Array) -> tuple[np.ndarray, np.ndarray, int]:
    """The rows' UTF-8 bytes of a (large_)string array without nulls,
    zero-copy: (row offsets into them, int64, one more than rows; the bytes;
    where they start in the data buffer)."""
    offsets_type = np.int64 if pa.types.is_large_string(strings.type) else np.int32
    offsets = np.frombuffer(strings.buffers()[1], dtype=offsets_type)[
        strings.offset : strings.offset + len(strings) + 1
    ].astype(np.int64)
    base = int(offsets[0])
    data = strings.buffers()[2]
    raw = np.frombuffer(data, dtype=np.uint8)[base : offsets[-1]] if data is not None else np.zeros(0, np.uint8)
    return offsets - base, raw, base


def _ascii_word_bytes(raw: np.ndarray) -> np.ndarray:
    """True at ASCII letters and digits, by arithmetic on whole arrays
    (several times faster than a table lookup per byte)."""
    shifted = raw | 0x20
    shifted -= ord("a")
    word = shifted < 26
    np.subtract(raw, ord("0"), out=shifted)
    word |= shifted < 10
    return word


def _classify_non_ascii(
    raw: np.ndarray, word: np.ndarray, markers: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Set ``word`` at every byte of the non-ASCII letters, digits and marks;
    return the positions of ’ (right single quotes), and the positions and
    entity types of ``markers``. Only the non-ASCII characters are decoded."""
    high = np.flatnonzero(raw >= 0x80)
    is_lead = raw[high] >= 0xC0
    leads = high[is_lead]
    code_points = _decode(raw, leads)
    word[high] = _word_code_points(code_points)[np.cumsum(is_lead) - 1]
    marked = np.isin(code_points, markers)
    return (
        leads[code_points == 0x2019],
        leads[marked],
        np.searchsorted(markers, code_points[marked]),
    )


def _decode(raw: np.ndarray, leads: np.ndarray) -> np.ndarray:
    """Code point (int32) of the characters at UTF-8 lead bytes ``leads``
    (input is valid UTF-8, as Arrow strings are)."""
    first = raw[leads].astype(np.int32)
    b1, b2, b3 = (np.take(raw, leads + k, mode="clip").astype(np.int32) & 0x3F for k in (1, 2, 3))
    return np.where(
        first < 0xE0,
        ((first & 0x1F) << 6) | b1,
        np.where(
            first < 0xF0,
            ((first & 0x0F) << 12) | (b1 << 6) | b2,
            ((first & 0x07) << 18) | (b1 << 12) | (b2 << 6) | b3,
        ),
    )


def _is_word_character(code_point: int) -> bool:
    return unicodedata.category(chr(code_point))[0] in "LNM"


@cache
def _basic_plane_words() -> np.ndarray:
    """Which code points below U+10000 are letters, digits or marks: one
    table per process instead of a category lookup per batch."""
    return np.array([_is_word_character(c) for c in range(0x10000)], dtype=bool)


def _word_code_points(code_points: np.ndarray) -> np.ndarray:
    """Letters, digits and combining marks among code points."""
    word = _basic_plane_words()[np.minimum(code_points, 0xFFFF)]
    astral = np.flatnonzero(code_points > 0xFFFF)
    if len(astral):
        distinct, inverse = np.unique(code_points[astral], return_inverse=True)
        word[astral] = np.array([_is_word_character(c) for c in distinct.tolist()], dtype=bool)[inverse]
    return word


def _join_apostrophes(
    raw: np.ndarray, word: np.ndarray, offsets: np.ndarray, curly: np.ndarray, entity_ends: np.ndarray
) -> np.ndarray:
    """Make apostrophes between two word characters of a row part of the word
    (in ``word``), and return where clitics start: at the apostrophe of 's
    're 'll 'd 've 'm, at the n of n't, when they end a word whose stem is
    not empty, or follow an entity directly ("1990's")."""
    straight = np.flatnonzero(raw == ord("'"))
    if not len(straight) and not len(curly):
        return np.zeros(0, np.int64)
    at = np.concatenate([straight, curly])
    width = np.concatenate([np.ones(len(straight), np.int64), np.full(len(curly), 3)])
    after = at + width
    row = np.searchsorted(offsets, at, side="right") - 1
    start, end = offsets[row], offsets[row + 1]
    inside = (at > start) & (after < end)
    joined = inside & np.take(word, at - 1, mode="clip") & np.take(word, after, mode="clip")
    _set_characters(word, at[joined], width[joined])

    def letter(position: np.ndarray, char: str) -> np.ndarray:
        # | 0x20 lowercases ASCII letters and never turns another byte into one
        return (position < end) & ((np.take(raw, position, mode="clip") | 0x20) == ord(char))

    def ends_word(position: np.ndarray) -> np.ndarray:
        return (position >= end) | ~np.take(word, position, mode="clip")

    one_letter = (letter(after, "s") | letter(after, "d") | letter(after, "m")) & ends_word(after + 1)
    two_letters = (
        (letter(after, "r") & letter(after + 1, "e"))
        | (letter(after, "l") & letter(after + 1, "l"))
        | (letter(after, "v") & letter(after + 1, "e"))
    ) & ends_word(after + 2)
    after_entity = inside & np.isin(at, entity_ends)
    suffix = (joined | after_entity) & (one_letter | two_letters)
    _set_characters(word, at[suffix & ~joined], width[suffix & ~joined])
    negation = (
        joined
        & letter(at - 1, "n")
        & letter(after, "t")
        & ends_word(after + 1)
        & (at - 2 >= start)
        & np.take(word, at - 2, mode="clip")
    )
    return np.concatenate([at[suffix], at[negation] - 1])


def _set_characters(word: np.ndarray, starts: np.ndarray, widths: np.ndarray) -> None:
    """Make the characters of ``widths`` bytes at ``starts`` word characters."""
    for k in range(int(widths.max(initial=0))):
        word[starts[widths > k] + k] = True


def _mark_entities(strings: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """``strings`` with every url, email and phone span replaced by its
    type's marker, and the markers (code points, in ``ENTITY_TYPES`` order)."""
    offsets, raw, _ = _text_bytes(strings)
    candidates, used = _entity_candidates(offsets, raw)
    rows = np.flatnonzero(np.any([candidates[name] for name in _MARKED_TYPES], axis=0))
    if not len(rows):
        return strings, np.zeros(0, np.int64)
    free = _MARKER_CANDIDATES[~np.isin(_MARKER_CANDIDATES, used)]
    if len(free) < len(_MARKED_TYPES):
        raise ValueError(
            "the text holds the Unicode noncharacters U+FDD0-U+FDEF that mark entities; "
            "perturb it with entities = 'keep'"
        )
    markers = free[: len(_MARKED_TYPES)]
    subset = strings.take(pa.array(rows))
    for name, marker in zip(_MARKED_TYPES, markers):
        within = np.flatnonzero(candidates[name][rows])
        if len(within) == len(rows):
            subset = pc.replace_substring_regex(subset, ENTITY_PATTERNS[name], chr(marker))
        elif len(within):
            replaced = pc.replace_substring_regex(subset.take(pa.array(within)), ENTITY_PATTERNS[name], chr(marker))
            subset = _put_rows(subset, within, replaced)
    return _put_rows(strings, rows, subset), markers


def _put_rows(strings: pa.Array, rows: np.ndarray, replacements: pa.Array) -> pa.Array:
    """``strings`` with rows ``rows`` replaced by ``replacements`` (one take)."""
    source = np.arange(len(strings), dtype=np.int64)
    source[rows] = len(strings) + np.arange(len(rows))
    return pa.concat_arrays([strings, replacements]).take(pa.array(source))


def _entity_candidates(
    offsets: np.ndarray, raw: np.ndarray, numbers: bool = False
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """For each entity type (num only with ``numbers``), a boolean per row,
    True for every row where its pattern can match ("://" or "www." for url,
    "@" for email, the digit shapes of ``_phone_runs`` for phone, a digit for
    num), from the few bytes that can take part, found in one pass; and the
    noncharacters U+FDD0-U+FDEF that the text holds."""
    # "0" to ":" (0x30-0x3A) are the digits and ":": one comparison
    interesting = raw - np.uint8(ord("0"))
    interesting = interesting <= ord(":") - ord("0")
    interesting |= raw == ord("@")
    # "ww" (any case) for "www.": far rarer than "." or "w", and finding
    # positions costs by how many there are
    w = (raw | 0x20) == ord("w")
    interesting[:-1] |= w[:-1] & w[1:]
    noncharacters = bool(len(raw)) and raw.max() >= 0xEF
    if noncharacters:
        interesting |= raw == 0xEF
    positions = np.flatnonzero(interesting)
    byte = raw[positions]
    is_digit = byte <= ord("9")
    digits = positions[is_digit]
    positions, sign = positions[~is_digit], byte[~is_digit]

    def byte_at(shift: int) -> np.ndarray:
        return np.take(raw, positions + shift, mode="clip")

    scheme = (sign == ord(":")) & (byte_at(1) == ord("/")) & (byte_at(2) == ord("/"))
    www = ((sign | 0x20) == ord("w")) & ((byte_at(2) | 0x20) == ord("w")) & (byte_at(3) == ord("."))
    used = np.zeros(0, np.int64)
    if noncharacters:
        noncharacter = (sign == 0xEF) & (byte_at(1) == 0xB7)
        used = 0xFDC0 + (byte_at(2)[noncharacter] & 0x3F).astype(np.int64)
    edges = _row_edges(offsets)
    starts, ends = _digit_runs(digits, edges)
    candidates = {
        "url": _rows_holding(positions[scheme | www], offsets),
        "email": _rows_holding(positions[sign == ord("@")], offsets),
        "phone": _rows_holding(starts[_phone_runs(raw, edges, starts, ends)], offsets),
    }
    if numbers:
        candidates["num"] = _rows_holding(starts, offsets)
    return candidates, used


def _phone_runs(raw: np.ndarray, edges: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """True for the digit runs (``_digit_runs``) that are part of a shape
    without which ``ENTITY_PATTERNS["phone"]`` cannot match in their row: a
    row with none is never given to the regex, so each alternative of the
    pattern must leave one of these shapes in any row it matches:

    - ``\\+[0-9]{1,3}...``: "+" directly before a run.
    - ``\\([0-9]{2,5}\\)...``: a run of 2+ digits directly between "(" and
      ")" (the run is the group: the bytes on both sides are not digits).
    - ``\\b(?:...)\\b``: two runs of 3+ digits with one byte of " .-"
      between them. In ``[0-9]{3}[.-][0-9]{4}``, ``0[0-9]{2,4} [0-9]{3,4}
      ?[0-9]{3,4}`` and ``[0-9]{3} [0-9]{3} [0-9]{4}`` they are the first
      two groups; in ``[0-9]{2,5}[.-][0-9]{3,4}[.-][0-9]{3,4}`` the last
      two. The run ending at a group before a separator has at least the
      group's digits, and so has the run starting at a group after one (the
      second and third groups of the 0... shape may be one run, longer).
    - ``[0-9]{7,}``: a run of 7+ digits.

    The shapes are looked for in the text as it is, while the regex reads
    it after the url and email spans are marked; that takes bytes away
    (each span becomes a marker, none of the bytes above), so a digit run
    of the marked text is part of one here, no shorter, and bytes next to
    each other there are next to each other here: a shape of the marked
    text is one here too. Upper bounds on the lengths or ``\\b`` would not
    carry over: "bob@x.com555-0199" matches once the email is a marker."""
    lengths = ends - starts
    inside_before, inside_after = ~edges[starts], ~edges[ends]
    before = np.take(raw, starts - 1, mode="clip")
    after = np.take(raw, ends, mode="clip")
    phone = lengths >= 7
    phone |= inside_before & (before == ord("+"))
    phone |= inside_before & (before == ord("(")) & inside_after & (after == ord(")")) & (lengths >= 2)
    phone[:-1] |= (
        inside_after[:-1]
        & ((after[:-1] == ord(" ")) | (after[:-1] == ord(".")) | (after[:-1] == ord("-")))
        & (starts[1:] == ends[:-1] + 1)
        & inside_before[1:]
        & (lengths[:-1] >= 3)
        & (lengths[1:] >= 3)
    )
    return phone


def _rows_holding(positions: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """True for the rows that hold one of ``positions`` (a binary search per
    position: a few per cent of the bytes, fewer than the rows)."""
    holding = np.zeros(len(offsets) - 1, dtype=bool)
    holding[np.searchsorted(offsets, positions, side="right") - 1] = True
    return holding


def _row_edges(offsets: np.ndarray) -> np.ndarray:
    """True at the positions, up to one past the last byte, where a row
    starts or ends: a lookup per position instead of a binary search."""
    edges = np.zeros(offsets[-1] + 1, dtype=bool)
    edges[offsets] = True
    return edges


def _digit_runs(digits: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the runs of consecutive positions of ``digits``
    (sorted), a row edge (``_row_edges``) cutting a run."""
    new_run = np.ones(len(digits), dtype=bool)
    new_run[1:] = np.diff(digits) != 1
    new_run |= edges[digits]
    run_end = np.ones(len(digits), dtype=bool)
    run_end[:-1] = new_run[1:]
    return digits[new_run], digits[run_end] + 1


def _ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Every position of the half-open ranges [starts[i], ends[i])."""
    lengths = ends - starts
    return np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())


def _regex_word_bytes(raw: np.ndarray) -> np.ndarray:
    """The bytes that RE2's ``\\b`` counts as word characters: ASCII letters, digits and _."""
    return _ascii_word_bytes(raw) | (raw == ord("_"))


def _number_spans(raw: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the spans that ``ENTITY_PATTERNS["num"]`` matches,
    found from the digits alone: a regex would read every byte of every row
    with a digit, where digits are a few per cent of the text.

    Digit runs joined by one "." or "," form a chain; RE2's leftmost-first
    match of the pattern in a chain starts at its first run unless an ASCII
    letter, digit or _ precedes it (then at its second), and ends at its last
    run unless one follows it (then at the run before)."""
    digits = np.flatnonzero((raw - np.uint8(ord("0"))) < 10)
    if not len(digits):
        return digits, digits
    edges = _row_edges(offsets)
    starts, ends = _digit_runs(digits, edges)
    at_row_start, at_row_end = edges[starts], edges[ends]
    before = np.take(raw, starts - 1, mode="clip")
    after = np.take(raw, ends, mode="clip")
    start_ok = at_row_start | ~_regex_word_bytes(before)
    end_ok = at_row_end | ~_regex_word_bytes(after)
    linked = (
        ~at_row_end[:-1]
        & ((after[:-1] == ord(".")) | (after[:-1] == ord(",")))
        & (starts[1:] == ends[:-1] + 1)
        & ~at_row_start[1:]
    )
    chain_first = np.flatnonzero(np.append(True, ~linked))
    chain_last = np.append(chain_first[1:] - 1, len(starts) - 1)
    first = chain_first + ~start_ok[chain_first]
    last = chain_last - ~end_ok[chain_last]
    matched = first <= last
    return starts[first[matched]], ends[last[matched]]


def entity_types(tokens: pa.Array) -> np.ndarray:
    """For given tokens (array<string> columns): the index in ``ENTITY_TYPES``
    of the first type whose pattern matches the whole token, -1 for none
    (and for nulls)."""
    if isinstance(tokens, pa.ChunkedArray):
        tokens = tokens.combine_chunks()
    tokens = pc.fill_null(tokens, "") if tokens.null_count else tokens
    types = np.full(len(tokens), -1, dtype=np.int8)
    if not len(tokens):
        return types
    offsets, raw, _ = _text_bytes(tokens)
    candidates, _ = _entity_candidates(offsets, raw, numbers=True)
    for index, name in enumerate(ENTITY_TYPES):
        rows = np.flatnonzero(candidates[name] & (types < 0))
        if len(rows):
            whole = pc.match_substring_regex(tokens.take(pa.array(rows)), f"^(?:{ENTITY_PATTERNS[name]})$")
            types[rows[np.asarray(whole.to_numpy(zero_copy_only=False), dtype=bool)]] = index
    return types


def word_entries(words: np.ndarray) -> np.ndarray:
    """For vocabulary entries: True where the tokenizer can produce the entry
    as one word segment, the clitics it splits off ("'s", "n't") included;
    False for punctuation (",", "--") and for entries it cuts into several
    segments ("e-mail", "1,000")."""
    segments = segment(pa.array(np.asarray(words, dtype=object), pa.string()))
    single = np.diff(segments.row_offsets) == 1
    word = np.zeros(len(words), dtype=bool)
    word[single] = segments.is_word[segments.row_offsets[:-1][single]]
    return word | pd.Index(np.asarray(words, dtype=object)).isin(CLITICS)


def has_word_character(tokens: pa.Array) -> np.ndarray:
    """For given tokens (array<string> columns): True where a token contains a
    letter or digit; punctuation-only tokens are never perturbed."""
    matches = pc.match_substring_regex(tokens, r"[\p{L}\p{N}]")
    return np.asarray(pc.fill_null(matches, False).to_numpy(zero_copy_only=False), dtype=bool)


class Vocabulary:
    """Token strings to vocabulary ids and back, for whole Arrow arrays.
    ``clitics``: which ids are clitics ("'s", "n't", ...).

    Lookups go by the bytes: an ASCII token (nearly every token of English
    text) is lowercased byte-wise and found by a 64-bit key in one hash
    lookup, with no Python string made; the few tokens with other bytes
    take the Unicode path (lowercasing, NFKC) on Arrow strings."""

    def __init__(self, words: np.ndarray) -> None:
        self.words = pa.array(np.asarray(words, dtype=object), type=pa.string())
        self._lookup = pd.Index(np.asarray(words, dtype=object))
        self.clitics = np.asarray(self._lookup.isin(CLITICS), dtype=bool)
        self._keys = _ByteKeys(self.words)

    def __len__(self) -> int:
        return len(self.words)

    def ids(self, tokens: pa.Array, positions: np.ndarray | None = None) -> np.ndarray:
        """Ids (int64) of the tokens (of ``tokens[positions]``, positions
        increasing), matched lowercased, and those not found matched again
        by their NFKC form (decomposed accents, ligatures, fullwidth
        letters); -1 outside the vocabulary."""
        if isinstance(tokens, pa.ChunkedArray):
            tokens = tokens.combine_chunks()
        tokens = pc.fill_null(tokens, "") if tokens.null_count else tokens
        offsets, raw, _ = _text_bytes(tokens)
        if positions is None:
            positions = np.arange(len(tokens))
        if len(positions) == 0:
            return np.zeros(0, dtype=np.int64)
        starts, ends = offsets[positions], offsets[positions + 1]
        ids = self._keys.find(_lowercase_padded(raw), starts, ends - starts)
        # NUL too: an ASCII key cannot tell "a" from "a\0".
        special = np.flatnonzero((raw >= 0x80) | (raw == 0))
        if len(special):
            holder = np.searchsorted(starts, special, side="right") - 1
            unicode = np.unique(holder[(holder >= 0) & (special < ends[np.maximum(holder, 0)])])
            if len(unicode):
                ids[unicode] = self._unicode_ids(tokens.take(pa.array(positions[unicode])))
        return ids

    def _unicode_ids(self, tokens: pa.Array) -> np.ndarray:
        """``ids`` of tokens by their strings, each distinct token lowercased
        and looked up once, and those not found normalised (NFKC)."""
        encoded = pc.dictionary_encode(tokens)
        distinct = encoded.dictionary
        distinct_ids = self._lookup.get_indexer(
            pc.utf8_lower(distinct).to_numpy(zero_copy_only=False)
        ).astype(np.int64)
        missing = np.flatnonzero(distinct_ids < 0)
        if len(missing):
            normalised = pc.utf8_lower(pc.utf8_normalize(distinct.take(pa.array(missing)), "NFKC"))
            distinct_ids[missing] = self._lookup.get_indexer(normalised.to_numpy(zero_copy_only=False))
        return distinct_ids[encoded.indices.to_numpy(zero_copy_only=False)]

    def strings(self, ids: np.ndarray) -> pa.Array:
        return self.words.take(pa.array(ids, type=pa.int64()))


# Masks keeping the first n bytes of a little-endian 64-bit word, n = 0..8.
_PREFIX_MASKS = np.array([(1 << (8 * n)) - 1 for n in range(8)] + [2**64 - 1], dtype=np.uint64)
_LONG_KEY = np.uint64(1 << 63)
_KEY_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


class _ByteKeys:
    """Vocabulary ids by a 64-bit key of the entry's bytes, for the entries
    made of ASCII bytes other than NUL: up to 8 bytes, the key is the bytes
    themselves (exact, top bit clear); longer, a hash of them with the top
    bit set, and a hit is checked against the entry's bytes, so a lookup
    never mistakes one token for another. Other entries get keys no such
    token has (0x80 in the first byte), so that index positions are ids."""

    def __init__(self, words: pa.Array) -> None:
        offsets, raw, _ = _text_bytes(words)
        self._padded = np.concatenate([raw, np.zeros(8, np.uint8)])
        self._starts = offsets[:-1]
        self._lengths = np.diff(offsets)
        special = np.diff(np.concatenate([[0], np.cumsum((raw >= 0x80) | (raw == 0))])[offsets])
        other = np.flatnonzero(special > 0)
        self.longest = int(self._lengths.max(initial=0))
        # A salt under which no two long entries share a hash (nearly always the first).
        for salt in range(1 << 16):
            self._salt = np.uint64(salt)
            keys = self._keys(self._padded, self._starts, self._lengths)
            keys[other] = np.uint64(0x80) | (np.arange(len(other), dtype=np.uint64) << np.uint64(8))
            self._index = pd.Index(keys)
            if self._index.is_unique:
                break

    def _keys(self, padded: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        keys = _bytes_at(padded, starts)
        keys &= _PREFIX_MASKS[np.minimum(lengths, 8)]
        long = np.flatnonzero(lengths > 8)
        if len(long):
            long_starts, long_lengths = starts[long], lengths[long]
            hashed = mix64(keys[long] ^ (long_lengths.astype(np.uint64) * _KEY_GOLDEN + self._salt))
            for offset in range(8, int(long_lengths.max()), 8):
                more = np.flatnonzero(long_lengths > offset)
                chunk = _bytes_at(padded, long_starts[more] + offset)
                chunk &= _PREFIX_MASKS[np.minimum(long_lengths[more] - offset, 8)]
                hashed[more] = mix64(hashed[more] ^ chunk)
            keys[long] = hashed | _LONG_KEY
        return keys

    def find(self, padded: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Ids of the byte spans (starts, lengths) of ``padded`` (8 zero
        bytes at its end), -1 where no entry has the same bytes. The caller
        sends spans with other bytes than ASCII without NUL elsewhere."""
        # Longer than any entry: hashed as if one byte longer, and refused by the byte check.
        ids = self._index.get_indexer(self._keys(padded, starts, np.minimum(lengths, self.longest + 1)))
        long = np.flatnonzero((lengths > 8) & (ids >= 0))
        if len(long):
            ids[long[~self._same_bytes(padded, starts[long], lengths[long], ids[long])]] = -1
        return ids.astype(np.int64, copy=False)

    def _same_bytes(self, padded: np.ndarray, starts: np.ndarray, lengths: np.ndarray, ids: np.ndarray) -> np.ndarray:
        same = self._lengths[ids] == lengths  # so no span longer than the longest entry is read further
        for offset in range(0, min(int(lengths.max(initial=0)), self.longest), 8):
            check = np.flatnonzero(same & (lengths > offset))
            mask = _PREFIX_MASKS[np.minimum(lengths[check] - offset, 8)]
            token = _bytes_at(padded, starts[check] + offset) & mask
            entry = _bytes_at(self._padded, self._starts[ids[check]] + offset) & mask
            same[check[token != entry]] = False
        return same


def _bytes_at(padded: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """The 8 bytes at each position as a little-endian uint64 (unaligned
    reads; ``padded`` ends with 8 zero bytes)."""
    words = np.ndarray((len(padded) - 7,), dtype="<u8", buffer=padded, strides=(1,))
    return words[positions]  # not np.take, which first copies an unaligned array whole


def _lowercase_padded(raw: np.ndarray) -> np.ndarray:
    """``raw`` with ASCII A-Z lowercased and 8 zero bytes appended."""
    out = np.zeros(len(raw) + 8, np.uint8)
    upper = (raw - np.uint8(ord("A"))) < 26
    np.add(raw, upper.view(np.uint8) << 5, out=out[: len(raw)])
    return out


def might_be_cased(tokens: pa.Array, positions: np.ndarray) -> np.ndarray:
    """For ``tokens[positions]`` (positions increasing): True where the
    token has an ASCII uppercase letter or a non-ASCII character, the only
    tokens whose substitutes ``match_case`` can change (the others are
    lowercase or caseless), found from the bytes without a string made."""
    offsets, raw, _ = _text_bytes(tokens)
    starts, ends = offsets[positions], offsets[positions + 1]
    flagged = np.flatnonzero(((raw - np.uint8(ord("A"))) < 26) | (raw >= 0x80))
    holder = np.searchsorted(starts, flagged, side="right") - 1
    inside = (holder >= 0) & (flagged < ends[np.maximum(holder, 0)])
    cased = np.zeros(len(positions), dtype=bool)
    cased[holder[inside]] = True
    return cased


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
