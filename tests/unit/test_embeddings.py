from __future__ import annotations

import numpy as np
import pytest

from dp_spark.embeddings import Embeddings


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_ids_and_words_of_round_trip():
    e = Embeddings.from_arrays(["a", "b", "c"], np.eye(3))
    ids = e.ids(["c", "zz", "a", "b"])
    assert ids.dtype == np.int64
    assert ids.tolist() == [2, -1, 0, 1]
    assert e.words_of(np.array([2, 0])).tolist() == ["c", "a"]
    with pytest.raises(IndexError, match="outside the vocabulary"):
        e.words_of([-1])
    assert e.vectors.dtype == np.float32 and e.size == 3 and e.dim == 3


def test_glove_text_without_header(tmp_path):
    path = write(tmp_path / "g.txt", "the 0.1 0.2\nof 0.3 0.4\nand -1 2e-1\n")
    e = Embeddings.from_text(path)
    assert e.words.tolist() == ["the", "of", "and"]
    np.testing.assert_allclose(e.vectors[2], [-1.0, 0.2])
    assert Embeddings.from_text(path, vocab_size=2).size == 2


def test_word2vec_text_with_header(tmp_path):
    path = write(tmp_path / "w.txt", "2 3\nhello 1 2 3\nworld 4 5 6\n")
    e = Embeddings.from_text(path)
    assert e.words.tolist() == ["hello", "world"] and e.dim == 3


def test_npy_and_vocabulary_file(tmp_path):
    np.save(tmp_path / "m.npy", np.arange(6, dtype=np.float32).reshape(3, 2))
    write(tmp_path / "v.txt", "x\ny\nz\n")
    e = Embeddings.from_npy(tmp_path / "m.npy", tmp_path / "v.txt", vocab_size=2)
    assert e.words.tolist() == ["x", "y"]
    np.testing.assert_array_equal(e.vectors, [[0, 1], [2, 3]])


def test_default_glove_is_frequency_ordered():
    e = Embeddings.default(vocab_size=5000)
    assert e.size == 5000 and e.dim == 50
    assert e.words[0] == "the"
    assert (e.ids(["movie", "monday"]) >= 0).all()
    assert e.ids(["terrible"])[0] == -1  # rank 5510


@pytest.mark.parametrize(
    "text, message",
    [
        ("a 1 2\nb 1 2 3\n", r"g.txt:2: dimension mismatch"),
        ("a 1 2\nb 1 x\n", r"g.txt:2: non-numeric value"),
        ("a 1 2\nb 3 4\na 5 6\n", r"duplicate word 'a' at rows 0 and 2"),
        ("a 1 2\nb nan 4\n", r"NaN or inf .* row 1 \('b'\)"),
        ("a 1 2\nb inf 4\n", r"NaN or inf"),
        ("", r"empty vocabulary"),
        ("3 2\na 1 2\nb 3 4\n", r"header announces 3 words but the file has 2"),
    ],
)
def test_text_loader_errors_name_the_problem(tmp_path, text, message):
    path = write(tmp_path / "g.txt", text)
    with pytest.raises(ValueError, match=message):
        Embeddings.from_text(path)


@pytest.mark.parametrize("vocab_size", [0, -5, 401_000, 2.5, True])
def test_default_vocab_size_out_of_range(vocab_size):
    with pytest.raises(ValueError, match="vocab_size must be"):
        Embeddings.default(vocab_size=vocab_size)


def test_text_vocab_size_out_of_range(tmp_path):
    path = write(tmp_path / "g.txt", "a 1 2\nb 3 4\n")
    with pytest.raises(ValueError, match=r"vocab_size must be between 1 and 2"):
        Embeddings.from_text(path, vocab_size=3)


def test_npy_vocabulary_length_mismatch(tmp_path):
    np.save(tmp_path / "m.npy", np.zeros((3, 2), np.float32))
    write(tmp_path / "v.txt", "x\ny\n")
    with pytest.raises(ValueError, match="2 words in the vocabulary file but 3 rows"):
        Embeddings.from_npy(tmp_path / "m.npy", tmp_path / "v.txt")


def test_array_shape_errors():
    with pytest.raises(ValueError, match="2 words but 3 vectors"):
        Embeddings.from_arrays(["a", "b"], np.zeros((3, 2)))
    with pytest.raises(ValueError, match="2-D matrix"):
        Embeddings.from_arrays(["a"], np.zeros(3))


def test_fingerprint_tracks_content():
    a = Embeddings.from_arrays(["a", "b"], np.eye(2))
    assert a.fingerprint == Embeddings.from_arrays(["a", "b"], np.eye(2)).fingerprint
    assert a.fingerprint != Embeddings.from_arrays(["a", "c"], np.eye(2)).fingerprint
    assert a.fingerprint != Embeddings.from_arrays(["a", "b"], 2 * np.eye(2)).fingerprint


def near_duplicate_vocabulary(size: int) -> tuple[Embeddings, set[int]]:
    """Random words with planted near copies: word 10 is 0.001 from word 3
    (dropped), word 11 is 0.03 from word 10 but 0.031 from word 3 (kept: the
    only word it is close to is itself dropped), words 20-22 are one cluster
    of copies of word 5 (all dropped); returns the words expected to go."""
    rng = np.random.default_rng(4)
    vectors = rng.normal(size=(size, 8)).astype(np.float32)
    direction = np.eye(8, dtype=np.float32)[0]
    vectors[10] = vectors[3] + 0.001 * direction
    vectors[11] = vectors[3] + 0.031 * direction
    for word, offset in zip((20, 21, 22), (0.002, -0.002, 0.003)):
        vectors[word] = vectors[5] + offset * np.eye(8, dtype=np.float32)[1]
    return Embeddings.from_arrays([f"w{i}" for i in range(size)], vectors), {10, 20, 21, 22}


@pytest.mark.parametrize("exact_up_to", [10**6, 100])
def test_near_duplicates_of_more_frequent_words_are_dropped(monkeypatch, exact_up_to):
    from dp_spark import embeddings as module

    monkeypatch.setattr(module, "_EXACT_NEAR_DUPLICATE_SEARCH", exact_up_to)
    embeddings, expected = near_duplicate_vocabulary(3000)
    filtered, dropped = module.without_near_duplicates(embeddings, 0.02)
    assert dropped.count == len(expected)
    assert dropped.search.startswith("exact" if exact_up_to > 3000 else "IVF")
    assert set(embeddings.words.tolist()) - set(filtered.words.tolist()) == {f"w{i}" for i in expected}
    vectors = filtered.vectors.astype(np.float64)
    squared = (vectors**2).sum(1)[:, None] + (vectors**2).sum(1)[None, :] - 2 * vectors @ vectors.T
    np.fill_diagonal(squared, np.inf)
    assert np.sqrt(max(squared.min(), 0)) >= 0.02


def test_a_vocabulary_without_near_duplicates_keeps_its_fingerprint():
    from dp_spark.embeddings import without_near_duplicates

    embeddings, _ = near_duplicate_vocabulary(500)
    filtered, dropped = without_near_duplicates(embeddings, 1e-4)
    assert dropped.count == 0 and filtered.fingerprint == embeddings.fingerprint


def test_min_word_distance_must_be_positive():
    from dp_spark.config import ConfigError, EmbeddingsConfig

    with pytest.raises(ConfigError, match="embeddings.min_word_distance must be positive"):
        EmbeddingsConfig.from_dict({"min_word_distance": 0})
