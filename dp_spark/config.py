"""Typed configuration (TOML), validated before any data is read.

Every error names the file, the key and, where there is a fixed set, the
allowed values: ``conf/local.toml: columns[0].oov must be one of keep, drop,
replace; got 'skip'``. Mechanism parameters are checked here too, by
building each column's mechanism on a tiny stand-in vocabulary, so that a
bad value fails in a second rather than after the embeddings load.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dp_spark import storage
from dp_spark.columns import ENTITY_POLICIES, INPUT_KINDS
from dp_spark.errors import ConfigError
from dp_spark.index import DEFAULT_NEIGHBOURS, INDEX_TYPES
from dp_spark.mechanisms import MECHANISMS, mechanism_parameters
from dp_spark.mechanisms.base import OOV_POLICIES

INPUT_FORMATS = ("parquet", "orc", "json", "csv", "text", "delta", "iceberg")
OUTPUT_FORMATS = ("parquet", "orc", "json", "csv", "delta")
WRITE_MODES = ("overwrite", "error")
EMBEDDING_SOURCES = ("default", "text", "npy")
COLUMN_OUTPUTS = ("replace", "add")
# Mechanism parameters that hold objects built by the job, not config values.
_RUNTIME_PARAMETERS = {"index", "neighbours", "word_lists"}


@dataclass(frozen=True)
class InputConfig:
    """``path`` (files) or ``table`` (catalog name); ``dataset`` names the data
    in the privacy ledger (default: the path or table)."""

    path: str | None = None
    table: str | None = None
    format: str = "parquet"
    options: dict[str, str] = field(default_factory=dict)
    schema: str | None = None
    dataset: str | None = None

    @property
    def location(self) -> str:
        return self.table or self.path or ""

    @property
    def dataset_name(self) -> str:
        """The name the ledger books releases under: ``dataset`` when given
        (the robust choice), else the table name or the qualified path, so
        that ``data/x``, ``data/x/`` and ``file:///.../data/x`` are one dataset."""
        if self.dataset:
            return self.dataset
        return self.table or storage.qualify(self.path or "")


@dataclass(frozen=True)
class OutputConfig:
    """``root`` holds the perturbed ``table`` and the statistics, ledger and
    manifests beside it; ``table`` (``db.name``) writes the perturbed table to
    the catalog instead of ``root/table``."""

    root: str
    table: str | None = None
    format: str = "parquet"
    mode: str = "overwrite"
    partition_by: tuple[str, ...] = ()
    options: dict[str, str] = field(default_factory=dict)

    def location(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"


@dataclass(frozen=True)
class EmbeddingsConfig:
    """``default`` (GloVe 6B 50d), ``text`` (GloVe/word2vec at ``path``) or
    ``npy`` (matrix at ``path``, words in ``vocabulary``). ``vocab_size`` keeps
    the first (most frequent) words: by default 100,000 of GloVe and all of a
    file. ``words_only`` keeps
    only entries the tokenizer can produce as words (drops punctuation entries
    such as "," or "--", so that no word is ever replaced by punctuation).
    ``min_word_distance`` drops every word closer than it to a more frequent
    word (near-duplicate junk tokens would otherwise set the vocabulary's
    minimum distance, which calibrates tgumbel).
    ``artifact``: a folder built by ``python -m dp_spark build`` (any
    storage location); the other keys are then ignored."""

    source: str = "default"
    path: str | None = None
    vocabulary: str | None = None
    vocab_size: int | None = None
    words_only: bool = True
    min_word_distance: float | None = None
    artifact: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "EmbeddingsConfig":
        return _section(cls, values, "embeddings", "embeddings")


@dataclass(frozen=True)
class IndexConfig:
    type: str = "flat"
    neighbours: int = DEFAULT_NEIGHBOURS
    cache_dir: str | None = None


@dataclass(frozen=True)
class ColumnConfig:
    name: str
    mechanism: str
    epsilon: float
    params: dict[str, Any] = field(default_factory=dict)
    kind: str = "auto"
    oov: str = "replace"
    placeholder: str = "<unk>"
    entities: str = "replace"
    output: str = "replace"
    output_column: str | None = None
    accept_no_guarantee: bool = False

    @property
    def output_name(self) -> str:
        """``output_column`` if given, else the column itself ("replace") or "<name>_dp" ("add")."""
        if self.output_column:
            return self.output_column
        return self.name if self.output == "replace" else f"{self.name}_dp"


@dataclass(frozen=True)
class JobConfig:
    """``id_column``: row key for the noise (stable across partitionings; it
    must be unique: duplicates are refused); without it rows are keyed by
    partition index and position. ``min_count``: substitution counts below it
    are suppressed. ``privacy_stats`` summarises N_w and S_w of each
    column's mechanism over ``deniability_sample`` vocabulary words x
    ``deniability_draws`` draws, or reads them from ``calibration_table`` (a
    ``calibration_summary`` written by the calibrate job) when given."""

    id_column: str | None = None
    min_count: int = 10
    max_records_per_batch: int = 10_000
    deniability_sample: int = 200
    deniability_draws: int = 100
    calibration_table: str | None = None


@dataclass(frozen=True)
class Config:
    """One model for every command: ``perturb`` needs [input], [output] and
    [[columns]]; ``build``, ``calibrate`` and ``audit`` read [embeddings] and
    [index] (and their own section); ``evaluate`` needs [input] and
    [evaluation]."""

    input: InputConfig | None = None
    output: OutputConfig | None = None
    columns: tuple[ColumnConfig, ...] = ()
    embeddings: EmbeddingsConfig = field(default_factory=EmbeddingsConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    job: JobConfig = field(default_factory=JobConfig)
    source: str = "<config>"

    def with_overrides(self, input_path: str | None = None, output_root: str | None = None) -> "Config":
        config = self
        if input_path:
            config = dataclasses.replace(
                config, input=dataclasses.replace(config.input, path=input_path, table=None)
            )
        if output_root:
            config = dataclasses.replace(
                config, output=dataclasses.replace(config.output, root=output_root)
            )
        return config

    def to_dict(self) -> dict[str, Any]:
        resolved = dataclasses.asdict(self)
        resolved.pop("source")
        return resolved


_CHOICES = {
    (InputConfig, "format"): INPUT_FORMATS,
    (OutputConfig, "format"): OUTPUT_FORMATS,
    (OutputConfig, "mode"): WRITE_MODES,
    (EmbeddingsConfig, "source"): EMBEDDING_SOURCES,
    (IndexConfig, "type"): INDEX_TYPES,
    (ColumnConfig, "mechanism"): tuple(sorted(MECHANISMS)),
    (ColumnConfig, "kind"): ("auto", *INPUT_KINDS),
    (ColumnConfig, "oov"): OOV_POLICIES,
    (ColumnConfig, "entities"): ENTITY_POLICIES,
    (ColumnConfig, "output"): COLUMN_OUTPUTS,
}
_POSITIVE = {(IndexConfig, "neighbours"), (JobConfig, "min_count"), (EmbeddingsConfig, "vocab_size"),
             (EmbeddingsConfig, "min_word_distance"),
             (ColumnConfig, "epsilon"), (JobConfig, "max_records_per_batch"),
             (JobConfig, "deniability_sample"), (JobConfig, "deniability_draws")}


COMMAND_SECTIONS = {
    "perturb": ("input", "output", "columns"),
    "build": (),
    "evaluate": ("input",),
}


def load_config(path: str | Path, command: str = "perturb") -> Config:
    """Read and validate a TOML configuration for ``command``."""
    return parse_config(read_toml(path), source=str(path), command=command)


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file's document; a missing or malformed file is a ConfigError."""
    try:
        with Path(path).open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None


def parse_config(document: dict[str, Any], source: str = "<config>", command: str = "perturb") -> Config:
    sections = {"input", "output", "columns", "embeddings", "index", "job"}
    _reject_unknown(document, sections, source, "the top level")
    for required in COMMAND_SECTIONS[command]:
        if required not in document:
            raise ConfigError(f"{source}: missing section [{required}]")
    columns = document.get("columns", [])
    if command == "perturb" and (not isinstance(columns, list) or not columns):
        raise ConfigError(f"{source}: [[columns]] must list at least one column to perturb")
    config = Config(
        input=_section(InputConfig, document["input"], source, "input") if "input" in document else None,
        output=_section(OutputConfig, document["output"], source, "output") if "output" in document else None,
        columns=tuple(
            _section(ColumnConfig, column, source, f"columns[{i}]") for i, column in enumerate(columns)
        ),
        embeddings=_section(EmbeddingsConfig, document.get("embeddings", {}), source, "embeddings"),
        index=_section(IndexConfig, document.get("index", {}), source, "index"),
        job=_section(JobConfig, document.get("job", {}), source, "job"),
        source=source,
    )
    if command == "perturb":
        _check_relations(config)
    return config


def _section(cls: type, table: Any, source: str, where: str) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: {where} must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _reject_unknown(table, set(fields), source, where)
    hints = typing.get_type_hints(cls)
    values = {}
    for name, spec in fields.items():
        if name not in table:
            if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{source}: missing required key {where}.{name}")
            continue
        values[name] = _typed(table[name], hints[name], source, f"{where}.{name}")
        allowed = _CHOICES.get((cls, name))
        if allowed and values[name] not in allowed:
            raise ConfigError(
                f"{source}: {where}.{name} must be one of {', '.join(allowed)}; got {values[name]!r}"
            )
        if (cls, name) in _POSITIVE and values[name] is not None and not values[name] > 0:
            raise ConfigError(f"{source}: {where}.{name} must be positive, got {values[name]!r}")
        if isinstance(values[name], float) and not math.isfinite(values[name]):
            raise ConfigError(f"{source}: {where}.{name} must be finite, got {values[name]!r}")
    return cls(**values)


def _typed(value: Any, hint: Any, source: str, where: str) -> Any:
    """Check ``value`` against a field's type hint; lists become tuples."""
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    expected = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in expected:
        if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
            return value
        raise ConfigError(f"{source}: {where} must be {expected[hint]}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{source}: {where} must be a list of strings, got {value!r}")
        return tuple(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {where} must be a table, got {value!r}")
        if args and args[1] is str:
            return {str(k): _option_string(v, source, f"{where}.{k}") for k, v in value.items()}
        return dict(value)
    raise TypeError(f"unsupported config type {hint}")  # a bug in this module, not in the config


def _option_string(value: Any, source: str, where: str) -> str:
    """Reader/writer options are strings to Spark; TOML booleans are spelled its way."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    raise ConfigError(f"{source}: {where} must be a string, number or boolean, got {value!r}")


# A neighbour table beyond this is a memory error waiting to happen (8 bytes
# per word and neighbour), and no mechanism gains from it.
MAX_NEIGHBOURS = 4096

_REMOVED = {"udf": "job.udf was removed: every column runs in one mapInArrow pass (measured fastest)"}


def _reject_unknown(table: dict[str, Any], allowed: set[str], source: str, where: str) -> None:
    unknown = sorted(set(table) - allowed)
    for key in unknown:
        if key in _REMOVED:
            raise ConfigError(f"{source}: {_REMOVED[key]}")
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(unknown)} in {where}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )


def _check_relations(config: Config) -> None:
    source = config.source
    if bool(config.input.path) == bool(config.input.table):
        raise ConfigError(f"{source}: input needs exactly one of input.path or input.table")
    embeddings = config.embeddings
    if embeddings.source != "default" and not embeddings.path:
        raise ConfigError(f"{source}: embeddings.path is required when embeddings.source = {embeddings.source!r}")
    if embeddings.source == "npy" and not embeddings.vocabulary:
        raise ConfigError(f"{source}: embeddings.vocabulary is required when embeddings.source = 'npy'")
    if config.index.neighbours > MAX_NEIGHBOURS:
        raise ConfigError(f"{source}: index.neighbours = {config.index.neighbours} is more than {MAX_NEIGHBOURS}: the "
                          f"neighbour table holds |V| x K ids and distances (K = {config.index.neighbours} on 100,000 "
                          f"words: {config.index.neighbours * 8e5 / 2**30:.1f} GiB)")
    if not config.output.root.strip():
        raise ConfigError(f"{source}: output.root must name a directory, got an empty string")
    if embeddings.artifact and embeddings.source != "default":
        raise ConfigError(f"{source}: embeddings.artifact replaces embeddings.source; give one of them")
    outputs: dict[str, str] = {}
    for i, column in enumerate(config.columns):
        where = f"columns[{i}]"
        check_mechanism(column.mechanism, column.epsilon, column.params, f"{source}: {where}")
        if column.output_name in outputs:
            raise ConfigError(f"{source}: {where} and {outputs[column.output_name]} both write column "
                              f"{column.output_name!r}")
        outputs[column.output_name] = where
    # A column read by several entries (to compare mechanisms) must not be
    # overwritten by one of them: the others would read perturbed text.
    for i, column in enumerate(config.columns):
        for j, other in enumerate(config.columns):
            if i != j and other.output_name == column.name:
                raise ConfigError(f"{source}: columns[{j}] writes column {column.name!r}, which "
                                  f"columns[{i}] reads; write it to another column (output = \"add\" "
                                  f"or output_column)")
    if config.input.path:
        source_location = storage.qualify(config.input.path)
        root = storage.qualify(config.output.root)
        table = storage.qualify(config.output.location("table"))
        for label, location in (("the output table", table), ("the output root", root)):
            if source_location == location or source_location.startswith(location + "/"):
                raise ConfigError(f"{source}: input.path {config.input.path} is {label} or inside it: "
                                  "the run would overwrite its own input")
        if root.startswith(source_location + "/"):
            raise ConfigError(f"{source}: output.root {config.output.root} is inside input.path "
                              f"{config.input.path}: the run would write into its own input")
    partition_columns = set(config.output.partition_by)
    perturbed = {c.name for c in config.columns} | {c.output_name for c in config.columns}
    if partition_columns & perturbed:
        raise ConfigError(
            f"{source}: output.partition_by cannot include perturbed column(s) "
            f"{', '.join(sorted(partition_columns & perturbed))}"
        )


def parse_value(text: str) -> Any:
    """A parameter given as text on the command line: an integer, a number,
    true/false/none, or the text itself."""
    named = {"true": True, "false": False, "none": None}
    if text.lower() in named:
        return named[text.lower()]
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def check_mechanism(name: str, epsilon: float, params: dict[str, Any], where: str) -> None:
    """Check a mechanism's parameters before any embeddings load, by building
    it on a tiny stand-in vocabulary (points 1,000 apart, so that no
    vocabulary-dependent bound on epsilon trips here; those are checked on the
    real vocabulary): an unknown parameter or a bad value is a ConfigError
    naming ``where`` (file and column)."""
    from dp_spark.mechanisms import build_mechanism, mechanism_class

    allowed = [p for p in mechanism_parameters(name) if p not in _RUNTIME_PARAMETERS]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(
            f"{where}.params: unknown parameter(s) {', '.join(unknown)} for mechanism "
            f"{name!r}; allowed: {', '.join(allowed) or 'none'}"
        )
    vocabulary, neighbours, index = _stand_in()
    cls = mechanism_class(name)
    extra: dict[str, Any] = {}
    if cls.needs_neighbours:
        extra["neighbours"] = neighbours
    if cls.needs_index:
        extra["index"] = index
    try:
        build_mechanism(name, vocabulary, epsilon, **params, **extra)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{where}: mechanism {name!r}: {error}") from None


def _stand_in() -> tuple[Any, Any, Any]:
    """16 words on a grid (with distinct distances), their full neighbour
    table and a flat index: built once, never cached on disk."""
    if not _STAND_IN:
        from dp_spark.embeddings import Embeddings
        from dp_spark.index import build_index, build_neighbour_table

        grid = np.array([[x, y] for x in range(4) for y in range(4)], dtype=np.float32) * 1000.0
        grid[:, 0] += np.arange(16, dtype=np.float32) * 37.0
        vocabulary = Embeddings.from_arrays([f"w{i}" for i in range(16)], grid)
        _STAND_IN.extend([vocabulary, build_neighbour_table(vocabulary, 15), build_index(grid, "flat")])
    return tuple(_STAND_IN)


_STAND_IN: list[Any] = []
