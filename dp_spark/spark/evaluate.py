"""The evaluate job: does perturbed text still train a good classifier, at
equal privacy?

For each seed: a split of a labeled dataset (stratified by label, or a given
split column); two models (``dp_spark.classifier``), a bag of words (TF-IDF,
logistic regression) and averaged word embeddings (the mean of the job's own
embedding vectors of a row's words, logistic regression), trained on the
original training text and on the training text perturbed by each
(mechanism, epsilon) through DPTextPerturber, the perturb job's own code
path; accuracy and macro-F1 on the test text. Each (mechanism, epsilon) also
gets its privacy measured three ways (``dp_spark.evaluation``): N_w over the
text, the reconstruction rate and the booked guarantee, and the report
compares every mechanism with a baseline at equal privacy on each. Writes
evaluation_points/ and evaluation_summary/ (Parquet and CSV), evaluation.png
and evaluation.md under the output root.

Per seed and mechanism, one Spark pass perturbs the training text at every
epsilon of the grid and brings it to the driver, where both models of every
epsilon train in milliseconds (MLlib's logistic regression ran a Spark job
per iteration, and its fits bounded the run) while Spark perturbs for the
next group. The privacy measures run on a driver thread beside them. The
labeled rows must fit in the driver's memory: at most
``classifier.MAX_ROWS``.

Config (TOML): [input] as for the perturb job, [embeddings] and [index]
optional, and

    [evaluation]
    text_column = "text"           # or text_columns = ["title", "description"]: joined with a space
    label_column = "label"
    split_column = "split"         # optional: rows whose value is "test" are the test set
    test_fraction = 0.2            # otherwise held out per label, drawn anew for each seed
    seeds = [1, 2, 3]
    perturb_test = false           # perturb the test text too
    num_features = 16384           # the bag of words' vocabulary: the training text's most frequent words
    baseline = "mlap"              # what the other mechanisms are compared with (default: mlap, else the first)
    nw_sample = 300                # vocabulary words for N_w over the vocabulary (listed for reference)
    nw_draws = 100                 # draws per vocabulary word
    draws = 200                    # per text word, where N_w and the reconstruction rate are sampled
    [evaluation.epsilons]          # per mechanism
    tgumbel = [100, 200, 400, 1000, 5000]
    mlap = [5, 6, 7, 8, 10]
    [evaluation.params]            # optional, per mechanism
    diffractor = { lists = 1 }
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark.ml.feature import StringIndexer
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from dp_spark import storage
from dp_spark.classifier import MAX_ROWS, PENALTY, TOLERANCE
from dp_spark.config import parse_config, read_toml
from dp_spark.deniability import TEXT_WORDS, deniability_summary
from dp_spark.errors import ConfigError, InputError
from dp_spark.evaluation import (
    MODELS,
    comparisons,
    labels_imbalanced,
    model_scores,
    plot,
    report,
    summarise,
    text_privacy,
    word_counts,
)
from dp_spark.mechanisms import MECHANISMS, Mechanism, mechanism_parameters
from dp_spark.resources import Runtime, artifact_for, complete_params
from dp_spark.results import write_plot, write_result_table
from dp_spark.spark.io import read_input
from dp_spark.spark.perturber import DPTextPerturber, perturb
from dp_spark.spark.session import phase
from dp_spark.spark.shipping import ShippedArtifact, ship_artifact, worker_runtime

log = logging.getLogger("dp_spark.evaluate")

LOGISTIC = (f"logistic regression (L2 penalty {PENALTY:g} on features scaled to unit variance, L-BFGS to a "
            f"relative change of {np.format_float_scientific(TOLERANCE, trim='-', exp_digits=1)})")


@dataclass(frozen=True)
class EvaluationSettings:
    text_columns: tuple[str, ...] = ("text",)
    label_column: str = "label"
    split_column: str | None = None
    test_fraction: float = 0.2
    seeds: tuple[int, ...] = (1, 2, 3)
    perturb_test: bool = False
    num_features: int = 16384
    epsilons: dict[str, tuple[float, ...]] = field(default_factory=dict)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    baseline: str | None = None
    nw_sample: int = 300
    nw_draws: int = 100
    draws: int = 200


KEYS = ("text_column", "text_columns", "label_column", "split_column", "test_fraction", "seeds", "perturb_test",
        "num_features", "epsilons", "params", "baseline", "nw_sample", "nw_draws", "draws")


def load_evaluation_config(path: str) -> tuple[Any, EvaluationSettings]:
    """The [input]/[embeddings]/[index] sections (perturb job syntax) and
    [evaluation], checked key by key: an error is one line naming the key."""
    document = read_toml(path)
    section = document.pop("evaluation", None)
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: missing section [evaluation]")
    unknown = sorted(set(document) - {"input", "embeddings", "index"})
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(unknown)}; allowed: input, embeddings, "
                          "index, evaluation")
    config = parse_config(document, source=path, command="evaluate")
    unknown = sorted(set(section) - set(KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)} in evaluation; allowed: "
                          f"{', '.join(sorted(KEYS))}")
    return config, _settings(path, section)


def _settings(path: str, section: dict[str, Any]) -> EvaluationSettings:
    def fail(key: str, expected: str) -> ConfigError:
        return ConfigError(f"{path}: evaluation.{key} must be {expected}; got {section[key]!r}")

    def name(key: str) -> None:
        if key in section and not (isinstance(section[key], str) and section[key]):
            raise fail(key, "a column name")

    def count(key: str) -> None:
        value = section.get(key)
        if key in section and (isinstance(value, bool) or not isinstance(value, int) or value < 2):
            raise fail(key, "an integer >= 2")

    if "text_column" in section and "text_columns" in section:
        raise ConfigError(f"{path}: evaluation: give text_column or text_columns, not both")
    for key in ("text_column", "label_column", "split_column"):
        name(key)
    columns = section.get("text_columns", [section.get("text_column", "text")])
    if not isinstance(columns, list) or not columns or not all(isinstance(c, str) and c for c in columns):
        raise fail("text_columns", "a non-empty list of column names")
    for key in ("num_features", "nw_sample", "nw_draws", "draws"):
        count(key)
    fraction = section.get("test_fraction", 0.2)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise fail("test_fraction", "a number between 0 and 1")
    seeds = section.get("seeds", [1, 2, 3])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                            for s in seeds) or len(set(seeds)) < len(seeds):
        raise fail("seeds", "a list of distinct integers")
    if not isinstance(section.get("perturb_test", False), bool):
        raise fail("perturb_test", "true or false")
    epsilons = section.get("epsilons")
    if not isinstance(epsilons, dict) or not epsilons:
        raise ConfigError(f"{path}: evaluation.epsilons must map mechanism names to epsilon lists")
    for mechanism, grid in epsilons.items():
        if mechanism not in MECHANISMS:
            raise ConfigError(f"{path}: evaluation.epsilons: mechanism must be one of "
                              f"{', '.join(sorted(MECHANISMS))}; got {mechanism!r}")
        if (not isinstance(grid, list) or not grid or len(set(grid)) < len(grid)
                or not all(isinstance(e, (int, float)) and not isinstance(e, bool) and e > 0 for e in grid)):
            raise ConfigError(f"{path}: evaluation.epsilons.{mechanism} must be a list of distinct positive "
                              f"numbers; got {grid!r}")
    params = section.get("params", {})
    if not isinstance(params, dict):
        raise fail("params", "a table of mechanism parameters")
    for mechanism, values in params.items():
        if mechanism not in epsilons:
            raise ConfigError(f"{path}: evaluation.params.{mechanism}: the mechanism has no evaluation.epsilons")
        allowed = mechanism_parameters(mechanism)
        unknown = sorted(set(values) - set(allowed)) if isinstance(values, dict) else None
        if unknown is None or unknown:
            raise ConfigError(f"{path}: evaluation.params.{mechanism} must be a table of {mechanism}'s parameters "
                              f"({', '.join(allowed) or 'none'}); got {values!r}")
    baseline = section.get("baseline", "mlap" if "mlap" in epsilons else next(iter(epsilons)))
    if baseline not in epsilons:
        raise ConfigError(f"{path}: evaluation.baseline must be one of the evaluated mechanisms "
                          f"({', '.join(epsilons)}); got {baseline!r}")
    return EvaluationSettings(
        text_columns=tuple(columns),
        label_column=section.get("label_column", "label"),
        split_column=section.get("split_column"),
        test_fraction=float(fraction),
        seeds=tuple(seeds),
        perturb_test=section.get("perturb_test", False),
        num_features=section.get("num_features", 16384),
        epsilons={k: tuple(float(e) for e in v) for k, v in epsilons.items()},
        params={k: dict(v) for k, v in params.items()},
        baseline=baseline,
        nw_sample=section.get("nw_sample", 300),
        nw_draws=section.get("nw_draws", 100),
        draws=section.get("draws", 200),
    )


# ---------------------------------------------------------------------------
# The labeled data.

@dataclass(frozen=True)
class LabeledData:
    """The rows evaluated, cached: ``row_id``, the label column, ``_label``
    (its index), ``_text`` (the text columns joined) and the split column;
    ``dropped`` rows had no label or no text at all; ``test_rows``: those of
    a fixed split's test set."""

    frame: DataFrame
    rows: int
    dropped: int
    class_counts: dict[str, int]
    test_rows: int | None = None


def labeled_data(spark: SparkSession, config: Any, settings: EvaluationSettings) -> LabeledData:
    source = read_input(spark, config.input)
    df = source.frame
    for column in (*settings.text_columns, settings.label_column, *filter(None, [settings.split_column])):
        if column not in source.columns:
            raise InputError(f"input has no column {column!r} (columns: {', '.join(source.columns)})")
    for column in settings.text_columns:
        data_type = df.schema[column].dataType
        if not (isinstance(data_type, T.StringType) or (isinstance(data_type, T.ArrayType)
                                                        and isinstance(data_type.elementType, T.StringType))):
            raise InputError(f"text column {column!r} has type {data_type.simpleString()}; only string and "
                             "array<string> columns hold text")
    if source.malformed:
        corrupt, file = source.malformed
        # Every column must be parsed for a record to show as malformed (and Spark refuses a query of the
        # corrupt-record column alone): their hash comes along, never their content.
        parsed = F.hash(*source.columns)
        bad = df.where(F.col(corrupt).isNotNull()).select(file, parsed).limit(1).collect()
        if bad:
            escape = ("; a CSV that escapes quotes by doubling them (\"\") needs input.options.escape = '\"'"
                      if config.input.format == "csv" else "")
            raise InputError(f"malformed record in {bad[0][0]} (its content is not shown: input text is private); "
                             f"fix the file or set input.options.mode to DROPMALFORMED{escape}")
        df = df.drop(corrupt, file)
    read = df.count()
    if read > MAX_ROWS:
        raise InputError(f"the input has {read} rows; the evaluation trains its models on the driver, on at most "
                         f"{MAX_ROWS}: evaluate a sample")
    has_text = functools.reduce(lambda a, b: a | b, (F.col(c).isNotNull() for c in settings.text_columns))
    kept = [settings.label_column, *filter(None, [settings.split_column])]
    partitions = int(spark.conf.get("spark.sql.shuffle.partitions"))
    df = (df.where(F.col(settings.label_column).isNotNull() & has_text)
          .select(*kept, F.concat_ws(" ", *settings.text_columns).alias("_text"))
          .repartition(partitions)
          .withColumn("row_id", F.monotonically_increasing_id()))
    indexer = StringIndexer(inputCol=settings.label_column, outputCol="_label", stringOrderType="alphabetAsc")
    df = indexer.fit(df).transform(df).cache()
    counts = {str(row[0]): int(row[1]) for row in df.groupBy(settings.label_column).count().collect()}
    rows = sum(counts.values())
    if len(counts) < 2:
        raise InputError(f"label column {settings.label_column!r} holds {len(counts)} distinct value(s); a "
                         "classifier needs at least two")
    test_rows = None
    if settings.split_column:
        test_rows = df.where(F.col(settings.split_column) == "test").count()
        if not 0 < test_rows < rows:
            raise InputError(f"split column {settings.split_column!r} must mark some rows, not all, \"test\" "
                             f"({test_rows} of {rows} are)")
    return LabeledData(df, rows, read - rows, dict(sorted(counts.items())), test_rows)


def labeled_splits(df: DataFrame, settings: EvaluationSettings, seed: int) -> tuple[DataFrame, DataFrame]:
    """Train and test sets: a given split column, or per label the rows whose
    seeded hash ranks in the first test_fraction (stratified, reproducible)."""
    if settings.split_column:
        test = F.col(settings.split_column) == "test"
        return df.where(~test), df.where(test)
    order = Window.partitionBy(settings.label_column).orderBy(F.xxhash64(F.col("row_id"), F.lit(seed)), "row_id")
    ranked = df.withColumn("_rank", F.percent_rank().over(order))
    return (ranked.where(F.col("_rank") >= settings.test_fraction).drop("_rank"),
            ranked.where(F.col("_rank") < settings.test_fraction).drop("_rank"))


def training_text(data: LabeledData, settings: EvaluationSettings) -> DataFrame:
    """The rows the models train on: with a fixed split its training rows,
    else all rows (each seed trains on most of them)."""
    if settings.split_column:
        return data.frame.where(F.col(settings.split_column) != "test")
    return data.frame


def text_word_counts(frame: DataFrame, shipped: ShippedArtifact) -> tuple[np.ndarray, np.ndarray]:
    """(word ids, counts) of the in-vocabulary words of ``_text``, counted per
    task and summed by Spark."""

    def count(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        vocabulary = worker_runtime(shipped, 1).vocabulary
        for batch in batches:
            words, counts = word_counts(batch.column(0), vocabulary)
            yield pa.RecordBatch.from_arrays([pa.array(words, pa.int64()), pa.array(counts, pa.int64())],
                                             names=["word_id", "count"])

    totals = (frame.select("_text").mapInArrow(count, "word_id LONG, count LONG")
              .groupBy("word_id").agg(F.sum("count").alias("count")).toPandas().sort_values("word_id"))
    return totals["word_id"].to_numpy(np.int64), totals["count"].to_numpy(np.int64)


# ---------------------------------------------------------------------------
# What the models see.

def model_inputs(frame: DataFrame, perturbers: list[DPTextPerturber]) -> pa.Table:
    """``_label`` and, per perturber (or for the original ``_text`` when there
    is none), the text it outputs, on the driver: one pass."""
    texts = [p.getOutputCol() for p in perturbers] or ["_text"]
    if perturbers:
        frame = perturb(frame, perturbers).data
    return frame.select("_label", *texts).toArrow()


# ---------------------------------------------------------------------------
# The run.

def evaluate(spark: SparkSession, config: Any, settings: EvaluationSettings, output_root: str,
             dataset: str, command: str = "") -> dict[str, Any]:
    started = time.perf_counter()
    params = {name: complete_params(name, settings.params.get(name, {}), config.index.type)
              for name in settings.epsilons}
    runtime = Runtime(artifact_for(config.embeddings, config.index, list(params.items())))
    mechanisms = {}
    for name, grid in settings.epsilons.items():
        for epsilon in grid:
            try:
                mechanisms[(name, epsilon)] = runtime.mechanism(name, epsilon, params[name])
            except ValueError as error:
                raise ConfigError(f"evaluation.epsilons.{name}: {error}") from None
    # After every mechanism is built: what they add to the artifact (diffractor's lists) must ship too.
    shipped = ship_artifact(spark, runtime.artifact)
    with phase(spark, "evaluate", "labeled data"):
        data = labeled_data(spark, config, settings)
        words, counts = text_word_counts(training_text(data, settings), shipped)
    with ThreadPoolExecutor(1, thread_name_prefix="privacy") as background:
        frequent = np.argsort(-counts, kind="stable")[:TEXT_WORDS]
        measuring = background.submit(measure_privacy, mechanisms, words[frequent], counts[frequent], settings,
                                      config.index.cache_dir)
        scores = score_points(spark, data, settings, runtime, params)
        privacy = measuring.result()
    privacy[("original", math.inf)] = {
        "nw_vocabulary_median": 1.0, "nw_text_mean": 1.0, "reconstruction_rate": 1.0,
        "reconstruction_half_draws": math.nan, "privacy_method": "-", "guarantee": "-",
        "guarantee_epsilon": math.nan, "guarantee_metric": None,
    }
    results = pd.DataFrame([{"dataset": dataset, **point, **privacy[(point["mechanism"], point["epsilon"])]}
                            for point in scores])
    imbalanced = labels_imbalanced(data.class_counts)
    metric = "macro_f1" if imbalanced else "accuracy"
    metrics = ("accuracy", "macro_f1") if imbalanced else ("accuracy",)
    summary = summarise(results)
    found = comparisons(results, settings.baseline, metric)
    for name, frame in (("evaluation_points", results), ("evaluation_summary", summary),
                        ("evaluation_comparisons", pd.concat([c.table for c in found] or [pd.DataFrame()]))):
        write_result_table(frame, storage.join(output_root, name))
    title = f"{dataset}: test utility against privacy (mean +- sd over seeds; labels: epsilon)"
    write_plot(storage.join(output_root, "evaluation.png"), lambda: plot(summary, title, metrics))
    sampled = {name: [p for (n, _), p in privacy.items() if n == name and p["privacy_method"] == "sampled"]
               for name in settings.epsilons}
    covered = float(np.sort(counts)[::-1][:TEXT_WORDS].sum() / counts.sum())
    text = report(dataset, summary, found, {
        "command": command, "rows": data.rows, "dropped": data.dropped, "text_columns": settings.text_columns,
        "class_shares": {label: n / data.rows for label, n in data.class_counts.items()},
        "split_column": settings.split_column, "test_rows": data.test_rows,
        "test_fraction": settings.test_fraction, "seeds": list(settings.seeds), "perturb_test": settings.perturb_test,
        "bag_of_words": f"TF-IDF over the training text's {settings.num_features} most frequent words, then "
                        f"{LOGISTIC}",
        "logistic": LOGISTIC,
        "embeddings": f"the job's embeddings ({_embeddings_name(config.embeddings)}, {runtime.embeddings.size} "
                      f"words, {runtime.embeddings.dim} dimensions)",
        "text_words": min(TEXT_WORDS, len(words)), "coverage": covered, "nw_sample": settings.nw_sample,
        "nw_draws": settings.nw_draws, "draws": settings.draws,
        "exact": [name for name, points in sampled.items() if not points],
        "sampled_rises": {name: max(p["reconstruction_rate"] - p["reconstruction_half_draws"] for p in points)
                          for name, points in sampled.items() if points},
        "baseline": settings.baseline, "metric": metric, "metrics": metrics,
    })
    seconds = time.perf_counter() - started
    storage.write_text(storage.join(output_root, "evaluation.md"), text + f"\nRun time: {seconds:.0f} s.\n")
    data.frame.unpersist()
    verdicts = [f"{c.challenger} vs {c.baseline}, {c.measure}, {MODELS[c.model]}: {c.sentence()}" for c in found]
    return {"results": results, "summary": summary, "comparisons": found, "verdicts": verdicts, "seconds": seconds}


def _embeddings_name(embeddings: Any) -> str:
    if embeddings.source == "default" and not embeddings.artifact:
        return "GloVe 6B 50d"
    return str(embeddings.artifact or embeddings.path)


@dataclass(frozen=True)
class Group:
    """The models of one seed on the original text, or on one mechanism's
    epsilon grid: trained on inputs made by one Spark pass."""

    seed: int
    mechanism: str
    epsilons: tuple[float, ...]


def score_points(spark: SparkSession, data: LabeledData, settings: EvaluationSettings, runtime: Runtime,
                 params: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Both models' test scores for the original text and every (mechanism,
    epsilon), per seed. Per seed and mechanism one Spark pass perturbs the
    training text for the whole epsilon grid (in as many tasks as the
    shuffle has partitions: the split leaves the training rows in one) and
    brings it to the driver, where the models train while the next group's
    pass runs. With a fixed split the original text's models are the same
    for every seed: trained once."""
    perturb_partitions = int(spark.conf.get("spark.sql.shuffle.partitions"))
    fixed = bool(settings.split_column)
    groups = [Group(seed, name, grid) for seed in settings.seeds
              for name, grid in [("original", (math.inf,)), *settings.epsilons.items()]
              if not (fixed and name == "original" and seed != settings.seeds[0])]
    original_tests: dict[int, pa.Table] = {}  # per seed, or one for a fixed split

    def prepare(group: Group) -> tuple[pa.Table, pa.Table, list[str], list[str]]:
        """The group's training and test inputs and, per epsilon, the columns
        its models train and are tested on."""
        train, test = labeled_splits(data.frame, settings, group.seed)
        perturbers = [] if group.mechanism == "original" else [
            _perturber(runtime, group.mechanism, epsilon, params[group.mechanism], f"_text_{k}", group.seed)
            for k, epsilon in enumerate(group.epsilons)
        ]
        texts = [p.getOutputCol() for p in perturbers] or ["_text"]
        with phase(spark, "evaluate", f"seed {group.seed}: {group.mechanism}, model inputs"):
            split = settings.seeds[0] if fixed else group.seed
            if split not in original_tests:
                original_tests[split] = model_inputs(test, [])
            train_inputs = model_inputs(train.repartition(perturb_partitions), perturbers)
            if perturbers and settings.perturb_test:
                return train_inputs, model_inputs(test.repartition(perturb_partitions), perturbers), texts, texts
        return train_inputs, original_tests[split], texts, ["_text"] * len(texts)

    def labels(inputs: pa.Table) -> np.ndarray:
        return inputs.column("_label").to_numpy().astype(np.int64)

    points: list[dict[str, Any]] = []
    with ThreadPoolExecutor(1, thread_name_prefix="inputs") as preparing:
        upcoming = preparing.submit(prepare, groups[0])
        for k, group in enumerate(groups):
            train, test, texts, test_texts = upcoming.result()
            if k + 1 < len(groups):
                upcoming = preparing.submit(prepare, groups[k + 1])
            for epsilon, text, test_text in zip(group.epsilons, texts, test_texts):
                scores = model_scores((train.column(text).combine_chunks(), labels(train)),
                                      (test.column(test_text).combine_chunks(), labels(test)),
                                      len(data.class_counts), runtime.vocabulary, runtime.embeddings.vectors,
                                      settings.num_features)
                for model, (acc, f1) in scores.items():
                    log.info("seed %d: %s eps %g, %s: accuracy %.3f, macro-F1 %.3f",
                             group.seed, group.mechanism, epsilon, MODELS[model], acc, f1)
                    points.append({"model": model, "mechanism": group.mechanism, "epsilon": epsilon,
                                   "seed": group.seed, "accuracy": acc, "macro_f1": f1})
    if fixed:
        original = [p for p in points if p["mechanism"] == "original"]
        points += [{**p, "seed": seed} for seed in settings.seeds[1:] for p in original]
    return points


def _perturber(runtime: Runtime, name: str, epsilon: float, params: dict[str, Any], output: str,
               seed: int) -> DPTextPerturber:
    # Measuring utility releases nothing: mechanisms without a guarantee are compared too.
    perturber = DPTextPerturber(inputCol="_text", outputCol=output, mechanism=name, epsilon=epsilon,
                                mechanismParams=json.dumps(params), idCol="row_id", acceptNoGuarantee=True)
    return perturber.setSeed(f"evaluation-{seed}".encode()).setRuntime(runtime)


def measure_privacy(mechanisms: dict[tuple[str, float], Mechanism], words: np.ndarray, counts: np.ndarray,
                    settings: EvaluationSettings, cache_dir: str | None) -> dict[tuple[str, float], dict[str, Any]]:
    """Per (mechanism, epsilon): N_w over a vocabulary sample, N_w and the
    reconstruction rate over the text's most frequent words, and the booked
    guarantee. Draws are cached on disk: a rerun draws nothing."""
    measured = {}
    for (name, epsilon), mechanism in mechanisms.items():
        started = time.perf_counter()
        vocabulary = deniability_summary(mechanism, settings.nw_sample, settings.nw_draws, cache_dir=cache_dir)
        text = text_privacy(mechanism, words, counts, settings.draws, cache_dir=cache_dir)
        guarantee = mechanism.guarantee()
        measured[(name, epsilon)] = {
            "nw_vocabulary_median": vocabulary["nw_p50"], "nw_text_mean": text.n_w,
            "reconstruction_rate": text.reconstruction, "reconstruction_half_draws": text.half_draws_reconstruction,
            "privacy_method": text.method, "guarantee": guarantee.kind,
            "guarantee_epsilon": guarantee.epsilon if guarantee.holds else math.nan,
            "guarantee_metric": guarantee.metric,
        }
        log.info("%s eps %g: N_w over the text %.3f, reconstruction rate %.3f (%.1f s)", name, epsilon,
                 text.n_w, text.reconstruction, time.perf_counter() - started)
    return measured


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="TOML with [input] and [evaluation]")
    parser.add_argument("--output", default="output/evaluation", help="output root")
    parser.add_argument("--dataset", help="name in the report (default: input.dataset, else the config file's name)")
    parser.add_argument("--master", help="Spark master for a local classic session (default local[2])")
    parser.add_argument("--remote", help="Spark Connect URL (default $SPARK_REMOTE)")
    parser.add_argument("--verbose", action="store_true", help="debug logging")


def run_from_arguments(args: argparse.Namespace) -> dict[str, Any]:
    from dp_spark.spark.session import session

    config, settings = load_evaluation_config(args.config)
    dataset = args.dataset or config.input.dataset or Path(args.config).stem
    with session("dp-spark evaluate", args.master, args.remote) as spark:
        result = evaluate(spark, config, settings, args.output, dataset,
                          command="python -m dp_spark evaluate " + " ".join(sys.argv[2:]))
    return {"command": "evaluate", "status": "succeeded", "output": args.output, "verdicts": result["verdicts"],
            "seconds": result["seconds"]}


def print_summary(summary: dict[str, Any]) -> None:
    print(f"evaluation written under {summary['output']} in {summary['seconds']:.0f} s: evaluation_points, "
          "evaluation_summary, evaluation_comparisons, evaluation.png, evaluation.md")
    for line in summary["verdicts"]:
        print(f"  {line}")
