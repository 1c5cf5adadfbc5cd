"""Typed job configuration (TOML), validated before any data is read.

Every error names the file, the key and, where there is a fixed set, the
allowed values: ``conf/local.toml: columns[0].oov must be one of keep, drop,
replace; got 'skip'``.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dp_spark.columns import INPUT_KINDS
from dp_spark.index import DEFAULT_NEIGHBOURS, INDEX_TYPES
from dp_spark.mechanisms import MECHANISMS, mechanism_parameters
from dp_spark.mechanisms.base import OOV_POLICIES

INPUT_FORMATS = ("parquet", "orc", "json", "csv", "text", "delta", "iceberg")
OUTPUT_FORMATS = ("parquet", "orc", "json", "csv", "delta")
WRITE_MODES = ("overwrite", "error")
EMBEDDING_SOURCES = ("default", "text", "npy")
UDF_KINDS = ("map", "arrow", "pandas")
COLUMN_OUTPUTS = ("replace", "add")
# Mechanism parameters that hold objects built by the job, not config values.
_RUNTIME_PARAMETERS = {"index", "neighbours"}


class ConfigError(ValueError):
    """A configuration value is missing, unknown or invalid."""


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
        return self.dataset or self.location


@dataclass(frozen=True)
class OutputConfig:
    """``root`` holds the perturbed ``table`` and the statistics, ledger and
    manifests beside it."""

    root: str
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
    such as "," or "'s", so that no word is ever replaced by punctuation)."""

    source: str = "default"
    path: str | None = None
    vocabulary: str | None = None
    vocab_size: int | None = None
    words_only: bool = True


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
    oov: str = "keep"
    placeholder: str = "<unk>"
    output: str = "replace"
    output_column: str | None = None

    @property
    def output_name(self) -> str:
        """``output_column`` if given, else the column itself ("replace") or "<name>_dp" ("add")."""
        if self.output_column:
            return self.output_column
        return self.name if self.output == "replace" else f"{self.name}_dp"


@dataclass(frozen=True)
class JobConfig:
    """``id_column``: row key for the noise (stable across partitionings);
    without it rows are keyed by partition index and position. ``min_count``:
    substitution counts below it are suppressed. ``udf``: ``map`` (one
    mapInArrow pass for all columns, measured fastest), ``arrow`` or ``pandas``
    (a column UDF each). ``privacy_stats`` summarises N_w and S_w of each
    column's mechanism over ``deniability_sample`` vocabulary words x
    ``deniability_draws`` draws, or reads them from ``calibration_table`` (a
    ``calibration_summary`` written by the calibrate job) when given."""

    id_column: str | None = None
    min_count: int = 10
    udf: str = "map"
    max_records_per_batch: int = 10_000
    deniability_sample: int = 200
    deniability_draws: int = 100
    calibration_table: str | None = None


@dataclass(frozen=True)
class Config:
    input: InputConfig
    output: OutputConfig
    columns: tuple[ColumnConfig, ...]
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
    (ColumnConfig, "output"): COLUMN_OUTPUTS,
    (JobConfig, "udf"): UDF_KINDS,
}
_POSITIVE = {(IndexConfig, "neighbours"), (JobConfig, "min_count"), (EmbeddingsConfig, "vocab_size"),
             (ColumnConfig, "epsilon"), (JobConfig, "max_records_per_batch"),
             (JobConfig, "deniability_sample"), (JobConfig, "deniability_draws")}


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML job configuration."""
    return parse_config(read_toml(path), source=str(path))


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file's document; a missing or malformed file is a ConfigError."""
    try:
        with Path(path).open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None


def parse_config(document: dict[str, Any], source: str = "<config>") -> Config:
    sections = {"input", "output", "columns", "embeddings", "index", "job"}
    _reject_unknown(document, sections, source, "the top level")
    for required in ("input", "output", "columns"):
        if required not in document:
            raise ConfigError(f"{source}: missing section [{required}]")
    columns = document["columns"]
    if not isinstance(columns, list) or not columns:
        raise ConfigError(f"{source}: [[columns]] must list at least one column to perturb")
    config = Config(
        input=_section(InputConfig, document["input"], source, "input"),
        output=_section(OutputConfig, document["output"], source, "output"),
        columns=tuple(
            _section(ColumnConfig, column, source, f"columns[{i}]") for i, column in enumerate(columns)
        ),
        embeddings=_section(EmbeddingsConfig, document.get("embeddings", {}), source, "embeddings"),
        index=_section(IndexConfig, document.get("index", {}), source, "index"),
        job=_section(JobConfig, document.get("job", {}), source, "job"),
        source=source,
    )
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


def _reject_unknown(table: dict[str, Any], allowed: set[str], source: str, where: str) -> None:
    unknown = sorted(set(table) - allowed)
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
    outputs: dict[str, str] = {}
    for i, column in enumerate(config.columns):
        where = f"columns[{i}]"
        allowed = [p for p in mechanism_parameters(column.mechanism) if p not in _RUNTIME_PARAMETERS]
        unknown = sorted(set(column.params) - set(allowed))
        if unknown:
            raise ConfigError(
                f"{source}: {where}.params: unknown parameter(s) {', '.join(unknown)} for mechanism "
                f"{column.mechanism!r}; allowed: {', '.join(allowed) or 'none'}"
            )
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
    partition_columns = set(config.output.partition_by)
    perturbed = {c.name for c in config.columns} | {c.output_name for c in config.columns}
    if partition_columns & perturbed:
        raise ConfigError(
            f"{source}: output.partition_by cannot include perturbed column(s) "
            f"{', '.join(sorted(partition_columns & perturbed))}"
        )
