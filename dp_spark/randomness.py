"""Where mechanisms get their randomness: uniform draws, one row per token.

Mechanisms never call a generator directly; they ask a ``TokenRandom`` for a
(tokens x columns) matrix of uniforms on a numbered stream. Two sources:

- ``GeneratorRandom`` wraps a ``numpy.random.Generator``: fastest, and
  reproducible when the same tokens come in the same batches (the Spark job
  seeds one per Arrow batch from the job seed, column, partition and position).
- ``KeyedRandom`` derives every draw from a 64-bit key per token and the
  (stream, column) it serves, so a token's noise depends only on its key,
  never on which batch or partition it travels in (the Spark job keys tokens
  by a configured id column and the token's position in its row).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_ALL_BITS = np.uint64(2**64 - 1)


class TokenRandom(ABC):
    """Uniform draws strictly inside (0, 1) for a batch of tokens: samplers
    take logarithms of u and of 1 - u, so neither end may ever come out."""

    @property
    @abstractmethod
    def size(self) -> int:
        """Number of tokens (rows of every draw)."""

    @abstractmethod
    def uniform(self, stream: int, columns: int, dtype: type = np.float64) -> np.ndarray:
        """A (size, columns) matrix of uniforms; ``stream`` names the purpose of
        the draw so that keyed sources give each purpose its own numbers."""

    @abstractmethod
    def restrict(self, rows: np.ndarray) -> "TokenRandom":
        """The source for a subset of the tokens (``rows`` indexes them)."""


class GeneratorRandom(TokenRandom):
    def __init__(self, generator: np.random.Generator, size: int) -> None:
        self.generator = generator
        self._size = size

    @property
    def size(self) -> int:
        return self._size

    def uniform(self, stream: int, columns: int, dtype: type = np.float64) -> np.ndarray:
        words = self.generator.integers(0, _ALL_BITS, (self._size, columns), dtype=np.uint64, endpoint=True)
        return open_unit_interval(words, dtype)

    def restrict(self, rows: np.ndarray) -> "GeneratorRandom":
        return GeneratorRandom(self.generator, len(rows))


class KeyedRandom(TokenRandom):
    """Counter-based draws: u = mix(mix(key + stream) + column), mix being
    SplitMix64's finaliser, a bijection of 64-bit words with full avalanche."""

    def __init__(self, token_keys: np.ndarray) -> None:
        self.token_keys = np.asarray(token_keys, dtype=np.uint64)

    @property
    def size(self) -> int:
        return len(self.token_keys)

    def uniform(self, stream: int, columns: int, dtype: type = np.float64) -> np.ndarray:
        with np.errstate(over="ignore"):
            base = mix64(self.token_keys + np.uint64(stream + 1) * _GOLDEN)
            words = base[:, None] + np.arange(1, columns + 1, dtype=np.uint64)[None, :] * _GOLDEN
        return open_unit_interval(mix64(words), dtype)

    def restrict(self, rows: np.ndarray) -> "KeyedRandom":
        return KeyedRandom(self.token_keys[rows])


def open_unit_interval(words: np.ndarray, dtype: type = np.float64) -> np.ndarray:
    """Uniforms strictly inside (0, 1) from random 64-bit words: the top b
    bits t give (t + 1/2) 2^-b, with b = 52 for float64 and 23 for float32,
    one bit fewer than the mantissa so that the largest value, 1 - 2^-(b+1),
    is representable and never rounds up to 1 (with b = 53, as in
    ``Generator.random``, it would: one word in 2^53 gave exactly 1.0)."""
    if dtype == np.float32:
        top = (words >> np.uint64(41)).astype(np.float32)
        return (top + np.float32(0.5)) * np.float32(2.0**-23)
    top = (words >> np.uint64(12)).astype(np.float64)
    return (top + 0.5) * 2.0**-52


def as_token_random(rng: np.random.Generator | TokenRandom, size: int) -> TokenRandom:
    if isinstance(rng, TokenRandom):
        if rng.size != size:
            raise ValueError(f"the random source covers {rng.size} tokens, the batch has {size}")
        return rng
    if isinstance(rng, np.random.Generator):
        return GeneratorRandom(rng, size)
    raise TypeError(f"rng must be a numpy Generator or a TokenRandom, got {type(rng).__name__}")


def mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser, elementwise on uint64 (wrapping arithmetic)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _MIX1
        x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


def derive_key(secret: bytes, *parts: object) -> int:
    """A 64-bit key from a secret and labels (keyed BLAKE2b: one-way, so keys
    and what they seed reveal nothing usable about the secret)."""
    digest = hashlib.blake2b(
        "\x1f".join(str(p) for p in parts).encode("utf-8"), key=secret[:64], digest_size=8
    )
    return int.from_bytes(digest.digest(), "little")


def release_key(secret: bytes, descriptor: str) -> int:
    """The noise key of one release: the seed together with everything that
    defines the release (input and output column, mechanism, epsilon, every
    parameter, row keying; ``descriptor`` is their canonical JSON). Two
    releases differing in any of these draw independent noise, so their
    privacy losses compose; only an identical release replays its noise."""
    return derive_key(secret, "release", descriptor)


def seed_fingerprint(seed: bytes) -> str:
    """A one-way fingerprint of the seed for manifests and the ledger: equal
    seeds give equal fingerprints, and the fingerprint does not give the seed
    back (but a small seed can be found by trying them all)."""
    return hashlib.blake2b(seed, key=b"dp-spark seed fingerprint v1", digest_size=16).hexdigest()


def token_keys(row_keys: np.ndarray, tokens_per_row: np.ndarray) -> np.ndarray:
    """Keys of the tokens of consecutive rows: mix(row key + position in row)."""
    tokens_per_row = np.asarray(tokens_per_row, dtype=np.int64)
    total = int(tokens_per_row.sum())
    starts = np.cumsum(tokens_per_row) - tokens_per_row
    positions = np.arange(total, dtype=np.int64) - np.repeat(starts, tokens_per_row)
    with np.errstate(over="ignore"):
        keyed = np.repeat(np.asarray(row_keys, dtype=np.uint64), tokens_per_row)
        keyed = keyed + (positions.astype(np.uint64) + np.uint64(1)) * _GOLDEN
    return mix64(keyed)
