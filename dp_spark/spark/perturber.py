"""``DPTextPerturber``: the perturbation as a pyspark.ml Transformer.

All columns are perturbed in one ``mapInArrow`` pass over whole record
batches (or, with ``udfKind`` arrow / pandas, an iterator-form UDF per
column): set-up once per task, then per batch strings -> ids -> mechanism ->
strings, all in Arrow and numpy. Statistics travel back to the driver in an accumulator, merged
once per successful task of the write's single stage.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark import AccumulatorParam, keyword_only
from pyspark.ml import Transformer
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasInputCol, HasOutputCol
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from dp_spark.columns import ColumnPerturbation
from dp_spark.config import UDF_KINDS, EmbeddingsConfig, IndexConfig
from dp_spark.embeddings import Embeddings
from dp_spark.mechanisms import Mechanism
from dp_spark.randomness import GeneratorRandom, KeyedRandom, derive_key, mix64, token_keys
from dp_spark.spark.resources import (
    Resources,
    Runtime,
    complete_params,
    load_embeddings,
    resource_needs,
    runtime_for,
)
from dp_spark.stats import ColumnStatistics, StatisticsBuilder


class InputColumnError(ValueError):
    """A configured input column is missing or has a type that cannot be perturbed."""


def input_kind(schema: T.StructType, column: str, kind: str = "auto") -> str:
    """``string`` or ``tokens`` for a column, checked against the schema."""
    if column not in schema.fieldNames():
        raise InputColumnError(
            f"input has no column {column!r} (columns: {', '.join(schema.fieldNames())})"
        )
    data_type = schema[column].dataType
    actual = (
        "string"
        if isinstance(data_type, T.StringType)
        else "tokens"
        if isinstance(data_type, T.ArrayType) and isinstance(data_type.elementType, T.StringType)
        else None
    )
    if actual is None:
        raise InputColumnError(
            f"column {column!r} has type {data_type.simpleString()}; "
            f"only string and array<string> columns can be perturbed"
        )
    if kind != "auto" and kind != actual:
        expected = "string" if kind == "string" else "array<string>"
        raise InputColumnError(
            f"column {column!r} is configured as kind {kind!r} ({expected}) but has type "
            f"{data_type.simpleString()}"
        )
    return actual


class StatisticsParam(AccumulatorParam):
    def zero(self, value: ColumnStatistics) -> ColumnStatistics:
        return ColumnStatistics(value.vocab_size)

    def addInPlace(self, first: ColumnStatistics, second: ColumnStatistics) -> ColumnStatistics:
        return first.merge(second)


@dataclass(frozen=True)
class SharedResources:
    """Resources broadcast once and shared by every perturber of a job."""

    resources: Resources
    broadcast: Any
    embeddings_key: tuple

    @cached_property
    def runtime(self) -> Runtime:
        """The driver's view of the resources (mechanisms built once, to
        validate parameters and describe them)."""
        return Runtime(self.resources)


_driver_cache: dict[tuple, SharedResources] = {}


def shared_resources(
    spark: SparkSession,
    embeddings: EmbeddingsConfig,
    index: IndexConfig,
    mechanisms: list[tuple[str, dict[str, Any]]],
) -> SharedResources:
    """Build (or reuse, within this driver) and broadcast the resources that
    ``mechanisms`` (name, complete params) need."""
    index_types, need_neighbours = resource_needs(mechanisms)
    key = (embeddings, index.neighbours, index.cache_dir, frozenset(index_types), need_neighbours)
    cached = _driver_cache.get(key)
    if cached is None or cached.broadcast._sc is not spark.sparkContext:
        resources = Resources.build(load_embeddings(embeddings), index, index_types, need_neighbours)
        cached = SharedResources(resources, spark.sparkContext.broadcast(resources), key)
        _driver_cache.clear()
        _driver_cache[key] = cached
    return cached


class DPTextPerturber(Transformer, HasInputCol, HasOutputCol, DefaultParamsReadable, DefaultParamsWritable):
    """Perturb a string or array<string> column with a word-level metric-DP mechanism.

    >>> perturber = DPTextPerturber(inputCol="text", outputCol="text_dp",
    ...                             mechanism="tgumbel", epsilon=100.0)
    >>> perturber.transform(df)  # doctest: +SKIP

    The seed is a secret and is not a Param (Params are saved with a
    pipeline): by default each perturber draws a fresh 128-bit seed; set one
    with ``setSeed`` for tests and reproduction only.
    """

    mechanism = Param(Params._dummy(), "mechanism", "mechanism name", TypeConverters.toString)
    epsilon = Param(Params._dummy(), "epsilon", "privacy per token", TypeConverters.toFloat)
    mechanismParams = Param(
        Params._dummy(), "mechanismParams", "mechanism parameters as JSON", TypeConverters.toString
    )
    inputKind = Param(Params._dummy(), "inputKind", "auto, string or tokens", TypeConverters.toString)
    oov = Param(Params._dummy(), "oov", "keep, drop or replace", TypeConverters.toString)
    placeholder = Param(Params._dummy(), "placeholder", "OOV replacement", TypeConverters.toString)
    idCol = Param(Params._dummy(), "idCol", "row key column (optional)", TypeConverters.toString)
    vocabSize = Param(Params._dummy(), "vocabSize", "default embeddings' vocabulary size", TypeConverters.toInt)
    neighbours = Param(Params._dummy(), "neighbours", "neighbour table size K", TypeConverters.toInt)
    udfKind = Param(Params._dummy(), "udfKind", "map (mapInArrow), arrow or pandas", TypeConverters.toString)

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
        oov: str = "keep",
        placeholder: str = "<unk>",
        idCol: str | None = None,
        vocabSize: int = 100_000,
        neighbours: int = 64,
        udfKind: str = "map",
    ) -> None:
        super().__init__()
        self._setDefault(
            mechanism="mlap", epsilon=10.0, mechanismParams="{}", inputKind="auto", oov="keep",
            placeholder="<unk>", vocabSize=100_000, neighbours=64, udfKind="map",
        )
        self._set(**self._input_kwargs)
        self._seed = secrets.token_bytes(16)
        self._custom_mechanism: Callable[[Embeddings], Mechanism] | None = None
        self._shared: SharedResources | None = None
        self._embeddings_config: EmbeddingsConfig | None = None
        self.statistics = None

    def setSeed(self, seed: bytes | int) -> "DPTextPerturber":
        self._seed = seed if isinstance(seed, bytes) else str(seed).encode()
        return self

    def setCustomMechanism(self, factory: Callable[[Embeddings], Mechanism]) -> "DPTextPerturber":
        """Use ``factory(embeddings)`` instead of a registered mechanism (the
        ``mechanism`` Param then only names it): an extension point for
        mechanisms of one's own. The factory is pickled into the tasks."""
        self._custom_mechanism = factory
        return self

    def setResources(self, shared: SharedResources) -> "DPTextPerturber":
        """Share resources already broadcast (the job does this for all its columns)."""
        self._shared = shared
        return self

    def setEmbeddings(self, config: EmbeddingsConfig) -> "DPTextPerturber":
        self._embeddings_config = config
        return self

    def mechanism_params(self) -> dict[str, Any]:
        """The mechanismParams, with the index type defaulted to flat where the mechanism searches."""
        params = json.loads(self.getOrDefault(self.mechanismParams))
        if not isinstance(params, dict):
            raise ValueError("mechanismParams must be a JSON object")
        if self._custom_mechanism is not None:
            return params
        return complete_params(self.getOrDefault(self.mechanism), params, "flat")

    def _resources(self, spark: SparkSession) -> SharedResources:
        if self._shared is None:
            name = self.getOrDefault(self.mechanism)
            self._shared = shared_resources(
                spark,
                self._embeddings_config or EmbeddingsConfig(vocab_size=self.getOrDefault(self.vocabSize)),
                IndexConfig(neighbours=self.getOrDefault(self.neighbours)),
                [] if self._custom_mechanism is not None else [(name, self.mechanism_params())],
            )
        return self._shared

    def _transform(self, dataset: DataFrame) -> DataFrame:
        return perturb_columns(dataset, [self])

    def _task(self, dataset: DataFrame) -> "_ColumnTask":
        """Check the input, build the mechanism on the driver (bad parameters
        fail here, before any task), and describe the work for the executors."""
        column = self.getInputCol()
        kind = input_kind(dataset.schema, column, self.getOrDefault(self.inputKind))
        id_column = self.getOrDefault(self.idCol) if self.isDefined(self.idCol) else None
        if id_column is not None and id_column not in dataset.columns:
            raise InputColumnError(f"input has no id column {id_column!r}")
        udf_kind = self.getOrDefault(self.udfKind)
        if udf_kind not in UDF_KINDS:
            raise ValueError(f"udfKind must be one of {', '.join(UDF_KINDS)}; got {udf_kind!r}")
        spark = dataset.sparkSession
        shared = self._resources(spark)
        name, epsilon = self.getOrDefault(self.mechanism), self.getOrDefault(self.epsilon)
        params = self.mechanism_params()
        if self._custom_mechanism is None:
            shared.runtime.mechanism(name, epsilon, params)
        self.statistics = spark.sparkContext.accumulator(
            ColumnStatistics(len(shared.resources.words)), StatisticsParam()
        )
        return _ColumnTask(
            broadcast=shared.broadcast,
            broadcast_id=shared.broadcast._jbroadcast.id(),
            mechanism=name,
            epsilon=epsilon,
            params=params,
            kind=kind,
            oov=self.getOrDefault(self.oov),
            placeholder=self.getOrDefault(self.placeholder),
            column_key=derive_key(self._seed, "column", column, self.getOutputCol()),
            statistics=self.statistics,
            input_column=column,
            output_column=self.getOutputCol(),
            id_column=id_column,
            udf_kind=udf_kind,
            custom_mechanism=self._custom_mechanism,
        )


def perturb_columns(dataset: DataFrame, perturbers: list[DPTextPerturber]) -> DataFrame:
    """Apply perturbers to a DataFrame. With ``udfKind`` ``map`` (the default,
    measured fastest) all of them run in one ``mapInArrow`` pass over whole
    record batches; ``arrow`` and ``pandas`` add one column UDF each."""
    tasks = [p._task(dataset) for p in perturbers]
    mapped = [t for t in tasks if t.udf_kind == "map"]
    if mapped:
        schema = dataset.schema
        for task in mapped:
            field = T.StructField(task.output_column, schema[task.input_column].dataType, True)
            if task.output_column in schema.fieldNames():
                schema = T.StructType([field if f.name == task.output_column else f for f in schema.fields])
            else:
                schema = T.StructType([*schema.fields, field])
        names = schema.fieldNames()

        def perturb_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            states = [task.start() for task in mapped]
            for batch in batches:
                columns = dict(zip(batch.schema.names, batch.columns))
                for task, state in zip(mapped, states):
                    ids = columns[task.id_column] if task.id_column else None
                    columns[task.output_column] = state.perturb(columns[task.input_column], ids)
                yield pa.RecordBatch.from_arrays([columns[n] for n in names], names=names)
            for state in states:
                state.finish()

        dataset = dataset.mapInArrow(perturb_batches, schema)
    for task in tasks:
        if task.udf_kind != "map":
            inputs: list[Column] = [F.col(task.input_column)]
            if task.id_column:
                inputs.append(F.col(task.id_column))
            udf = task.udf(dataset.schema[task.input_column].dataType)
            dataset = dataset.withColumn(task.output_column, udf(*inputs))
    return dataset


@dataclass
class _ColumnTask:
    """Everything a task needs, pickled into the UDF's closure: the broadcast
    handle, the mechanism spec, and the column's key derived from the seed
    (the seed itself never leaves the driver)."""

    broadcast: Any
    broadcast_id: int
    mechanism: str
    epsilon: float
    params: dict[str, Any]
    kind: str
    oov: str
    placeholder: str
    column_key: int
    statistics: Any
    input_column: str
    output_column: str
    id_column: str | None
    udf_kind: str
    custom_mechanism: Callable[[Embeddings], Mechanism] | None = None

    def start(self) -> "_TaskState":
        """Set-up once per Spark task: the worker's cached runtime, this task's
        partition, and a statistics builder."""
        from pyspark import TaskContext

        context = TaskContext.get()
        runtime = runtime_for(self.broadcast, self.broadcast_id, context.cpus() if context else 1)
        mechanism = (
            self.custom_mechanism(runtime.embeddings)
            if self.custom_mechanism
            else runtime.mechanism(self.mechanism, self.epsilon, self.params)
        )
        perturbation = ColumnPerturbation(mechanism, runtime.vocabulary, self.kind, self.oov, self.placeholder)
        return _TaskState(self, perturbation, context.partitionId() if context else 0)

    def udf(self, data_type: T.DataType):
        task = self
        keyed = self.id_column is not None

        def run(batches: Iterator[Any]) -> Iterator[pa.Array]:
            state = task.start()
            for batch in batches:
                column, ids = batch if keyed else (batch, None)
                yield state.perturb(column, ids)
            state.finish()

        if self.udf_kind == "arrow":
            if keyed:

                @F.arrow_udf(data_type)
                def perturb_keyed(batches: Iterator[tuple[pa.Array, pa.Array]]) -> Iterator[pa.Array]:
                    yield from run(batches)

                return perturb_keyed

            @F.arrow_udf(data_type)
            def perturb(batches: Iterator[pa.Array]) -> Iterator[pa.Array]:
                yield from run(batches)

            return perturb
        # pandas loses the type of all-null or all-empty batches; restore it.
        arrow_type = pa.string() if self.kind == "string" else pa.list_(pa.string())
        if keyed:

            @F.pandas_udf(data_type)
            def perturb_keyed_pandas(batches: Iterator[tuple[pd.Series, pd.Series]]) -> Iterator[pd.Series]:
                arrays = ((pa.array(text, arrow_type), pa.array(ids)) for text, ids in batches)
                for out in run(arrays):
                    yield out.to_pandas()

            return perturb_keyed_pandas

        @F.pandas_udf(data_type)
        def perturb_pandas(batches: Iterator[pd.Series]) -> Iterator[pd.Series]:
            for out in run(pa.array(text, arrow_type) for text in batches):
                yield out.to_pandas()

        return perturb_pandas


class _TaskState:
    """One column's work within one Spark task: batches in partition order."""

    def __init__(self, task: _ColumnTask, perturbation: ColumnPerturbation, partition: int) -> None:
        self.task = task
        self.perturbation = perturbation
        self.partition = partition
        self.position = 0
        self.statistics = StatisticsBuilder(len(perturbation.vocabulary))

    def perturb(self, column: pa.Array, ids: pa.Array | None) -> pa.Array:
        if ids is not None:
            row_keys = _row_keys(ids, self.task.column_key, self.partition, self.position)

            def random_for(tokens_per_row: np.ndarray) -> KeyedRandom:
                return KeyedRandom(token_keys(row_keys, tokens_per_row))

        else:
            generator = np.random.default_rng([self.task.column_key, self.partition, self.position])

            def random_for(tokens_per_row: np.ndarray) -> GeneratorRandom:
                return GeneratorRandom(generator, int(tokens_per_row.sum()))

        out = self.perturbation.apply(column, random_for, self.statistics)
        self.position += len(column)
        return out

    def finish(self) -> None:
        self.task.statistics.add(self.statistics.build())


def _row_keys(ids: pa.Array, column_key: int, partition: int, position: int) -> np.ndarray:
    """Row keys from the id column: a hash of each id, mixed with the column key."""
    if ids.null_count:
        first = int(np.flatnonzero(ids.is_null().to_numpy(zero_copy_only=False))[0])
        raise ValueError(
            f"the id column has {ids.null_count} null value(s) in this batch (partition "
            f"{partition}, first at row {position + first} of the partition); every row needs a key"
        )
    text = ids.cast(pa.string()).to_numpy(zero_copy_only=False)
    hashed = pd.util.hash_array(np.asarray(text, dtype=object), categorize=False)
    return mix64(hashed ^ np.uint64(column_key))
