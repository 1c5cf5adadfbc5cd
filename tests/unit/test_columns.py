"""Column perturbation on Arrow batches, checked against counts made here."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pytest

from dp_spark.columns import ColumnPerturbation
from dp_spark.embeddings import Embeddings
from dp_spark.mechanisms import build_mechanism
from dp_spark.mechanisms.base import Mechanism
from dp_spark.randomness import GeneratorRandom
from dp_spark.stats import StatisticsBuilder
from dp_spark.tokenize import Vocabulary

WORDS = ["the", "movie", "was", "terrible", "great", "film", "paris", "london", "a", "good"]


@pytest.fixture(scope="module")
def embeddings():
    rng = np.random.default_rng(0)
    return Embeddings.from_arrays(WORDS, rng.normal(size=(len(WORDS), 4)))


def perturbation(embeddings, kind, oov="keep", epsilon=1.0):
    mechanism = build_mechanism("mlap", embeddings, epsilon=epsilon)
    return ColumnPerturbation(mechanism, Vocabulary(embeddings.words), kind, oov)


def apply(perturbation, column, random):
    """The perturbed column and this batch's statistics."""
    builder = StatisticsBuilder(len(perturbation.vocabulary))
    out = perturbation.apply(column, random, builder)
    return out, builder.build()


def random_for(seed):
    return lambda per_row: GeneratorRandom(np.random.default_rng(seed), int(per_row.sum()))


TEXTS = ["The movie was terrible, said Zoe in Paris.", None, "", "  ", "good FILM!!", "ünïcödé words"]


def test_strings_keep_structure_and_count_tokens(embeddings):
    out, stats = apply(perturbation(embeddings, "string"), pa.array(TEXTS), random_for(1))
    out = out.to_pylist()
    assert out[1] is None and out[2] == "" and out[3] == "  "
    words = [re.findall(r"\w+", t or "") for t in TEXTS]
    out_words = [re.findall(r"\w+", t or "") for t in out]
    assert [len(w) for w in words] == [len(w) for w in out_words]
    # separators are untouched
    assert [re.sub(r"\w+", "", t or "") for t in TEXTS] == [re.sub(r"\w+", "", t or "") for t in out]
    in_vocabulary = [w for row in words for w in row if w.lower() in WORDS]
    assert stats.tokens == sum(len(w) for w in words)
    assert stats.perturbed == len(in_vocabulary)
    assert stats.oov == stats.tokens - stats.perturbed
    changed = sum(a.lower() != b.lower() for r1, r2 in zip(words, out_words) for a, b in zip(r1, r2))
    assert stats.changed == changed
    assert stats.rows == 5 and stats.null_rows == 1
    # OOV words are kept verbatim; capitalisation follows the original word
    assert out_words[0][5] == "Zoe" and out_words[0][0][0].isupper()


def test_oov_replace_and_drop(embeddings):
    replaced, _ = apply(perturbation(embeddings, "string", "replace"), pa.array(["Zoe saw the film"]), random_for(2))
    assert replaced.to_pylist()[0].startswith("<unk> ")
    dropped, _ = apply(perturbation(embeddings, "string", "drop"), pa.array(["Zoe saw the film"]), random_for(2))
    assert dropped.to_pylist()[0].startswith("  ")
    lists, stats = apply(perturbation(embeddings, "tokens", "drop"),
        pa.array([["zoe", "the", "xyz", "film"], None, []]), random_for(2)
    )
    assert [len(x) if x is not None else None for x in lists.to_pylist()] == [2, None, 0]
    assert stats.oov == 2


def test_token_lists_keep_nulls_empties_and_punctuation(embeddings):
    column = pa.array([["The", ",", "movie", None, "zoe"], None, [], ["..."]])
    out, stats = apply(perturbation(embeddings, "tokens"), column, random_for(3))
    assert out.type == column.type
    out = out.to_pylist()
    assert out[1] is None and out[2] == [] and out[3] == ["..."]
    assert out[0][1] == "," and out[0][3] is None and out[0][4] == "zoe"
    assert out[0][0][0].isupper()
    # "," "..." and the null element are not words: skipped, never perturbed
    assert stats.tokens == 3 and stats.perturbed == 2 and stats.oov == 1 and stats.skipped == 3


def test_same_random_source_same_output(embeddings):
    column = pa.array(TEXTS * 20)
    p = perturbation(embeddings, "string")
    first, _ = apply(p, column, random_for(5))
    again, _ = apply(p, column, random_for(5))
    other, _ = apply(p, column, random_for(6))
    assert first.equals(again) and not first.equals(other)


def test_large_epsilon_changes_nothing(embeddings):
    column = pa.array(["The movie was terrible, said Zoe in Paris."])
    out, stats = apply(perturbation(embeddings, "string", epsilon=1e6), column, random_for(0))
    assert out.equals(column) and stats.changed == 0


class Substitution(Mechanism):
    """A stand-in mechanism that replaces words by a fixed table, to check
    how the text is put back together around what it replaces."""

    name = "substitution"

    def __init__(self, embeddings, table):
        super().__init__(embeddings, 1.0)
        self.target = np.arange(embeddings.size)
        for original, substitute in table.items():
            self.target[embeddings.ids([original])[0]] = embeddings.ids([substitute])[0]

    def _perturb_in_vocabulary(self, ids, rng):
        return self.target[ids]


VOCABULARY = [
    "bush", "putin", "'s", "’s", "n't", "'re", "the", "not", "do", "they", "dog", "i", "josé", "finance", "call", "or",
]


@pytest.fixture(scope="module")
def clitic_embeddings():
    return Embeddings.from_arrays(VOCABULARY, np.random.default_rng(0).normal(size=(len(VOCABULARY), 4)))


def substituted(embeddings, table, texts, kind="string", **options):
    perturbation = ColumnPerturbation(Substitution(embeddings, table), Vocabulary(embeddings.words), kind, **options)
    out, stats = apply(perturbation, pa.array(texts), random_for(0))
    return out.to_pylist(), stats


@pytest.mark.parametrize(
    "table, text, expected",
    [
        ({}, "Bush's, don't! They're", "Bush's, don't! They're"),
        ({"bush": "putin"}, "Bush's BUSH'S bush’s", "Putin's PUTIN'S putin’s"),
        ({"'s": "the"}, "Bush's dog", "Bush the dog"),
        ({"'s": "'re"}, "Bush's", "Bush're"),
        ({"bush": "putin", "'s": "the"}, "Bush's", "Putin the"),
        ({"n't": "not"}, "don't DON'T", "do not DO NOT"),
        ({"’s": "the"}, "Bush’s", "Bush the"),
    ],
)
def test_clitics_are_perturbed_as_words_and_never_glue(clitic_embeddings, table, text, expected):
    out, stats = substituted(clitic_embeddings, table, [text])
    assert out == [expected]
    assert stats.oov == 0 and stats.unprotected == 0


def test_clitics_outside_the_vocabulary_follow_the_oov_policy(clitic_embeddings):
    texts = ["I'll go", None, ""]
    assert substituted(clitic_embeddings, {}, texts, oov="keep")[0] == texts
    assert substituted(clitic_embeddings, {}, texts, oov="replace")[0] == ["I <unk> <unk>", None, ""]
    assert substituted(clitic_embeddings, {}, texts, oov="drop")[0] == ["I ", None, ""]


def test_words_are_looked_up_by_their_nfkc_form_and_kept_as_written(clitic_embeddings):
    text = "Jose\u0301 ﬁnance ＤＯ"
    out, stats = substituted(clitic_embeddings, {}, [text])
    assert out == [text] and (stats.tokens, stats.perturbed, stats.oov) == (3, 3, 0)
    out, _ = substituted(clitic_embeddings, {"josé": "bush", "do": "not"}, [text])
    assert out == ["Bush ﬁnance NOT"]


ENTITY_TEXT = "Call 555-0199 or mail bob@example.com, see https://example.com/x?id=42 re order 1234567: $1,000.50"


def test_entities_are_replaced_by_typed_placeholders_and_counted(clitic_embeddings):
    out, stats = substituted(clitic_embeddings, {}, [ENTITY_TEXT, None, "", "1990's"])
    assert out == [
        "Call <phone> or mail <email>, see <url> re order <phone>: $<num>", None, "", "<num>'s",
    ]
    assert stats.entities == {"url": 1, "email": 1, "phone": 2, "num": 2}
    # words only: Call or mail see re order 's
    assert (stats.tokens, stats.perturbed, stats.oov) == (7, 3, 4)
    out, _ = substituted(clitic_embeddings, {"'s": "the"}, ["1990's"])
    assert out == ["<num> the"]


def test_entities_keep_leaves_them_to_the_word_path(clitic_embeddings):
    out, stats = substituted(clitic_embeddings, {}, [ENTITY_TEXT], entities="keep")
    assert out == [ENTITY_TEXT]
    assert stats.entities == {"url": 0, "email": 0, "phone": 0, "num": 0}
    assert stats.oov == stats.unprotected == stats.tokens - stats.perturbed > 15
    with pytest.raises(ValueError, match="entities must be one of replace, keep"):
        substituted(clitic_embeddings, {}, [ENTITY_TEXT], entities="drop")


def test_token_lists_replace_whole_token_entities(clitic_embeddings):
    column = [["Call", "555-0199", "bob@x.org", "42", "mp3", "https://x.org", ","], None, []]
    out, stats = substituted(clitic_embeddings, {"call": "do"}, column, kind="tokens", oov="drop")
    assert out == [["Do", "<phone>", "<email>", "<num>", "<url>", ","], None, []]
    assert stats.entities == {"url": 1, "email": 1, "phone": 1, "num": 1}
    assert (stats.tokens, stats.oov, stats.skipped, stats.unprotected) == (2, 1, 1, 0)


@pytest.mark.parametrize("kind", ["string", "tokens"])
def test_unprotected_counts_oov_tokens_released_as_written(clitic_embeddings, kind):
    column = ["Zoe called Bush"] if kind == "string" else [["Zoe", "called", "Bush"]]
    for oov, unprotected in (("keep", 2), ("replace", 0), ("drop", 0)):
        _, stats = substituted(clitic_embeddings, {}, column, kind=kind, oov=oov)
        assert (stats.oov, stats.unprotected) == (2, unprotected)


@pytest.mark.parametrize("large", [False, True])
def test_replacements_keep_rows_apart_in_sliced_and_large_columns(clitic_embeddings, large):
    texts = ["skip me", "Bush's dog", None, "", "the dog, the DOG", "no words here", "Zoe"]
    column = pa.array(texts, pa.large_string() if large else pa.string()).slice(1)
    perturbation = ColumnPerturbation(Substitution(clitic_embeddings, {"dog": "bush", "the": "they"}),
                                      Vocabulary(clitic_embeddings.words), "string", "replace")
    out, _ = apply(perturbation, column, random_for(0))
    assert out.type == column.type
    assert out.to_pylist() == ["Bush's bush", None, "", "they bush, they BUSH", "<unk> <unk> <unk>", "<unk>"]


def test_nothing_replaced_gives_the_column_back(clitic_embeddings):
    column = pa.array(["Bush's dog", None, "the dog"]).slice(1)
    perturbation = ColumnPerturbation(Substitution(clitic_embeddings, {}), Vocabulary(clitic_embeddings.words), "string")
    out, stats = apply(perturbation, column, random_for(0))
    assert out.to_pylist() == [None, "the dog"] and stats.tokens == 2
