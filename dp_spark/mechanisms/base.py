"""What every mechanism shares: the perturbation contract and parameter checks."""

from __future__ import annotations

import logging
import math
import time
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Sequence

import numpy as np

from dp_spark.embeddings import Embeddings
from dp_spark.guarantees import Guarantee
from dp_spark.randomness import TokenRandom, as_token_random

log = logging.getLogger(__name__)

OOV_POLICIES = ("keep", "drop", "replace")
DEFAULT_PLACEHOLDER = "<unk>"


class Mechanism(ABC):
    """A word-level metric-DP mechanism over a fixed vocabulary.

    Subclasses implement ``_perturb_in_vocabulary`` for a batch of valid ids,
    drawing all randomness from the ``TokenRandom`` they are given (one row of
    uniforms per token, on streams they number), as whole arrays: no Python
    loop per token.
    """

    name: ClassVar[str]
    # What the job must build and broadcast for this mechanism.
    needs_index: ClassVar[bool] = False
    needs_neighbours: ClassVar[bool] = False

    def __init__(self, embeddings: Embeddings, epsilon: float) -> None:
        self.embeddings = embeddings
        self.epsilon = positive_float("epsilon", epsilon)

    def perturb(self, ids: np.ndarray, rng: np.random.Generator | TokenRandom) -> np.ndarray:
        """Perturb a batch of vocabulary ids; ids < 0 (out of vocabulary) pass
        through. ``rng``: a numpy Generator, or a TokenRandom with one row per id."""
        ids = np.asarray(ids)
        if ids.ndim != 1:
            raise ValueError(f"ids must be a 1-D array, got shape {ids.shape}")
        ids = ids.astype(np.int64, copy=False)
        if ids.size and ids.max() >= self.embeddings.size:
            raise ValueError(
                f"ids must be < vocabulary size {self.embeddings.size}, got {int(ids.max())}"
            )
        source = as_token_random(rng, len(ids))
        if len(ids) > self.MAX_TOKENS_PER_CALL:
            return self._perturb_in_chunks(ids, source)
        in_vocabulary = ids >= 0
        if in_vocabulary.all():
            return self._perturb_in_vocabulary(ids, source)
        out = ids.copy()
        rows = np.flatnonzero(in_vocabulary)
        out[rows] = self._perturb_in_vocabulary(ids[rows], source.restrict(rows))
        return out

    # A batch can hold very long rows (a 1.25M-token document): its tokens are
    # perturbed this many at a time, so temporaries stay bounded, with progress
    # logged (in the Spark executor's log) as it goes.
    MAX_TOKENS_PER_CALL = 1 << 18

    def _perturb_in_chunks(self, ids: np.ndarray, source: TokenRandom) -> np.ndarray:
        out = np.empty_like(ids)
        started = time.perf_counter()
        for start in range(0, len(ids), self.MAX_TOKENS_PER_CALL):
            rows = np.arange(start, min(start + self.MAX_TOKENS_PER_CALL, len(ids)))
            out[rows] = self.perturb(ids[rows], source.restrict(rows))
            log.info("%s: %d of %d tokens of this batch perturbed (%.0f s)", self.name, rows[-1] + 1, len(ids),
                     time.perf_counter() - started)
        return out

    @abstractmethod
    def _perturb_in_vocabulary(self, ids: np.ndarray, rng: TokenRandom) -> np.ndarray:
        """Perturb int64 ids, all in [0, vocabulary size)."""

    def perturb_words(
        self,
        words: Sequence[str],
        rng: np.random.Generator | TokenRandom,
        oov: str = "keep",
        placeholder: str = DEFAULT_PLACEHOLDER,
    ) -> list[str]:
        """Perturb a list of words; words outside the vocabulary are kept, dropped,
        or replaced by ``placeholder`` according to ``oov``."""
        choice("oov", oov, OOV_POLICIES)
        ids = self.embeddings.ids(list(words))
        perturbed = self.perturb(ids, rng)
        known = perturbed >= 0
        out = np.empty(len(ids), dtype=object)
        out[known] = self.embeddings.words_of(perturbed[known])
        if oov == "keep":
            out[~known] = np.asarray(words, dtype=object)[~known]
        elif oov == "replace":
            out[~known] = placeholder
        else:
            out = out[known]
        return out.tolist()

    def guarantee(self) -> Guarantee:
        """The privacy guarantee this mechanism provides, as booked by the job
        and checked by the auditor. A mechanism that does not state one
        promises nothing."""
        return Guarantee.none(f"mechanism {self.name!r} states no guarantee")

    def describe(self) -> dict[str, Any]:
        """Parameters and derived privacy figures, for statistics tables and manifests."""
        return {"mechanism": self.name, "epsilon": self.epsilon, **self.guarantee().to_record()}


def positive_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return value


def optional_positive_float(name: str, value: Any) -> float | None:
    return None if value is None else positive_float(name, value)


def non_negative_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative finite number, got {value!r}")
    return value


def positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return float(value)


def optional_fraction(name: str, value: Any) -> float | None:
    return None if value is None else fraction(name, value)


def choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    return value
