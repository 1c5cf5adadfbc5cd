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
