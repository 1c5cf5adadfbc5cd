"""The evaluate job: does perturbed text still train a good classifier?

For each seed: a stratified split of a labeled dataset; a Spark MLlib
pipeline (RegexTokenizer, HashingTF, IDF, LogisticRegression) trained on the
original training text and on the training text perturbed by each
(mechanism, epsilon) through DPTextPerturber, the perturb job's own code path;
accuracy and macro-F1 on the test text. Each point also gets its median N_w
over the vocabulary, so that mechanisms are compared at equal plausible
deniability. Writes evaluation_points/ and evaluation_summary/ (Parquet and
CSV), evaluation.png and evaluation.md under the output root.

Config (TOML): [input] as for the perturb job, [embeddings] and [index]
optional, and

    [evaluation]
    text_column = "text"
    label_column = "label"
    split_column = "split"        # optional: rows whose value is "test" are the test set
    test_fraction = 0.2
    seeds = [1, 2, 3]
    perturb_test = false          # perturb the test text too
    num_features = 16384
    [evaluation.epsilons]          # per mechanism
    tgumbel = [100, 200, 400, 1000, 5000]
    mlap = [5, 6, 7, 8, 10]
    [evaluation.params]            # optional, per mechanism
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pyspark.ml import Pipeline
from pyspark.ml.classification import LogisticRegression
from pyspark.ml.feature import IDF, HashingTF, RegexTokenizer, StringIndexer
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from dp_spark import storage
from dp_spark.config import parse_config, read_toml
from dp_spark.errors import ConfigError, InputError
from dp_spark.evaluation import accuracy, compare_at_equal_survival, macro_f1, plot, report, summarise, verdict
from dp_spark.mechanisms import MECHANISMS
from dp_spark.resources import Runtime, artifact_for, complete_params
from dp_spark.results import write_plot, write_result_table
from dp_spark.spark.io import read_input
from dp_spark.spark.perturber import DPTextPerturber, perturb
from dp_spark.spark.session import phase
from dp_spark.stats import plausible_deniability, stratified_sample

log = logging.getLogger("dp_spark.evaluate")


@dataclass(frozen=True)
class EvaluationSettings:
    text_column: str = "text"
    label_column: str = "label"
    split_column: str | None = None
    test_fraction: float = 0.2
    seeds: tuple[int, ...] = (1, 2, 3)
    perturb_test: bool = False
    num_features: int = 16384
    epsilons: dict[str, tuple[float, ...]] = field(default_factory=dict)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    nw_sample: int = 300
    nw_draws: int = 100


def load_evaluation_config(path: str) -> tuple[Any, EvaluationSettings]:
    """The [input]/[embeddings]/[index] sections (perturb job syntax) and [evaluation]."""
    document = read_toml(path)
    section = document.pop("evaluation", None)
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: missing section [evaluation]")
    unknown = sorted(set(document) - {"input", "embeddings", "index"})
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(unknown)}; allowed: input, embeddings, "
                          "index, evaluation")
    config = parse_config(document, source=path, command="evaluate")
    allowed = {f.name for f in dataclasses.fields(EvaluationSettings)}
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)} in evaluation; allowed: "
                          f"{', '.join(sorted(allowed))}")
    epsilons = section.get("epsilons", {})
    if not isinstance(epsilons, dict) or not epsilons:
        raise ConfigError(f"{path}: evaluation.epsilons must map mechanism names to epsilon lists")
    for name, grid in epsilons.items():
        if name not in MECHANISMS:
            raise ConfigError(f"{path}: evaluation.epsilons: mechanism must be one of "
                              f"{', '.join(sorted(MECHANISMS))}; got {name!r}")
        if not isinstance(grid, list) or not grid or not all(isinstance(e, (int, float)) and e > 0 for e in grid):
            raise ConfigError(f"{path}: evaluation.epsilons.{name} must be a list of positive numbers")
    fraction = section.get("test_fraction", 0.2)
    if not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ConfigError(f"{path}: evaluation.test_fraction must be between 0 and 1, got {fraction!r}")
    settings = EvaluationSettings(**{
        **section,
        "seeds": tuple(section.get("seeds", (1, 2, 3))),
        "epsilons": {k: tuple(float(e) for e in v) for k, v in epsilons.items()},
        "params": dict(section.get("params", {})),
    })
    return config, settings


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


def pipeline(settings: EvaluationSettings) -> Pipeline:
    return Pipeline(stages=[
        StringIndexer(inputCol=settings.label_column, outputCol="_label", stringOrderType="alphabetAsc"),
        RegexTokenizer(inputCol=settings.text_column, outputCol="_tokens", pattern="[^\\p{L}\\p{N}']+"),
        HashingTF(inputCol="_tokens", outputCol="_tf", numFeatures=settings.num_features),
        IDF(inputCol="_tf", outputCol="_features"),
        LogisticRegression(featuresCol="_features", labelCol="_label", maxIter=100, regParam=0.01),
    ])


def score(train: DataFrame, test: DataFrame, settings: EvaluationSettings) -> tuple[float, float]:
    model = pipeline(settings).fit(train)
    rows = model.transform(test).select("_label", "prediction").collect()
    labels = np.array([r[0] for r in rows])
    predictions = np.array([r[1] for r in rows])
    return accuracy(labels, predictions), macro_f1(labels, predictions)


def evaluate(spark: SparkSession, config: Any, settings: EvaluationSettings, output_root: str,
             dataset: str, command: str = "") -> dict[str, Any]:
    started = time.perf_counter()
    source = read_input(spark, config.input)
    df = source.frame
    if source.malformed:
        corrupt, file = source.malformed
        bad = df.where(F.col(corrupt).isNotNull()).select(file).limit(1).collect()
        if bad:
            raise InputError(f"malformed record in {bad[0][0]} (its content is not shown: input text is private); "
                             "fix the file or set input.options.mode to DROPMALFORMED")
        df = df.drop(corrupt, file)
    for column in (settings.text_column, settings.label_column):
        if column not in df.columns:
            raise InputError(f"input has no column {column!r} (columns: {', '.join(df.columns)})")
    df = df.where(F.col(settings.text_column).isNotNull() & F.col(settings.label_column).isNotNull())
    df = df.withColumn("row_id", F.monotonically_increasing_id()).cache()
    rows = df.count()

    params = {name: complete_params(name, settings.params.get(name, {}), config.index.type)
              for name in settings.epsilons}
    runtime = Runtime(artifact_for(config.embeddings, config.index, list(params.items())))
    sample = stratified_sample(len(runtime.vocabulary), settings.nw_sample)

    points = []
    survival: dict[tuple[str, float], tuple[float, float]] = {}
    for seed in settings.seeds:
        train, test = labeled_splits(df, settings, seed)
        train, test = train.cache(), test.cache()
        acc, f1 = score(train, test, settings)
        points.append({"dataset": dataset, "mechanism": "original", "epsilon": float("inf"), "seed": seed,
                       "accuracy": acc, "macro_f1": f1, "median_nw": 1.0, "mean_nw": 1.0})
        log.info("seed %d: original text: accuracy %.3f, macro-F1 %.3f", seed, acc, f1)
        for name, grid in settings.epsilons.items():
            for epsilon in grid:
                if (name, epsilon) not in survival:
                    mechanism = runtime.mechanism(name, epsilon, params[name])
                    n_w, _ = plausible_deniability(mechanism, sample, settings.nw_draws)
                    survival[(name, epsilon)] = (float(np.median(n_w)), float(n_w.mean()))
                # Measuring utility releases nothing: mechanisms without a guarantee are compared too.
                perturber = (
                    DPTextPerturber(inputCol=settings.text_column, outputCol=settings.text_column,
                                    mechanism=name, epsilon=epsilon, mechanismParams=json.dumps(params[name]),
                                    acceptNoGuarantee=True)
                    .setSeed(f"evaluation-{seed}".encode())
                    .setRuntime(runtime)
                )
                perturber.set(perturber.idCol, "row_id")
                with phase(spark, "evaluate", f"{name} eps {epsilon:g} seed {seed}"):
                    perturbed_train = perturb(train, [perturber]).data
                    perturbed_test = perturb(test, [perturber]).data if settings.perturb_test else test
                    acc, f1 = score(perturbed_train, perturbed_test, settings)
                median, mean = survival[(name, epsilon)]
                points.append({"dataset": dataset, "mechanism": name, "epsilon": epsilon, "seed": seed,
                               "accuracy": acc, "macro_f1": f1, "median_nw": median, "mean_nw": mean})
                log.info("seed %d: %s eps %g (median N_w %.3f): accuracy %.3f, macro-F1 %.3f",
                         seed, name, epsilon, median, acc, f1)
        train.unpersist()
        test.unpersist()

    results = pd.DataFrame(points)
    summary = summarise(results)
    compared = {"tgumbel", "mlap"} <= set(settings.epsilons)
    comparison = compare_at_equal_survival(results, "tgumbel", "mlap") if compared else pd.DataFrame()
    text = verdict(comparison, "tgumbel", "mlap") if compared else ""
    for name, frame in (("evaluation_points", results), ("evaluation_summary", summary)):
        write_result_table(frame, storage.join(output_root, name))
    title = f"{dataset}: test utility against plausible deniability (mean +- sd over seeds)"
    write_plot(storage.join(output_root, "evaluation.png"), lambda: plot(summary, title))
    storage.write_text(storage.join(output_root, "evaluation.md"), report(dataset, summary, comparison, text, {
        "command": command, "rows": rows, "test_fraction": settings.test_fraction, "seeds": list(settings.seeds),
        "perturb_test": settings.perturb_test, "nw_sample": len(sample), "nw_draws": settings.nw_draws,
        "model": f"RegexTokenizer, HashingTF ({settings.num_features} features), IDF, LogisticRegression "
                 "(regParam 0.01, 100 iterations)",
    }) + f"\nRun time: {time.perf_counter() - started:.0f} s.\n")
    df.unpersist()
    return {"results": results, "summary": summary, "comparison": comparison, "verdict": text}


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
    return {"command": "evaluate", "status": "succeeded", "output": args.output, "verdict": result["verdict"]}


def print_summary(summary: dict[str, Any]) -> None:
    print(f"evaluation written under {summary['output']}: evaluation_points, evaluation_summary, evaluation.png, "
          "evaluation.md")
    if summary["verdict"]:
        print(summary["verdict"])
