"""What mechanisms run on: the artifact of the configured embeddings, and
the mechanisms built on it, each made once (pure: no Spark)."""

from __future__ import annotations

import json
import logging
from typing import Any

from dp_spark.artifact import Artifact, add_array, cached_artifact, index_role, open_artifact
from dp_spark.config import EmbeddingsConfig, IndexConfig
from dp_spark.embeddings import load_embeddings
from dp_spark.errors import ConfigError, DPRuntimeError
from dp_spark.mechanisms import Mechanism, build_mechanism, mechanism_class
from dp_spark.tokenize import Vocabulary

log = logging.getLogger(__name__)


def complete_params(name: str, params: dict[str, Any], index_type: str) -> dict[str, Any]:
    """A mechanism's parameters with the job's index type filled in where it decodes by search."""
    if mechanism_class(name).needs_index and "index_type" not in params:
        return {**params, "index_type": index_type}
    return dict(params)


def index_types_needed(mechanisms: list[tuple[str, dict[str, Any]]]) -> tuple[str, ...]:
    """Approximate index types that mechanisms given as (name, complete params) decode with."""
    return tuple(sorted({
        params["index_type"] for name, params in mechanisms
        if mechanism_class(name).needs_index and params["index_type"] != "flat"
    }))


def artifact_for(
    embeddings: EmbeddingsConfig, index: IndexConfig, mechanisms: list[tuple[str, dict[str, Any]]]
) -> Artifact:
    """The artifact a run uses: the configured one, or the default
    embeddings' built into (or found in) the local cache."""
    kinds = index_types_needed(mechanisms)
    if embeddings.artifact:
        artifact = open_artifact(embeddings.artifact, index.cache_dir)
        missing = [kind for kind in kinds if index_role(kind) not in artifact.paths]
        if missing:
            raise ConfigError(f"artifact {embeddings.artifact} has no {', '.join(missing)} index, which the "
                              f"configured mechanisms decode with; rebuild it with `python -m dp_spark build "
                              f"--index-types {','.join(missing)}` or use index type flat")
        return artifact
    source = {k: v for k, v in vars(embeddings).items() if v is not None}
    return cached_artifact(load_embeddings(embeddings), index.neighbours, kinds, index.cache_dir, source)


class Runtime:
    """The artifact as mechanisms use it: embeddings, vocabulary lookup,
    indexes, and the mechanisms built from them, each made once. On the
    driver, what a mechanism precomputes (diffractor's lists) is added to the
    artifact before it ships; a worker only reads it."""

    def __init__(self, artifact: Artifact, on_worker: bool = False) -> None:
        self.artifact = artifact
        self.on_worker = on_worker
        self.embeddings = artifact.embeddings()
        self.vocabulary = Vocabulary(self.embeddings.words)
        self._mechanisms: dict[str, Mechanism] = {}

    def mechanism(self, name: str, epsilon: float, params: dict[str, Any]) -> Mechanism:
        """The mechanism ``name`` at ``epsilon`` with ``params`` (ValueError on bad values)."""
        key = json.dumps([name, epsilon, params], sort_keys=True, default=str)
        if key not in self._mechanisms:
            cls = mechanism_class(name)
            extra: dict[str, Any] = {}
            if cls.needs_neighbours:
                extra["neighbours"] = self.artifact.neighbour_table()
            if cls.needs_index:
                extra["index"] = self.artifact.index(params.get("index_type", "flat"))
            if name == "diffractor":
                extra["word_lists"] = self._word_lists(params.get("lists", 1), params.get("list_seed", 0))
            self._mechanisms[key] = build_mechanism(name, self.embeddings, epsilon, **params, **extra)
        return self._mechanisms[key]


    def _word_lists(self, count: Any, seed: Any) -> Any:
        from dp_spark.mechanisms.diffractor import WordLists, build_word_lists

        role = f"diffractor-lists-n{count}-seed{seed}"
        if role not in self.artifact.paths:
            if self.on_worker:
                raise DPRuntimeError(f"artifact {self.artifact.id} reached this worker without {role}")
            lists = build_word_lists(self.embeddings, int(count), int(seed), self.artifact.neighbour_table())
            self.artifact = add_array(self.artifact, role, lists.orders)
        return WordLists(self.artifact.array(role), int(seed), self.artifact.fingerprint)
