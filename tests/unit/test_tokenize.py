from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from dp_spark.tokenize import Vocabulary, has_word_character, match_case, segment


def rows_of(segments):
    values = segments.values.to_pylist()
    return [
        values[segments.row_offsets[i] : segments.row_offsets[i + 1]]
        for i in range(len(segments.row_offsets) - 1)
    ]


def test_segments_rejoin_to_the_original_text():
    texts = [
        "Hello, world! Don't   stop.",
        None,
        "",
        "café naïve — “quoted” 42x",
        "日本語 text\ttabs\nnewline",
        "  leading and trailing  ",
        "it's O'Brien's 'quoted' ’curly’",
        "🙂 emoji 🙂",
    ]
    segments = segment(pa.array(texts))
    assert segments.valid.tolist() == [t is not None for t in texts]
    for text, parts in zip(texts, rows_of(segments)):
        assert "".join(parts) == (text or "")


def test_words_and_separators_alternate():
    segments = segment(pa.array(["Hello, world! Don't stop", "it's O'Brien's 'x'"]))
    words = [v for v, w in zip(segments.values.to_pylist(), segments.is_word) if w]
    assert words == ["Hello", "world", "Don't", "stop", "it's", "O'Brien's", "x"]


def test_unicode_letters_and_digits_are_word_characters():
    segments = segment(pa.array(["café naïve 日本語 42 «très» x—y"]))
    words = [v for v, w in zip(segments.values.to_pylist(), segments.is_word) if w]
    assert words == ["café", "naïve", "日本語", "42", "très", "x", "y"]


def test_rows_never_share_a_segment():
    segments = segment(pa.array(["abc'", "def", "x", "", "y"]))
    assert rows_of(segments) == [["abc", "'"], ["def"], ["x"], [], ["y"]]


def test_sliced_and_large_string_arrays():
    array = pa.array(["zero", "one two", "three, four"]).slice(1, 2)
    assert rows_of(segment(array)) == [["one", " ", "two"], ["three", ", ", "four"]]
    large = pa.array(["a b"], type=pa.large_string())
    assert rows_of(segment(large)) == [["a", " ", "b"]]


def test_vocabulary_lookup_lowercases_and_maps_back():
    vocabulary = Vocabulary(np.array(["the", "movie", "paris"], dtype=object))
    ids = vocabulary.ids(pa.array(["The", "MOVIE", "zzz", "paris", "the"]))
    assert ids.tolist() == [0, 1, -1, 2, 0]
    assert vocabulary.strings(np.array([2, 0])).to_pylist() == ["paris", "the"]
    assert vocabulary.ids(pa.array([], pa.string())).tolist() == []


def test_match_case():
    out = match_case(pa.array(["Paris", "NASA", "a", "word", "I"]), pa.array(["london", "esa", "b", "x", "we"]))
    assert out.to_pylist() == ["London", "ESA", "b", "x", "We"]


def test_has_word_character():
    assert has_word_character(pa.array(["a", ",", "...", "x1", None, "'s", "é"])).tolist() == [
        True, False, False, True, False, True, True,
    ]


@pytest.mark.parametrize("repeat", [1, 50_000])
def test_long_rows(repeat):
    text = "word, other " * repeat
    segments = segment(pa.array([text]))
    assert "".join(segments.values.to_pylist()) == text
    assert int(segments.is_word.sum()) == 2 * repeat
