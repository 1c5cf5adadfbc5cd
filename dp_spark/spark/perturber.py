"""``DPTextPerturber``: the perturbation as a pyspark.ml Transformer, and
``perturb``, which applies several perturbers in one pass.

All columns are perturbed in one ``mapInArrow`` pass over whole record
batches: set-up once per task (the worker's memory-mapped runtime), then per
batch strings -> ids -> mechanism -> strings, in Arrow and numpy. The same
code runs on classic Spark and Spark Connect (no SparkContext, broadcast or
accumulator anywhere). Statistics, when asked for, come back as extra rows of
the same pass (``dp_spark.spark.statistics``).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark import keyword_only
from pyspark.ml import Transformer
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasInputCol, HasOutputCol
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from dp_spark.columns import ColumnPerturbation
from dp_spark.config import EmbeddingsConfig, IndexConfig
from dp_spark.embeddings import Embeddings
from dp_spark.errors import ConfigError, InputError, PrivacyRefusal
from dp_spark.guarantees import Guarantee
from dp_spark.ledger import row_key_label
from dp_spark.mechanisms import Mechanism
from dp_spark.randomness import GeneratorRandom, KeyedRandom, mix64, release_key, token_keys
from dp_spark.resources import Runtime, artifact_for, complete_params
from dp_spark.spark.shipping import (
    ShippedArtifact,
    ShippedFiles,
    ship_artifact,
    ship_keys,
    worker_keys,
    worker_runtime,
)
from dp_spark.spark.statistics import STAT_ARROW_TYPE, STAT_COLUMN, STAT_SPARK_TYPE, statistics_batch, statistics_rows
from dp_spark.stats import StatisticsBuilder


def input_kind(schema: T.StructType, column: str, kind: str = "auto") -> str:
    """``string`` or ``tokens`` for a column, checked against the schema."""
    if column not in schema.fieldNames():
        raise InputError(f"input has no column {column!r} (columns: {', '.join(schema.fieldNames())})")
    data_type = schema[column].dataType
    actual = (
        "string"
        if isinstance(data_type, T.StringType)
        else "tokens"
        if isinstance(data_type, T.ArrayType) and isinstance(data_type.elementType, T.StringType)
        else None
    )
    if actual is None:
        raise InputError(
            f"column {column!r} has type {data_type.simpleString()}; "
            f"only string and array<string> columns can be perturbed"
        )
    if kind != "auto" and kind != actual:
        expected = "string" if kind == "string" else "array<string>"
        raise InputError(
            f"column {column!r} is configured as kind {kind!r} ({expected}) but has type "
            f"{data_type.simpleString()}"
        )
    return actual


def check_id_column(schema: T.StructType, id_column: str) -> None:
    """The row-key column exists and holds scalar values."""
    if id_column not in schema.fieldNames():
        raise InputError(f"input has no id column {id_column!r} (columns: {', '.join(schema.fieldNames())})")
    data_type = schema[id_column].dataType
    if isinstance(data_type, (T.StructType, T.ArrayType, T.MapType, T.BinaryType)):
        raise InputError(f"id column {id_column!r} has type {data_type.simpleString()}; a row key must be a "
                         "string, number or date")


class DPTextPerturber(Transformer, HasInputCol, HasOutputCol, DefaultParamsReadable, DefaultParamsWritable):
    """Perturb a string or array<string> column with a word-level metric-DP mechanism.

    >>> perturber = DPTextPerturber(inputCol="text", outputCol="text_dp",
    ...                             mechanism="mlap", epsilon=10.0)
    >>> perturber.transform(df)  # doctest: +SKIP

    The embeddings (or a built artifact) are a Param, so a saved and reloaded
    pipeline perturbs with the same vocabulary, and the fingerprint of the
    vocabulary it first ran with is kept and checked. The seed is a secret
    and is not a Param (Params are saved with a pipeline): each perturber
    draws a fresh 128-bit seed; set one with ``setSeed`` for tests and
    reproduction only. A mechanism that promises no guarantee (tgumbel,
    santext+, kde mh, ...) runs only with ``acceptNoGuarantee=True``.
    """

    mechanism = Param(Params._dummy(), "mechanism", "mechanism name", TypeConverters.toString)
    epsilon = Param(Params._dummy(), "epsilon", "privacy per token", TypeConverters.toFloat)
    mechanismParams = Param(
        Params._dummy(), "mechanismParams", "mechanism parameters as JSON", TypeConverters.toString
    )
    inputKind = Param(Params._dummy(), "inputKind", "auto, string or tokens", TypeConverters.toString)
    oov = Param(Params._dummy(), "oov", "keep, drop or replace", TypeConverters.toString)
    placeholder = Param(Params._dummy(), "placeholder", "OOV replacement", TypeConverters.toString)
    entities = Param(Params._dummy(), "entities", "replace (urls, emails, phones, numbers by placeholders) or keep",
                     TypeConverters.toString)
    idCol = Param(Params._dummy(), "idCol", "row key column (optional)", TypeConverters.toString)
    embeddings = Param(Params._dummy(), "embeddings", "embeddings or artifact, as JSON", TypeConverters.toString)
    embeddingsFingerprint = Param(
        Params._dummy(), "embeddingsFingerprint", "fingerprint of the vocabulary first used", TypeConverters.toString
    )
    neighbours = Param(Params._dummy(), "neighbours", "neighbour table size K", TypeConverters.toInt)
    indexType = Param(Params._dummy(), "indexType", "flat, hnsw or ivf", TypeConverters.toString)
    acceptNoGuarantee = Param(
        Params._dummy(), "acceptNoGuarantee", "run a mechanism that promises nothing", TypeConverters.toBoolean
    )

    @keyword_only
    def __init__(
        self,
        *,
        inputCol: str | None = None,
        outputCol: str | None = None,
        mechanism: str = "mlap",
        epsilon: float = 10.0,
        mechanismParams: str = "{}",
        inputKind: str = "auto",
        oov: str = "replace",
        placeholder: str = "<unk>",
        entities: str = "replace",
        idCol: str | None = None,
        embeddings: str = "{}",
        neighbours: int = 64,
        indexType: str = "flat",
        acceptNoGuarantee: bool = False,
    ) -> None:
        super().__init__()
        self._setDefault(
            mechanism="mlap", epsilon=10.0, mechanismParams="{}", inputKind="auto", oov="replace",
            placeholder="<unk>", entities="replace", embeddings="{}", neighbours=64, indexType="flat",
            acceptNoGuarantee=False,
        )
        self._set(**self._input_kwargs)
        self._seed = secrets.token_bytes(16)
        self._custom_mechanism: Callable[[Embeddings], Mechanism] | None = None
        self._runtime: Runtime | None = None

    def setSeed(self, seed: bytes | int) -> "DPTextPerturber":
        self._seed = seed if isinstance(seed, bytes) else str(seed).encode()
        return self

    def setEmbeddings(self, config: EmbeddingsConfig) -> "DPTextPerturber":
        """Embeddings to load, or ``EmbeddingsConfig(artifact=...)`` for a built artifact."""
        return self._set(embeddings=json.dumps(config.to_dict(), sort_keys=True))

    def setCustomMechanism(self, factory: Callable[[Embeddings], Mechanism]) -> "DPTextPerturber":
        """Use ``factory(embeddings)`` instead of a registered mechanism (the
        ``mechanism`` Param then only names it): an extension point for
        mechanisms of one's own. The factory is pickled into the tasks; the
        mechanism's ``guarantee()`` is booked (none unless it states one)."""
        self._custom_mechanism = factory
        return self

    def setRuntime(self, runtime: Runtime) -> "DPTextPerturber":
        """Share a runtime (artifact and mechanisms) already loaded on the driver."""
        self._runtime = runtime
        return self

    def embeddings_config(self) -> EmbeddingsConfig:
        try:
            return EmbeddingsConfig.from_dict(json.loads(self.getOrDefault(self.embeddings)))
        except (ValueError, TypeError) as error:
            raise ConfigError(f"DPTextPerturber embeddings: {error}") from None

    def mechanism_params(self) -> dict[str, Any]:
        """The mechanismParams, with the index type filled in where the mechanism searches."""
        try:
            params = json.loads(self.getOrDefault(self.mechanismParams))
        except ValueError as error:
            raise ConfigError(f"mechanismParams is not valid JSON: {error}") from None
        if not isinstance(params, dict):
            raise ConfigError("mechanismParams must be a JSON object")
        if self._custom_mechanism is not None:
            return params
        return complete_params(self.getOrDefault(self.mechanism), params, self.getOrDefault(self.indexType))

    def runtime(self) -> Runtime:
        """The driver's runtime: the artifact loaded (or built) once."""
        if self._runtime is None:
            name = self.getOrDefault(self.mechanism)
            mechanisms = [] if self._custom_mechanism is not None else [(name, self.mechanism_params())]
            index = IndexConfig(type=self.getOrDefault(self.indexType), neighbours=self.getOrDefault(self.neighbours))
            self._runtime = Runtime(artifact_for(self.embeddings_config(), index, mechanisms))
        fingerprint = self._runtime.artifact.fingerprint
        if self.isSet(self.embeddingsFingerprint) and self.getOrDefault(self.embeddingsFingerprint) != fingerprint:
            raise ConfigError(
                f"DPTextPerturber was saved after running on embeddings "
                f"{self.getOrDefault(self.embeddingsFingerprint)[:16]}..., but its embeddings now give "
                f"{fingerprint[:16]}...: the files changed; refusing to perturb with another vocabulary"
            )
        self._set(embeddingsFingerprint=fingerprint)
        return self._runtime

    def built_mechanism(self) -> Mechanism:
        """The mechanism as configured, built on the driver (bad parameters fail here)."""
        runtime = self.runtime()
        if self._custom_mechanism is not None:
            return self._custom_mechanism(runtime.embeddings)
        name, epsilon = self.getOrDefault(self.mechanism), self.getOrDefault(self.epsilon)
        try:
            return runtime.mechanism(name, epsilon, self.mechanism_params())
        except ValueError as error:
            raise ConfigError(f"mechanism {name!r} on column {self.getInputCol()!r}: {error}") from None

    def guarantee(self) -> Guarantee:
        return self.built_mechanism().guarantee()

    def release_descriptor(self, kind: str) -> str:
        """Everything that defines this release, as canonical JSON: the noise
        key derives from it, and the ledger fingerprints it."""
        return json.dumps({
            "input": self.getInputCol(),
            "output": self.getOutputCol(),
            "mechanism": self.getOrDefault(self.mechanism),
            "epsilon": self.getOrDefault(self.epsilon),
            "params": self.mechanism_params(),
            "kind": kind,
            "oov": self.getOrDefault(self.oov),
            "placeholder": self.getOrDefault(self.placeholder),
            "entities": self.getOrDefault(self.entities),
            "row_key": row_key_label(self.getOrDefault(self.idCol) if self.isDefined(self.idCol) else None),
            "embeddings": self.runtime().artifact.fingerprint,
            "custom": self._custom_mechanism is not None,
        }, sort_keys=True, default=str)

    def release_fingerprint(self, kind: str) -> str:
        """A public fingerprint of the release (no secret in it): equal for an identical release only."""
        return hashlib.sha256(self.release_descriptor(kind).encode()).hexdigest()[:16]

    def _transform(self, dataset: DataFrame) -> DataFrame:
        return perturb(dataset, [self]).data

    def _task(self, dataset: DataFrame, shipped: ShippedArtifact, keys: dict[str, int]) -> "_ColumnTask":
        """Check the input and the mechanism on the driver (bad columns and
        parameters fail here, before any task) and describe the work."""
        column = self.getInputCol()
        kind = input_kind(dataset.schema, column, self.getOrDefault(self.inputKind))
        id_column = self.getOrDefault(self.idCol) if self.isDefined(self.idCol) else None
        if id_column is not None:
            check_id_column(dataset.schema, id_column)
        mechanism = self.built_mechanism()
        guarantee = mechanism.guarantee()
        if not guarantee.holds and not self.getOrDefault(self.acceptNoGuarantee):
            raise PrivacyRefusal(
                f"column {column!r}: mechanism {mechanism.name!r} promises no privacy guarantee "
                f"({guarantee.statement}); set accept_no_guarantee = true for the column "
                "(acceptNoGuarantee=True on DPTextPerturber) to release it anyway"
            )
        label = f"{column}->{self.getOutputCol()}"
        keys[label] = release_key(self._seed, self.release_descriptor(kind))
        return _ColumnTask(
            artifact=shipped,
            mechanism=self.getOrDefault(self.mechanism),
            epsilon=self.getOrDefault(self.epsilon),
            params=self.mechanism_params(),
            kind=kind,
            oov=self.getOrDefault(self.oov),
            placeholder=self.getOrDefault(self.placeholder),
            entities=self.getOrDefault(self.entities),
            key_label=label,
            input_column=column,
            output_column=self.getOutputCol(),
            id_column=id_column,
            custom_mechanism=self._custom_mechanism,
        )


@dataclass(frozen=True)
class Perturbation:
    """The result of ``perturb``: ``data`` is the perturbed table; with
    statistics, ``stat_rows`` holds the tasks' partial statistics (sum them
    with ``dp_spark.spark.statistics.collect_statistics``), and ``combined``
    is the one pass both come from (persist it to compute it once)."""

    combined: DataFrame
    outputs: list[str]
    with_statistics: bool

    @property
    def data(self) -> DataFrame:
        if not self.with_statistics:
            return self.combined
        return self.combined.where(F.col(STAT_COLUMN).isNull()).drop(STAT_COLUMN)

    @property
    def stat_rows(self) -> DataFrame:
        return self.combined.where(F.col(STAT_COLUMN).isNotNull()).select(f"{STAT_COLUMN}.*")


def perturb(
    dataset: DataFrame,
    perturbers: list[DPTextPerturber],
    statistics: bool = False,
    malformed: tuple[str, str] | None = None,
) -> Perturbation:
    """Apply perturbers in one ``mapInArrow`` pass. All perturbers must share
    one runtime (the job gives them the same; a lone transformer has its own).
    ``malformed``: (corrupt-record column, source-file column) of a FAILFAST
    text input: the pass stops at the first malformed record, naming its file
    and position but never its content, and drops both columns."""
    runtimes = {id(p.runtime()) for p in perturbers}
    if len(runtimes) != 1:
        raise ConfigError("perturbers applied together must share one runtime (setRuntime)")
    spark = dataset.sparkSession
    runtime = perturbers[0].runtime()
    for perturber in perturbers:  # what a mechanism adds to the artifact must be there before it ships
        perturber.built_mechanism()
    shipped = ship_artifact(spark, runtime.artifact)
    keys: dict[str, int] = {}
    tasks = [p._task(dataset, shipped, keys) for p in perturbers]
    key_files = ship_keys(spark, keys)
    hidden = set(malformed or ())
    schema = T.StructType([f for f in dataset.schema.fields if f.name not in hidden])
    for task in tasks:
        field = T.StructField(task.output_column, dataset.schema[task.input_column].dataType, True)
        if task.output_column in schema.fieldNames():
            schema = T.StructType([field if f.name == task.output_column else f for f in schema.fields])
        else:
            schema = T.StructType([*schema.fields, field])
    names = schema.fieldNames()
    if statistics:
        schema = T.StructType([*(T.StructField(f.name, f.dataType, True) for f in schema.fields),
                               T.StructField(STAT_COLUMN, STAT_SPARK_TYPE, True)])

    def perturb_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        states = [task.start(key_files) for task in tasks]
        arrow_schema = None
        position = 0
        for batch in batches:
            columns = dict(zip(batch.schema.names, batch.columns))
            if malformed:
                _stop_at_malformed(columns[malformed[0]], columns[malformed[1]], states[0].partition, position)
            position += batch.num_rows
            for task, state in zip(tasks, states):
                ids = columns[task.id_column] if task.id_column else None
                columns[task.output_column] = state.perturb(columns[task.input_column], ids)
            arrays = [columns[n] for n in names]
            if statistics:
                arrays.append(pa.nulls(batch.num_rows, STAT_ARROW_TYPE))
            out = pa.RecordBatch.from_arrays(arrays, names=[*names, STAT_COLUMN] if statistics else names)
            arrow_schema = out.schema
            yield out
        if statistics and arrow_schema is not None:
            for index, state in enumerate(states):
                yield statistics_batch(arrow_schema, statistics_rows(index, state.statistics.build()))

    combined = dataset.mapInArrow(perturb_batches, schema)
    return Perturbation(combined, [t.output_column for t in tasks], statistics)


def _stop_at_malformed(corrupt: pa.Array, files: pa.Array, partition: int, position: int) -> None:
    if corrupt.null_count == len(corrupt):
        return
    first = int(np.flatnonzero(corrupt.is_valid().to_numpy(zero_copy_only=False))[0])
    raise InputError(
        f"malformed record in {files[first].as_py()}: record {position + first + 1} read by task "
        f"{partition} (its content is not shown: input text is private); fix the file or set "
        "input.options.mode to DROPMALFORMED"
    )


@dataclass
class _ColumnTask:
    """Everything a task needs, pickled into the pass's closure: where the
    artifact's files are, the mechanism spec, and the label of the column's
    noise key in the shipped key file (the key itself never travels in a
    serialized function)."""

    artifact: ShippedArtifact
    mechanism: str
    epsilon: float
    params: dict[str, Any]
    kind: str
    oov: str
    placeholder: str
    entities: str
    key_label: str
    input_column: str
    output_column: str
    id_column: str | None
    custom_mechanism: Callable[[Embeddings], Mechanism] | None = None

    def start(self, key_files: ShippedFiles) -> "_TaskState":
        """Set-up once per Spark task: the worker's cached runtime, this task's
        partition, the column's key, and a statistics builder."""
        from pyspark import TaskContext

        context = TaskContext.get()
        runtime = worker_runtime(self.artifact, context.cpus() if context else 1)
        mechanism = (
            self.custom_mechanism(runtime.embeddings)
            if self.custom_mechanism
            else runtime.mechanism(self.mechanism, self.epsilon, self.params)
        )
        perturbation = ColumnPerturbation(mechanism, runtime.vocabulary, self.kind, self.oov, self.placeholder,
                                          self.entities)
        key = worker_keys(key_files)[self.key_label]
        return _TaskState(self, perturbation, key, context.partitionId() if context else 0)


class _TaskState:
    """One column's work within one Spark task: batches in partition order."""

    def __init__(self, task: _ColumnTask, perturbation: ColumnPerturbation, key: int, partition: int) -> None:
        self.task = task
        self.perturbation = perturbation
        self.key = key
        self.partition = partition
        self.position = 0
        self.statistics = StatisticsBuilder(len(perturbation.vocabulary))

    def perturb(self, column: pa.Array, ids: pa.Array | None) -> pa.Array:
        if ids is not None:
            row_keys = _row_keys(ids, self.key, self.task.id_column, self.partition, self.position)

            def random_for(tokens_per_row: np.ndarray) -> KeyedRandom:
                return KeyedRandom(token_keys(row_keys, tokens_per_row))

        else:
            generator = np.random.default_rng([self.key, self.partition, self.position])

            def random_for(tokens_per_row: np.ndarray) -> GeneratorRandom:
                return GeneratorRandom(generator, int(tokens_per_row.sum()))

        out = self.perturbation.apply(column, random_for, self.statistics)
        self.position += len(column)
        return out


def _row_keys(ids: pa.Array, key: int, id_column: str, partition: int, position: int) -> np.ndarray:
    """Row keys from the id column: a hash of each id, mixed with the release key."""
    if ids.null_count:
        first = int(np.flatnonzero(ids.is_null().to_numpy(zero_copy_only=False))[0])
        raise InputError(
            f"id column {id_column!r} has {ids.null_count} null value(s) in this batch (partition "
            f"{partition}, first at row {position + first} of the partition); every row needs a key"
        )
    text = ids.cast(pa.string()).to_numpy(zero_copy_only=False)
    hashed = pd.util.hash_array(np.asarray(text, dtype=object), categorize=False)
    return mix64(hashed ^ np.uint64(key))


__all__ = ["DPTextPerturber", "Perturbation", "input_kind", "perturb"]
