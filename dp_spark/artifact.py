"""The embeddings' resources built once into a folder: the artifact.

An artifact holds everything a mechanism needs besides its parameters: the
vocabulary, the vectors, the neighbour table, and the approximate FAISS
indexes that were asked for. It is built once (``python -m dp_spark build``,
or on first use into the local cache), named by a content fingerprint, and
read by memory-mapping: executors map the same files instead of each
unpickling a copy, and a fresh driver loads in seconds what took 25-30 s to
build (minutes at 400k words).

Layout of ``dp-spark-artifact-<id>/`` (``<id>``: 16 hex digits of a hash of
the embeddings' fingerprint, the neighbour count and the format version):

    artifact.json                 what it holds, sizes and SHA-256 of each file
    <id>.words.arrow              the vocabulary (Arrow IPC, one string column)
    <id>.vectors.npy              float32 (|V|, n)
    <id>.neighbour_ids.npy        int32 (|V|, K), nearest first
    <id>.neighbour_distances.npy  float32 (|V|, K), Euclidean
    <id>.index-<type>.faiss       hnsw / ivf indexes, when built

The manifest's ``neighbour_table`` says how the table was found: exact
(flat search, on the driver or by Spark tasks: the same table) or
approximate (IVF, for vocabularies of millions of words; its id differs
from the exact table's, so the two never stand in for each other).

File names carry the id so that they stay unique when Spark ships them
to executors side by side.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import faiss
import numpy as np
import pyarrow as pa

from dp_spark import storage
from dp_spark.embeddings import Embeddings
from dp_spark.errors import ConfigError
from dp_spark.index import (
    INDEX_TYPES,
    NeighbourTable,
    build_index,
    build_neighbour_table,
    configure_faiss,
    default_cache_dir,
)

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "artifact.json"
PREFIX = "dp-spark-artifact-"
CORE_ROLES = ("words", "vectors", "neighbour_ids", "neighbour_distances")
SUFFIXES = {"words": "words.arrow", "vectors": "vectors.npy", "neighbour_ids": "neighbour_ids.npy",
            "neighbour_distances": "neighbour_distances.npy"}


# How the driver's build finds the table (``build_neighbour_table``).
EXACT_TABLE = {"exact": True, "search": "flat", "built_on": "driver"}

TableBuilder = Callable[[Embeddings, int], NeighbourTable]


def artifact_id(fingerprint: str, neighbours: int, table: dict[str, Any] | None = None) -> str:
    """16 hex digits naming the artifact; an approximate table (``table``
    not exact) gets an id of its own."""
    variant = "" if table is None or table.get("exact", True) else ":approximate:" + table.get("search", "")
    return hashlib.sha256(f"{FORMAT_VERSION}:{fingerprint}:{neighbours}{variant}".encode()).hexdigest()[:16]


def index_role(kind: str) -> str:
    return f"index-{kind}"


def file_name(identifier: str, role: str) -> str:
    return f"{identifier}.{SUFFIXES.get(role, role + ('.faiss' if role.startswith('index-') else '.npy'))}"


@dataclass
class Artifact:
    """An artifact whose files are on local disk: ``paths`` maps each role
    (words, vectors, neighbour_ids, neighbour_distances, index-hnsw, ...) to
    a local file, ``meta`` is its manifest."""

    meta: dict[str, Any]
    paths: dict[str, str]
    _loaded: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def id(self) -> str:
        return self.meta["id"]

    @property
    def fingerprint(self) -> str:
        """The embeddings' fingerprint (SHA-256 of words and vectors)."""
        return self.meta["embeddings_fingerprint"]

    @property
    def neighbours_k(self) -> int:
        return int(self.meta["neighbours"])

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(self.meta["files"])

    def embeddings(self) -> Embeddings:
        """The vocabulary and memory-mapped vectors (loaded once)."""
        if "embeddings" not in self._loaded:
            with pa.memory_map(self.paths["words"]) as source:
                words = pa.ipc.open_file(source).read_all().column(0)
            vectors = np.load(self.paths["vectors"], mmap_mode="r")
            embeddings = Embeddings(words.to_numpy(zero_copy_only=False).astype(object), vectors)
            # Known from the manifest: hashing 18 MB per worker would cost more than the load.
            object.__setattr__(embeddings, "_fingerprint", self.fingerprint)
            self._loaded["embeddings"] = embeddings
        return self._loaded["embeddings"]

    def neighbour_table(self) -> NeighbourTable:
        if "neighbours" not in self._loaded:
            self._loaded["neighbours"] = NeighbourTable(
                np.load(self.paths["neighbour_ids"], mmap_mode="r"),
                np.load(self.paths["neighbour_distances"], mmap_mode="r"),
                float(self.meta["diameter"]),
                self.fingerprint,
            )
        return self._loaded["neighbours"]

    def array(self, role: str) -> np.ndarray:
        """An extra array of the artifact (memory-mapped)."""
        if role not in self._loaded:
            self._loaded[role] = np.load(self.paths[role], mmap_mode="r")
        return self._loaded[role]

    def index(self, kind: str) -> faiss.Index:
        """The FAISS index of ``kind``: flat is made from the mapped vectors,
        hnsw and ivf are read from their files (memory-mapped)."""
        key = f"index-{kind}"
        if key not in self._loaded:
            configure_faiss()
            if kind == "flat":
                self._loaded[key] = build_index(self.embeddings().vectors, "flat")
            elif index_role(kind) in self.paths:
                self._loaded[key] = faiss.read_index(self.paths[index_role(kind)], faiss.IO_FLAG_MMAP
                                                     | faiss.IO_FLAG_READ_ONLY)
            else:
                raise ConfigError(f"artifact {self.id} has no {kind} index; rebuild it with "
                                  f"`python -m dp_spark build --index-types {kind}`")
        return self._loaded[key]

    def verify(self) -> None:
        """Check every file's size and SHA-256 against the manifest."""
        for role, expected in self.meta["files"].items():
            path = self.paths[role]
            if os.path.getsize(path) != expected["bytes"] or _sha256(path) != expected["sha256"]:
                raise ConfigError(f"artifact {self.id}: {os.path.basename(path)} does not match its "
                                  "manifest (corrupt or partly copied); rebuild or copy it again")


def build_artifact(
    embeddings: Embeddings,
    parent: str | Path,
    neighbours: int,
    index_types: tuple[str, ...] = (),
    source: dict[str, Any] | None = None,
    table_builder: TableBuilder | None = None,
    table: dict[str, Any] | None = None,
) -> Artifact:
    """Build the artifact of ``embeddings`` in a local folder under ``parent``
    (written under a temporary name, then renamed: a crash leaves no half
    artifact). ``table_builder(embeddings, k)`` finds the neighbour table
    (default: exact, on the driver) and ``table`` describes how, for the
    manifest (``exact``, ``search``, ``built_on``, ...)."""
    k = min(int(neighbours), embeddings.size - 1)
    table_info = dict(table or EXACT_TABLE)
    identifier = artifact_id(embeddings.fingerprint, k, table_info)
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix=f".{PREFIX}{identifier}-", dir=parent))
    try:
        table = (table_builder or build_neighbour_table)(embeddings, k)
        arrays = {"vectors": np.ascontiguousarray(embeddings.vectors, np.float32),
                  "neighbour_ids": table.ids, "neighbour_distances": table.distances}
        words = pa.table({"word": pa.array(embeddings.words.tolist(), pa.string())})
        with pa.OSFile(str(work / file_name(identifier, "words")), "wb") as sink:
            with pa.ipc.new_file(sink, words.schema) as writer:
                writer.write_table(words)
        for role, array in arrays.items():
            np.save(work / file_name(identifier, role), array)
        meta = {
            "format": FORMAT_VERSION,
            "id": identifier,
            "embeddings_fingerprint": embeddings.fingerprint,
            "words": embeddings.size,
            "dim": embeddings.dim,
            "neighbours": k,
            "diameter": table.diameter,
            "min_distance": table.min_distance,
            "neighbour_table": table_info,
            "source": source or {},
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        artifact = _write_manifest(work, meta)
        for kind in index_types:
            artifact = add_index(artifact, kind)
        target = parent / f"{PREFIX}{identifier}"
        if target.exists():  # built meanwhile by another process: keep theirs
            shutil.rmtree(work)
        else:
            work.rename(target)
        log.info("artifact %s built in %.1f s (%d words, K = %d)", identifier, time.perf_counter() - started,
                 embeddings.size, k)
        return open_local(target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def add_index(artifact: Artifact, kind: str) -> Artifact:
    """The artifact with an approximate index of ``kind`` added to its folder."""
    if kind not in INDEX_TYPES:
        raise ConfigError(f"index type must be one of {', '.join(INDEX_TYPES)}; got {kind!r}")
    if kind == "flat" or index_role(kind) in artifact.paths:
        return artifact
    directory = Path(artifact.paths["vectors"]).parent
    path = directory / file_name(artifact.id, index_role(kind))
    faiss.write_index(build_index(np.asarray(artifact.embeddings().vectors), kind), str(path) + ".tmp")
    os.replace(str(path) + ".tmp", path)
    return _write_manifest(directory, artifact.meta)


def add_array(artifact: Artifact, role: str, array: np.ndarray) -> Artifact:
    """The artifact with an extra array (e.g. a mechanism's precomputed
    lists) saved into its folder under ``role``."""
    directory = Path(artifact.paths["vectors"]).parent
    path = directory / file_name(artifact.id, role)
    with open(str(path) + ".tmp", "wb") as handle:
        np.save(handle, np.ascontiguousarray(array))
    os.replace(str(path) + ".tmp", path)
    return _write_manifest(directory, artifact.meta)


def _write_manifest(directory: Path, meta: dict[str, Any]) -> Artifact:
    identifier = meta["id"]
    files = {}
    for role in (*CORE_ROLES, *sorted(r for r in _roles_on_disk(directory, identifier) if r not in CORE_ROLES)):
        path = directory / file_name(identifier, role)
        files[role] = {"name": path.name, "bytes": path.stat().st_size, "sha256": _sha256(path)}
    meta = {**meta, "files": files}
    temporary = directory / (MANIFEST + ".tmp")
    temporary.write_text(json.dumps(meta, indent=2, sort_keys=True))
    os.replace(temporary, directory / MANIFEST)
    return Artifact(meta, {role: str(directory / f["name"]) for role, f in files.items()})


def _roles_on_disk(directory: Path, identifier: str) -> list[str]:
    roles = []
    for path in directory.iterdir():
        name = path.name
        if not name.startswith(identifier + ".") or name.endswith(".tmp"):
            continue
        rest = name[len(identifier) + 1:]
        role = next((r for r, suffix in SUFFIXES.items() if suffix == rest), None)
        roles.append(role or rest.rsplit(".", 1)[0])
    return roles


def open_local(directory: str | Path) -> Artifact:
    """An artifact folder on local disk."""
    directory = Path(directory)
    manifest = directory / MANIFEST
    if not manifest.is_file():
        raise ConfigError(f"{directory} is not a dp-spark artifact (no {MANIFEST}); build one with "
                          "`python -m dp_spark build`")
    meta = json.loads(manifest.read_text())
    if meta.get("format") != FORMAT_VERSION:
        raise ConfigError(f"artifact {directory} has format {meta.get('format')}; this dp-spark reads "
                          f"format {FORMAT_VERSION}: rebuild it")
    paths = {role: str(directory / f["name"]) for role, f in meta["files"].items()}
    missing = [os.path.basename(p) for p in paths.values() if not os.path.isfile(p)]
    if missing:
        raise ConfigError(f"artifact {directory} is incomplete: missing {', '.join(missing)}")
    return Artifact(meta, paths)


def open_artifact(location: str, cache_dir: str | Path | None = None) -> Artifact:
    """The artifact at ``location``: a local folder is used in place; one on
    HDFS or an object store is copied once into the local cache (by id,
    checked against its manifest) and used from there."""
    scheme = storage.qualify(location).split("://", 1)[0]
    if scheme == "file":
        return open_local(storage.resolve(location)[1])
    manifest = storage.join(location, MANIFEST)
    if not storage.is_file(manifest):
        raise ConfigError(f"{location} is not a dp-spark artifact (no {MANIFEST})")
    meta = json.loads(storage.read_text(manifest))
    local = Path(cache_dir or default_cache_dir()) / "artifacts" / f"{PREFIX}{meta['id']}"
    if not (local / MANIFEST).is_file():
        local.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{PREFIX}{meta['id']}-", dir=local.parent))
        try:
            for entry in meta["files"].values():
                (work / entry["name"]).write_bytes(storage.read_bytes(storage.join(location, entry["name"])))
            (work / MANIFEST).write_text(json.dumps(meta, indent=2, sort_keys=True))
            open_local(work).verify()
            work.rename(local)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    return open_local(local)


def publish_artifact(artifact: Artifact, parent: str) -> str:
    """Copy a local artifact folder under ``parent`` (any storage location):
    files first, the manifest last, so a reader never sees an artifact whose
    files are still being copied. Returns the artifact's location."""
    target = storage.join(parent, f"{PREFIX}{artifact.id}")
    for role, path in artifact.paths.items():
        storage.write_bytes(storage.join(target, os.path.basename(path)), Path(path).read_bytes())
    storage.write_text(storage.join(target, MANIFEST), json.dumps(artifact.meta, indent=2, sort_keys=True))
    return target


def build_to(
    embeddings: Embeddings,
    location: str,
    neighbours: int,
    index_types: tuple[str, ...] = (),
    source: dict[str, Any] | None = None,
    table_builder: TableBuilder | None = None,
    table: dict[str, Any] | None = None,
) -> tuple[str, Artifact]:
    """Build the artifact under ``location`` (a local folder, or any storage
    location, built locally first and then copied there); returns where it is
    and the local artifact. ``table_builder`` and ``table``: as for
    ``build_artifact`` (the table found by Spark tasks, say)."""
    if storage.qualify(location).startswith("file://"):
        artifact = build_artifact(embeddings, storage.resolve(location)[1], neighbours, index_types, source,
                                  table_builder, table)
        return str(Path(artifact.paths["vectors"]).parent), artifact
    with tempfile.TemporaryDirectory(prefix="dp-spark-build-") as work:
        artifact = build_artifact(embeddings, work, neighbours, index_types, source, table_builder, table)
        return publish_artifact(artifact, location), artifact


def cached_artifact(
    embeddings: Embeddings,
    neighbours: int,
    index_types: tuple[str, ...] = (),
    cache_dir: str | Path | None = None,
    source: dict[str, Any] | None = None,
) -> Artifact:
    """The artifact of ``embeddings`` from the local cache, built there on
    first use, with the approximate indexes asked for added if missing."""
    k = min(int(neighbours), embeddings.size - 1)
    parent = Path(cache_dir or default_cache_dir()) / "artifacts"
    directory = parent / f"{PREFIX}{artifact_id(embeddings.fingerprint, k)}"
    if (directory / MANIFEST).is_file():
        artifact = open_local(directory)
        log.info("artifact %s loaded from the cache %s", artifact.id, directory)
    else:
        artifact = build_artifact(embeddings, parent, k, source=source)
    for kind in index_types:
        artifact = add_index(artifact, kind)
    return artifact


def _sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
