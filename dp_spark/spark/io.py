"""Reading the input and writing the perturbed table, checked before any
data moves: the formats exist, partition values have the column's type,
options are ones the writer knows, and no error message ever carries a row.

Malformed CSV or JSON records: Spark's own FAILFAST puts the whole record
into its error, which then reaches stderr, the Spark logs, the event log and
the manifest. So a FAILFAST input is read PERMISSIVE into a corrupt-record
column instead, and the perturbation pass stops at the first malformed
record with an error naming the file and position, never the content.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from typing import Any

from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from dp_spark.config import InputConfig, OutputConfig
from dp_spark.errors import ConfigError, InputError

log = logging.getLogger(__name__)

CORRUPT_COLUMN = "_dp_corrupt_record"
SOURCE_FILE_COLUMN = "_dp_source_file"
TEXT_FORMATS = ("csv", "json")
TRANSACTIONAL_FORMATS = ("delta", "iceberg")
BUILT_IN_FORMATS = ("parquet", "orc", "json", "csv", "text")
COMPRESSIONS = {
    "parquet": ("none", "uncompressed", "snappy", "gzip", "lzo", "brotli", "lz4", "lz4_raw", "zstd"),
    "orc": ("none", "uncompressed", "snappy", "zlib", "lzo", "zstd", "lz4", "brotli"),
    "json": ("none", "uncompressed", "bzip2", "gzip", "lz4", "snappy", "deflate", "zstd"),
    "csv": ("none", "uncompressed", "bzip2", "gzip", "lz4", "snappy", "deflate", "zstd"),
}


@dataclass(frozen=True)
class Input:
    """The input DataFrame and, for a FAILFAST text input, the columns the
    perturbation pass checks for malformed records (then drops)."""

    frame: DataFrame
    malformed: tuple[str, str] | None = None

    @property
    def columns(self) -> list[str]:
        hidden = set(self.malformed or ())
        return [c for c in self.frame.columns if c not in hidden]


def parse_partitions(values: list[str]) -> dict[str, str]:
    """``--partition KEY=VALUE`` flags; a ``/`` in a value is refused (it
    would read as a nested partition path)."""
    partitions = {}
    for value in values:
        key, sep, raw = value.partition("=")
        if not sep or not key:
            raise ConfigError(f"--partition expects KEY=VALUE, got {value!r}")
        if "/" in raw or "/" in key:
            raise ConfigError(f"--partition {value}: a partition value cannot contain '/'")
        partitions[key] = raw
    return partitions


def typed_partitions(schema: T.StructType, partitions: dict[str, str]) -> dict[str, Any]:
    """Partition values cast to their column's type (``rating=05`` on an int
    column is 5), as JSON-able values for the ledger."""
    typed = {}
    for key, raw in partitions.items():
        if key not in schema.fieldNames():
            raise InputError(f"--partition {key}={raw}: the input has no column {key!r} "
                             f"(columns: {', '.join(schema.fieldNames())})")
        data_type = schema[key].dataType
        try:
            if isinstance(data_type, (T.ByteType, T.ShortType, T.IntegerType, T.LongType)):
                typed[key] = int(raw)
            elif isinstance(data_type, (T.FloatType, T.DoubleType, T.DecimalType)):
                typed[key] = float(raw)
            elif isinstance(data_type, T.BooleanType):
                if raw.lower() not in ("true", "false"):
                    raise ValueError
                typed[key] = raw.lower() == "true"
            elif isinstance(data_type, T.DateType):
                typed[key] = datetime.date.fromisoformat(raw).isoformat()
            elif isinstance(data_type, T.StringType):
                typed[key] = raw
            else:
                raise InputError(f"--partition {key}={raw}: column {key!r} has type "
                                 f"{data_type.simpleString()}, which cannot select a partition")
        except ValueError:
            raise InputError(f"--partition {key}={raw}: column {key!r} has type {data_type.simpleString()} "
                             f"and {raw!r} is not a value of it") from None
    return typed


def read_input(spark: SparkSession, config: InputConfig) -> Input:
    """The input table (lazily: only its schema is resolved)."""
    options = dict(config.options)
    malformed = None
    try:
        if config.table:
            return Input(spark.table(config.table))
        fail_fast = config.format in TEXT_FORMATS and options.get("mode", "").upper() == "FAILFAST"
        if fail_fast:
            options.update(mode="PERMISSIVE", columnNameOfCorruptRecord=CORRUPT_COLUMN)
        reader = spark.read.format(config.format).options(**options)
        schema = config.schema
        if fail_fast:
            schema = f"{schema or _inferred_schema(spark, config)}, {CORRUPT_COLUMN} STRING"
        if schema:
            reader = reader.schema(schema)
        frame = reader.load(config.path)
        frame = _label_and_text_lines(frame, config)
        if fail_fast:
            frame = frame.withColumn(SOURCE_FILE_COLUMN, F.input_file_name())
            malformed = (CORRUPT_COLUMN, SOURCE_FILE_COLUMN)
        frame.schema  # resolve now: a missing path or format fails here, not in a task
    except AnalysisException as error:
        if config.schema and ("PARSE_SYNTAX_ERROR" in str(error) or "UNSUPPORTED_DATATYPE" in str(error)):
            raise ConfigError(f"input.schema is not a valid DDL schema ({_first_line(error)})") from None
        raise describe_analysis_error(error, f"input {config.location}") from None
    return Input(frame, malformed)


def _inferred_schema(spark: SparkSession, config: InputConfig) -> str:
    """The DDL of the schema Spark infers from the files (reads a sample of them)."""
    options = {k: v for k, v in config.options.items() if k != "mode"}
    return spark.read.format(config.format).options(**options).load(config.path).schema.toDDL()


def _label_and_text_lines(frame: DataFrame, config: InputConfig) -> DataFrame:
    """With ``format = "text"`` and ``options.line_format = "label_text"``,
    each line is a label, whitespace, then the text (the usual layout of
    sentiment benchmarks): columns ``label`` and ``text``, nulls for a blank
    line. Other inputs pass unchanged."""
    line_format = config.options.get("line_format")
    if line_format is None:
        return frame
    if config.format != "text" or line_format != "label_text":
        raise ConfigError(f"input.options.line_format = {line_format!r}: the one line format is 'label_text', "
                          f"read with input.format = 'text' (got format {config.format!r})")
    line = F.col("value")
    blank = line.rlike(r"^\s*$")
    return frame.select(
        F.when(~blank, F.regexp_extract(line, r"^\s*(\S+)", 1)).alias("label"),
        F.when(~blank, F.regexp_extract(line, r"^\s*\S+\s+(.*?)\s*$", 1)).alias("text"),
    )


def check_output(spark: SparkSession, config: OutputConfig, schema: T.StructType, probe_location: str) -> None:
    """Refuse, before anything is written, an output Spark could not write:
    a format whose data source is not on the classpath, an unknown
    compression, or a type the format cannot hold."""
    if config.table is None and config.format not in BUILT_IN_FORMATS:
        try:
            spark.read.format(config.format).load(probe_location).schema
        except Exception as error:  # a missing source is a class-not-found error, not an AnalysisException
            if "DATA_SOURCE_NOT_FOUND" in str(error) or "Failed to find the data source" in str(error):
                raise ConfigError(f"output.format = {config.format!r}: Spark has no such data source on its "
                                  "classpath (add its package, e.g. --packages for delta)") from None
            if not isinstance(error, AnalysisException):
                raise
    codec = config.options.get("compression")
    if codec is not None and config.format in COMPRESSIONS and codec.lower() not in COMPRESSIONS[config.format]:
        raise ConfigError(f"output.options.compression = {codec!r} is not a {config.format} codec; one of "
                          f"{', '.join(COMPRESSIONS[config.format])}")
    if config.format == "csv":
        nested = [f.name for f in schema.fields if isinstance(f.dataType, (T.ArrayType, T.MapType, T.StructType))]
        if nested:
            raise ConfigError(f"output.format = 'csv' cannot hold column(s) {', '.join(nested)} (array, map or "
                              "struct): choose parquet, orc or json")


def describe_analysis_error(error: AnalysisException, what: str) -> Exception:
    """An AnalysisException as one line naming ``what`` (no row content can
    be in one: analysis happens before data is read)."""
    text = str(error)
    if "PATH_NOT_FOUND" in text or "Path does not exist" in text:
        return InputError(f"{what}: the path does not exist")
    if "DATA_SOURCE_NOT_FOUND" in text:
        return ConfigError(f"{what}: Spark has no data source for this format on its classpath")
    if "TABLE_OR_VIEW_NOT_FOUND" in text:
        return InputError(f"{what}: no such table in the catalog")
    return InputError(f"{what}: {_first_line(error)}")


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
