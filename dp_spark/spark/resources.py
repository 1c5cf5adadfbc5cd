"""What executors need to perturb: built once on the driver, broadcast once,
rebuilt once per Python worker and cached for the worker's life."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dp_spark.config import EmbeddingsConfig, IndexConfig
from dp_spark.embeddings import DEFAULT_VOCAB_SIZE, Embeddings
from dp_spark.index import (
    NeighbourTable,
    build_index,
    configure_faiss,
    deserialize_index,
    neighbour_table,
    serialize_index,
)
from dp_spark.mechanisms import Mechanism, build_mechanism, mechanism_class
from dp_spark.tokenize import Vocabulary, word_entries

log = logging.getLogger(__name__)


def load_embeddings(config: EmbeddingsConfig) -> Embeddings:
    if config.source == "default":
        embeddings = Embeddings.default(config.vocab_size or DEFAULT_VOCAB_SIZE)
    elif config.source == "text":
        embeddings = Embeddings.from_text(config.path, config.vocab_size)
    else:
        embeddings = Embeddings.from_npy(config.path, config.vocabulary, config.vocab_size)
    return only_words(embeddings) if config.words_only else embeddings


def only_words(embeddings: Embeddings) -> Embeddings:
    """The entries that the tokenizer reads as one word, clitics ("'s", "n't")
    included (drops ",", "--"...)."""
    word = word_entries(embeddings.words)
    return Embeddings.from_arrays(embeddings.words[word], embeddings.vectors[word], source="words only")


def complete_params(name: str, params: dict[str, Any], index_type: str) -> dict[str, Any]:
    """A mechanism's parameters with the job's index type filled in where it decodes by search."""
    if mechanism_class(name).needs_index and "index_type" not in params:
        return {**params, "index_type": index_type}
    return dict(params)


def resource_needs(specs: list[tuple[str, dict[str, Any]]]) -> tuple[set[str], bool]:
    """(index types to build, whether a neighbour table is needed) for
    mechanisms given as (name, complete params)."""
    index_types = {params["index_type"] for name, params in specs if mechanism_class(name).needs_index}
    return index_types, any(mechanism_class(name).needs_neighbours for name, _ in specs)


@dataclass
class Resources:
    """Plain arrays and bytes, cheap to pickle into a broadcast."""

    words: np.ndarray
    vectors: np.ndarray
    neighbours: NeighbourTable | None
    indexes: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def build(
        cls, embeddings: Embeddings, index: IndexConfig, index_types: set[str], need_neighbours: bool
    ) -> "Resources":
        neighbours = (
            neighbour_table(embeddings, index.neighbours, cache_dir=index.cache_dir)
            if need_neighbours
            else None
        )
        indexes = {
            kind: serialize_index(build_index(embeddings.vectors, kind)) for kind in sorted(index_types)
        }
        return cls(embeddings.words, embeddings.vectors, neighbours, indexes)


class Runtime:
    """Executor-side view of the resources: embeddings, vocabulary lookup,
    indexes and the mechanisms built from them, each made once."""

    def __init__(self, resources: Resources) -> None:
        self.embeddings = Embeddings(resources.words, resources.vectors)
        self.vocabulary = Vocabulary(resources.words)
        self._resources = resources
        self._indexes: dict[str, Any] = {}
        self._mechanisms: dict[tuple, Mechanism] = {}

    @property
    def neighbours(self) -> NeighbourTable | None:
        return self._resources.neighbours

    def mechanism(self, name: str, epsilon: float, params: dict[str, Any]) -> Mechanism:
        key = (name, epsilon, tuple(sorted(params.items())))
        if key not in self._mechanisms:
            cls = mechanism_class(name)
            extra: dict[str, Any] = {}
            if cls.needs_neighbours:
                extra["neighbours"] = self.neighbours
            if cls.needs_index:
                kind = params.get("index_type", "flat")
                if kind not in self._indexes:
                    self._indexes[kind] = deserialize_index(self._resources.indexes[kind])
                extra["index"] = self._indexes[kind]
            self._mechanisms[key] = build_mechanism(name, self.embeddings, epsilon, **params, **extra)
        return self._mechanisms[key]


_runtimes: dict[int, Runtime] = {}
_lock = threading.Lock()


def runtime_for(broadcast: Any, broadcast_id: int, threads: int) -> Runtime:
    """The worker's Runtime for a broadcast, built on first use. Only the most
    recent broadcast is kept, so a long-lived worker does not accumulate them."""
    with _lock:
        runtime = _runtimes.get(broadcast_id)
        if runtime is None:
            configure_faiss(threads)
            runtime = Runtime(broadcast.value)
            _runtimes.clear()
            _runtimes[broadcast_id] = runtime
            log.info("dp-spark resources loaded in this worker (broadcast %s)", broadcast_id)
        return runtime
