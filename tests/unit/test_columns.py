"""Column perturbation on Arrow batches, checked against counts made here."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pytest

from dp_spark.columns import ColumnPerturbation
from dp_spark.embeddings import Embeddings
from dp_spark.mechanisms import build_mechanism
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
