"""Files and directories at any location Spark writes to, through pyarrow.fs.

The job's own bookkeeping (manifests, the ledger, the lock, staging and the
swap that publishes a table) goes through here, not through Spark's JVM
gateway, so that it works the same under classic Spark and Spark Connect,
where the driver has no JVM to talk to. Locations are local paths or URIs:
``file://``, ``hdfs://`` (needs libhdfs, as pyarrow does), ``s3://`` /
``s3a://`` (Spark's spelling, mapped to pyarrow's), ``gs://``, ``abfs[s]://``,
and ``dbfs:/`` (Databricks' FUSE mount under /dbfs).

Renames are atomic on local disks and HDFS; on object stores a directory
move is a copy and a delete, which is why publishing keeps a journal
(see ``dp_spark.spark.publish``).
"""

from __future__ import annotations

import os
import posixpath
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from dp_spark.errors import DPRuntimeError

_SCHEME_ALIASES = {"s3a": "s3", "s3n": "s3"}


def qualify(location: str) -> str:
    """One spelling per place: local paths become absolute ``file://`` URIs
    with ``..``, ``.``, repeated and trailing slashes resolved; other URIs
    keep their scheme and authority with a normalised path. ``data/base``,
    ``data/base/``, ``./data/../data/base`` and ``file:///.../data/base``
    all give the same string."""
    scheme, authority, path = _split(location)
    if scheme == "file":
        return Path(os.path.abspath(path)).resolve().as_uri()
    normalised = posixpath.normpath(path or "/")
    return f"{scheme}://{authority}{normalised if normalised != '.' else '/'}"


def _split(location: str) -> tuple[str, str, str]:
    if location.startswith("dbfs:/"):
        return "file", "", "/dbfs/" + location[len("dbfs:/"):].lstrip("/")
    parts = urlsplit(location)
    if not parts.scheme or len(parts.scheme) == 1:  # a path (or a Windows drive letter)
        return "file", "", location
    if parts.scheme == "file":
        return "file", "", parts.path
    return parts.scheme, parts.netloc, parts.path


@lru_cache(maxsize=32)
def _filesystem(scheme: str, authority: str) -> pafs.FileSystem:
    if scheme == "file":
        return pafs.LocalFileSystem()
    uri = f"{_SCHEME_ALIASES.get(scheme, scheme)}://{authority}/"
    try:
        return pafs.FileSystem.from_uri(uri)[0]
    except Exception as error:  # pyarrow raises ArrowInvalid, OSError, ...
        raise DPRuntimeError(f"cannot open the filesystem of {scheme}://{authority}: {error}") from None


def resolve(location: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem of ``location`` and the path pyarrow knows it by
    (object stores put the bucket or container first)."""
    scheme, authority, path = _split(location)
    fs = _filesystem(scheme, authority)
    if scheme == "file":
        return fs, os.path.abspath(path)
    path = posixpath.normpath(path or "/")
    scheme = _SCHEME_ALIASES.get(scheme, scheme)
    if scheme in ("s3", "gs", "gcs"):
        return fs, authority + path
    if scheme in ("abfs", "abfss"):
        return fs, authority.split("@")[0] + path
    return fs, path


def join(location: str, *names: str) -> str:
    return "/".join([location.rstrip("/"), *names])


@dataclass(frozen=True)
class Entry:
    """One directory entry: its location, whether it is a directory, and its
    modification time in nanoseconds (as the filesystem assigns it)."""

    location: str
    name: str
    is_dir: bool
    mtime_ns: int | None
    size: int | None


def _info(location: str) -> pafs.FileInfo:
    fs, path = resolve(location)
    return fs.get_file_info(path)


def exists(location: str) -> bool:
    return _info(location).type != pafs.FileType.NotFound


def is_dir(location: str) -> bool:
    return _info(location).type == pafs.FileType.Directory


def is_file(location: str) -> bool:
    return _info(location).type == pafs.FileType.File


def list_dir(location: str) -> list[Entry]:
    """The entries directly under ``location`` (none if it does not exist), sorted by name."""
    fs, path = resolve(location)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    entries = [
        Entry(join(location, info.base_name), info.base_name, info.type == pafs.FileType.Directory,
              info.mtime_ns, info.size)
        for info in infos
    ]
    return sorted(entries, key=lambda e: e.name)


def files_under(location: str) -> list[str]:
    """Every file below ``location``, as paths relative to it."""
    fs, path = resolve(location)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    prefix = path.rstrip("/") + "/"
    return sorted(info.path[len(prefix):] for info in infos if info.type == pafs.FileType.File)


def read_bytes(location: str) -> bytes:
    fs, path = resolve(location)
    with fs.open_input_stream(path) as stream:
        return stream.read()


def read_text(location: str) -> str:
    return read_bytes(location).decode("utf-8")


def write_bytes(location: str, data: bytes) -> None:
    """Write a small file whole: to a temporary name beside it, then moved
    into place, so that a reader sees the old content or the new, never half."""
    fs, path = resolve(location)
    parent = posixpath.dirname(path)
    if parent:
        fs.create_dir(parent, recursive=True)
    temporary = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    with fs.open_output_stream(temporary) as stream:
        stream.write(data)
    fs.move(temporary, path)


def write_text(location: str, text: str) -> None:
    write_bytes(location, text.encode("utf-8"))


def make_dirs(location: str) -> None:
    fs, path = resolve(location)
    fs.create_dir(path, recursive=True)


def delete(location: str) -> None:
    """Remove a file or a whole directory; nothing happens if it is absent."""
    fs, path = resolve(location)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type != pafs.FileType.NotFound:
        fs.delete_file(path)


def move(source: str, target: str) -> None:
    """Rename a file or directory (the target must not exist). Where the
    filesystem cannot rename a directory (object stores), it is copied file
    by file and the source removed."""
    fs, source_path = resolve(source)
    _, target_path = resolve(target)
    parent = posixpath.dirname(target_path)
    if parent:
        fs.create_dir(parent, recursive=True)
    try:
        fs.move(source_path, target_path)
        return
    except OSError:
        if fs.get_file_info(source_path).type != pafs.FileType.Directory:
            raise
    pafs.copy_files(source_path, target_path, source_filesystem=fs, destination_filesystem=fs)
    fs.delete_dir(source_path)


def check_writable(location: str) -> None:
    """Raise ``DPRuntimeError`` naming ``location`` unless a file can be
    created (and removed again) under it."""
    probe = join(location, f"_dp_spark_write_check-{uuid.uuid4().hex[:8]}")
    try:
        if is_file(location):
            raise OSError("it is a file, not a directory")
        write_bytes(probe, b"")
        delete(probe)
    except OSError as error:
        raise DPRuntimeError(f"cannot write under {location}: {_reason(error)}") from None


def _reason(error: OSError) -> str:
    return error.strerror or str(error).splitlines()[0]
