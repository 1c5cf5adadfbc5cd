from __future__ import annotations

import re
import unicodedata
from functools import cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from benchmarks.text_corpus import DEFAULT_DATA, sentences
from dp_spark import tokenize
from dp_spark.tokenize import (
    ENTITY_PATTERNS,
    ENTITY_TYPES,
    Vocabulary,
    _entity_candidates,
    _text_bytes,
    entity_types,
    has_word_character,
    match_case,
    might_be_cased,
    segment,
    word_entries,
)


def rows_of(segments):
    values = segments.values.to_pylist()
    return [
        values[segments.row_offsets[i] : segments.row_offsets[i + 1]]
        for i in range(len(segments.row_offsets) - 1)
    ]


ROUND_TRIP_TEXTS = [
        "Hello, world! Don't   stop.",
        None,
        "",
        "café naïve — “quoted” 42x",
        "日本語 text\ttabs\nnewline",
        "  leading and trailing  ",
        "it's O'Brien's 'quoted' ’curly’",
        "🙂 emoji 🙂",
    "Bush's DON'T can’t they're I'm n't 's rock'n'roll",
    "Jose\u0301 ﬁnance Ｔｈｅ \ufdd0 text with a noncharacter",
]


@pytest.mark.parametrize("entities", [False, True])
def test_segments_rejoin_to_the_original_text(entities):
    segments = segment(pa.array(ROUND_TRIP_TEXTS), entities)
    assert segments.valid.tolist() == [t is not None for t in ROUND_TRIP_TEXTS]
    for text, parts in zip(ROUND_TRIP_TEXTS, rows_of(segments)):
        assert "".join(parts) == (text or "")
    assert not (segments.entity >= 0).any()  # none of these texts holds an entity


def test_words_and_separators_alternate():
    segments = segment(pa.array(["Hello, world! Don't stop", "it's O'Brien's 'x'"]))
    words = [v for v, w in zip(segments.values.to_pylist(), segments.is_word) if w]
    assert words == ["Hello", "world", "Do", "n't", "stop", "it", "'s", "O'Brien", "'s", "x"]


def words_of(text, entities=False):
    """(word, is clitic) of each word segment of one text."""
    segments = segment(pa.array([text]), entities)
    values = segments.values.to_pylist()
    return [(values[i], bool(segments.is_clitic[i])) for i in np.flatnonzero(segments.is_word)]


@pytest.mark.parametrize(
    "text, words",
    [
        ("Bush's", [("Bush", False), ("'s", True)]),
        ("don't", [("do", False), ("n't", True)]),
        ("can't won't", [("ca", False), ("n't", True), ("wo", False), ("n't", True)]),
        ("they're", [("they", False), ("'re", True)]),
        ("I'M WE'LL", [("I", False), ("'M", True), ("WE", False), ("'LL", True)]),
        ("you’ve she’d It’s", [("you", False), ("’ve", True), ("she", False), ("’d", True),
                               ("It", False), ("’s", True)]),
        ("DOESN’T", [("DOES", False), ("N’T", True)]),
        ("O'Brien's", [("O'Brien", False), ("'s", True)]),
        ("José's", [("José", False), ("'s", True)]),
        # not clitic forms: kept whole, as before
        ("o'clock rock'n'roll ma'am", [("o'clock", False), ("rock'n'roll", False), ("ma'am", False)]),
        ("Bush'sx y'all", [("Bush'sx", False), ("y'all", False)]),
        # no stem to split from, or no word after the apostrophe
        ("n't 's students' 'd", [("n't", False), ("s", False), ("students", False), ("d", False)]),
    ],
)
def test_clitics_are_words_of_their_own(text, words):
    assert words_of(text) == words


def reference_segments(text):
    """(segment, is word, is clitic) by the rules, one character at a time."""
    word_character = [unicodedata.category(c)[0] in "LNM" for c in text]
    word = list(word_character)
    for i in range(1, len(text) - 1):
        if text[i] in "'’" and word_character[i - 1] and word_character[i + 1]:
            word[i] = True
    clitic = re.compile(r"(.+?)([nN]['’][tT]|['’](?:[sS]|[dD]|[mM]|[rR][eE]|[lL][lL]|[vV][eE]))")
    out = []
    for run in re.finditer(r"(.)\1*", "".join("w" if w else "s" for w in word)):
        piece, is_word = text[run.start() : run.end()], run.group(1) == "w"
        split = clitic.fullmatch(piece) if is_word else None
        out += [(split[1], True, False), (split[2], True, True)] if split else [(piece, is_word, False)]
    return out


def test_segments_agree_with_a_character_by_character_reference():
    # ASCII and non-ASCII letters, marks (decomposed é), 2-, 3- and 4-byte
    # characters, both apostrophes and the letters of every clitic
    alphabet = list("abnNtTsSdmrelv1 ,_'’") + ["é", "e\u0301", "日", "🙂", "\u00a0", "ﬁ", "𝐀"]
    rng = np.random.default_rng(7)
    texts = ["".join(rng.choice(alphabet, rng.integers(0, 12))) for _ in range(3000)]
    segments = segment(pa.array(texts))
    values = segments.values.to_pylist()
    for i, text in enumerate(texts):
        own = range(segments.row_offsets[i], segments.row_offsets[i + 1])
        got = [(values[j], bool(segments.is_word[j]), bool(segments.is_clitic[j])) for j in own]
        assert got == reference_segments(text), text


def entities_of(text):
    """The text with each entity segment shown as its placeholder."""
    segments = segment(pa.array([text]), entities=True)
    values = segments.values.to_pylist()
    return "".join(
        f"<{ENTITY_TYPES[kind]}>" if kind >= 0 else value for value, kind in zip(values, segments.entity)
    )


@pytest.mark.parametrize(
    "text, expected",
    [
        ("mail bob.smith+dp@mail.example.co.uk, or www.Example.com/a?b=1.",
         "mail <email>, or <url>."),
        ("see https://example.com/user@host/555-0199 now", "see <url> now"),
        ("(HTTP://x.org/page)", "(<url>)"),
        ("call 555-0199, +44 20 7946 0958 or (555) 123-4567", "call <phone>, <phone> or <phone>"),
        ("ring 020 7946 0958 or 555.123.4567", "ring <phone> or <phone>"),
        ("order #1234567 and 08452810075over18's", "order #<phone> and <phone>over18's"),
        ("£1,000.50 in 2005, 42% at 3.14 on 10/12", "£<num> in <num>, <num>% at <num> on <num>/<num>"),
        ("the 1990's: 21st mp3 B2B 4x4 covid19", "the <num>'s: 21st mp3 B2B 4x4 covid19"),
        ("years 1939-1945, 2021-03-04", "years <num>-<num>, <num>-<num>-<num>"),
        ("no entities here", "no entities here"),
    ],
)
def test_entities_are_whole_spans_with_precedence(text, expected):
    assert entities_of(text) == expected


def test_a_clitic_after_an_entity_stays_a_clitic():
    assert words_of("the 1990's and 80’s", entities=True) == [
        ("the", False), ("'s", True), ("and", False), ("’s", True),
    ]


def test_numbers_are_found_as_the_num_pattern_matches():
    # numbers are found on the bytes, not with the regex: same spans
    rng = np.random.default_rng(3)
    texts = ["".join(rng.choice(list("0123456789.,a_ 'é-"), rng.integers(0, 14))) for _ in range(5000)]
    segments = segment(pa.array(texts), entities=True)
    values = segments.values.to_pylist()
    marks = {ENTITY_TYPES.index("phone"): "P", ENTITY_TYPES.index("num"): "N"}
    expected = pa.array(texts)
    for name in ("phone", "num"):
        expected = pc.replace_substring_regex(expected, ENTITY_PATTERNS[name], name[0].upper())
    for i, text in enumerate(texts):
        own = range(segments.row_offsets[i], segments.row_offsets[i + 1])
        assert "".join(marks.get(segments.entity[j], values[j]) for j in own) == expected[i].as_py(), text


def phone_like_texts(count, seed):
    """Rows of digit groups (mostly of 2-5 digits, the pattern's group
    sizes) taking turns with what the phone pattern reads around them: its
    separators " .-()+", letters, "_", a non-ASCII letter, and email and url
    pieces, which take digits next to them away before the phone pattern
    runs ("bob@x.com555-0199")."""
    rng = np.random.default_rng(seed)
    groups = np.array(["".join(rng.choice(list("0123456789"), size)) for size in [1, 2, 3, 3, 4, 4, 5, 6, 7, 9] * 100])
    groups[::7] = np.char.add("0", groups[::7])  # the third alternative's 0[0-9]{2,4}
    others = np.array(list(" .-") * 6 + list("()+") * 2 + [") ", "  ", "a", "Z", "_", "é", ",", "bob@x.com", "www.x.", "http://"])
    lengths = rng.integers(1, 8, count)
    turn = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths) + np.repeat(rng.integers(0, 2, count), lengths)
    pieces = np.where(
        turn % 2 == 0,
        groups[rng.integers(len(groups), size=lengths.sum())],
        others[rng.integers(len(others), size=lengths.sum())],
    ).tolist()
    ends = np.cumsum(lengths).tolist()
    return ["".join(pieces[start:end]) for start, end in zip([0] + ends[:-1], ends)]


# The shortest rows each alternative of the phone pattern matches, its
# groups at their smallest (and in one run where separators are optional).
SHORTEST_PHONES = ["+12345", "+1 23 45", "+1(23)45", "(12)345678", "(12) 345.678", "555-0199", "555.0199",
                   "12-345-678", "12.345.678", "012 345678", "012 345 678", "555 123 4567", "1234567"]


@cache
def phone_test_texts():
    """The shortest phones, phone-like rows, and the real sentences of
    ../shared/data where it is (reviews and SMS, with real phone numbers)."""
    texts = SHORTEST_PHONES + phone_like_texts(50_000, seed=11)
    if DEFAULT_DATA.exists():
        texts += sentences(DEFAULT_DATA)
    return pa.array(texts)


def test_phone_candidates_hold_every_phone_match():
    strings = phone_test_texts()
    offsets, raw, _ = _text_bytes(strings)
    candidates, _ = _entity_candidates(offsets, raw)
    matches = np.asarray(pc.match_substring_regex(strings, ENTITY_PATTERNS["phone"]), dtype=bool)
    assert matches[: len(SHORTEST_PHONES)].all()
    assert matches.sum() > 5000  # the shapes are there to be missed
    missed = np.flatnonzero(matches & ~candidates["phone"])
    assert not len(missed), strings.take(pa.array(missed[:5])).to_pylist()
    assert candidates["phone"].sum() < 1.5 * matches.sum()  # and the candidates are few more


def test_entities_are_those_of_the_patterns_on_every_row(monkeypatch):
    # the candidate tests only skip rows: the segments are those of running
    # every pattern on every row (after url and email spans are marked)
    strings = phone_test_texts()
    found = segment(strings, entities=True)
    candidates_of = tokenize._entity_candidates

    def every_row(offsets, raw, numbers=False):
        candidates, used = candidates_of(offsets, raw, numbers)
        return {name: np.ones_like(rows) for name, rows in candidates.items()}, used

    monkeypatch.setattr(tokenize, "_entity_candidates", every_row)
    expected = segment(strings, entities=True)
    assert found.values.equals(expected.values)
    for field in ("is_word", "is_clitic", "entity", "row_offsets"):
        assert np.array_equal(getattr(found, field), getattr(expected, field)), field
    assert (found.entity == ENTITY_TYPES.index("phone")).sum() > 5000


def test_markers_avoid_noncharacters_in_the_text():
    text = "\ufdd0\ufdd1 call 555-0199 \ufdd2"
    assert entities_of(text) == "\ufdd0\ufdd1 call <phone> \ufdd2"


def test_entities_of_whole_tokens():
    tokens = pa.array(["https://x.org/a", "bob@x.org", "555-0199", "1,000", "mp3", "Call", None, "x 42", ""])
    names = [ENTITY_TYPES[t] if t >= 0 else None for t in entity_types(tokens)]
    assert names == ["url", "email", "phone", "num", None, None, None, None, None]


def test_word_entries_keep_words_and_clitics():
    entries = np.array(["the", ",", "'s", "n't", "’s", "'re", "--", "e-mail", "o'clock", "1,000", "42", "'90s"],
                       dtype=object)
    assert word_entries(entries).tolist() == [
        True, False, True, True, True, True, False, False, True, False, True, False,
    ]


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


def test_vocabulary_lookup_normalises_unicode():
    vocabulary = Vocabulary(np.array(["josé", "finance", "the", "½", "'s"], dtype=object))
    # decomposed accent, ligature, fullwidth letters; an entry that NFKC would change is still found as written
    tokens = pa.array(["Jose\u0301", "ﬁnance", "Ｔｈｅ", "½", "zzz", "José"])
    assert vocabulary.ids(tokens).tolist() == [0, 1, 2, 3, -1, 0]
    assert vocabulary.clitics.tolist() == [False, False, False, False, True]


def string_lookup(words, tokens):
    """The lookup by strings: lowercased, then NFKC for those not found."""
    index = {word: i for i, word in enumerate(words)}
    out = []
    for token in tokens:
        found = index.get(token.lower(), -1)
        if found < 0 and not token.isascii():
            found = index.get(unicodedata.normalize("NFKC", token).lower(), -1)
        out.append(found)
    return out


def test_byte_lookup_agrees_with_the_string_lookup():
    words = ["the", "a", "representative", "representatives", "internationalization", "abcdefgh", "abcdefghi",
             "josé", "'s", "n't", "x" * 30, "Upper", "a\x00b", "ééééééééé"]
    tokens = (
        words + [w.upper() for w in words] + [w + "q" for w in words] + [w[:-1] for w in words]
        + ["", "A", "\x00", "a\x00", "REPRESENTATIVE", "representativf", "representativeS", "x" * 31, "x" * 29,
           "Jose\u0301", "Ｔｈｅ", "upper", "UPPER", "a\x00B", "ÉÉÉÉÉÉÉÉÉ", "y" * 200]
    )
    vocabulary = Vocabulary(np.array(words, dtype=object))
    expected = string_lookup(words, tokens)
    assert vocabulary.ids(pa.array(tokens)).tolist() == expected
    positions = np.arange(1, len(tokens), 3)
    assert vocabulary.ids(pa.array(tokens), positions).tolist() == [expected[i] for i in positions]
    sliced = pa.array(["pad"] + tokens).slice(1)
    assert vocabulary.ids(sliced.cast(pa.large_string())).tolist() == expected


def test_might_be_cased_finds_every_token_match_case_can_change():
    tokens = pa.array(["skip", "the", "Paris", "nasa", "NASA", "42", "éclair", "Éclair", "x", "mIxed", "ok"])
    positions = np.arange(1, len(tokens))
    cased = might_be_cased(tokens, positions)
    assert cased.tolist() == [False, True, False, True, False, True, True, False, True, False]
    words = tokens.take(pa.array(positions))
    substitutes = pa.array(["sub"] * len(positions))
    changed = np.array(match_case(words, substitutes).to_pylist()) != "sub"
    assert not (changed & ~cased).any()


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
