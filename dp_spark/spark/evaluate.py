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

from dp_spark.config import ConfigError, parse_config, read_toml
from dp_spark.evaluation import accuracy, compare_at_equal_survival, macro_f1, plot, report, summarise, verdict
from dp_spark.mechanisms import MECHANISMS
from dp_spark.spark.io import HadoopFileSystem, read_input, write_plot, write_result_table
from dp_spark.spark.perturber import DPTextPerturber, perturb_columns, shared_resources
from dp_spark.spark.resources import complete_params
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
    # Reuse the job's validation for the shared sections.
    job_like = {"input": document.get("input", {}), "output": {"root": "unused"},
                "columns": [{"name": "unused", "mechanism": "mlap", "epsilon": 1.0}],
                **{k: v for k, v in document.items() if k in ("embeddings", "index")}}
    unknown = sorted(set(document) - {"input", "embeddings", "index"})
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(unknown)}; allowed: input, embeddings, "
                          "index, evaluation")
    config = parse_config(job_like, source=path)
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
    df = read_input(spark, config.input, {})
    for column in (settings.text_column, settings.label_column):
        if column not in df.columns:
            raise ValueError(f"input has no column {column!r} (columns: {', '.join(df.columns)})")
    df = df.where(F.col(settings.text_column).isNotNull() & F.col(settings.label_column).isNotNull())
    df = df.rdd.zipWithIndex().map(lambda pair: (*pair[0], pair[1])).toDF([*df.columns, "row_id"]).cache()
    rows = df.count()

    params = {name: complete_params(name, settings.params.get(name, {}), config.index.type)
              for name in settings.epsilons}
    shared = shared_resources(spark, config.embeddings, config.index, list(params.items()))
    runtime = shared.runtime
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
                perturber = (
                    DPTextPerturber(inputCol=settings.text_column, outputCol=settings.text_column,
                                    mechanism=name, epsilon=epsilon, mechanismParams=json.dumps(params[name]))
                    .setSeed(f"evaluation-{seed}".encode())
                    .setResources(shared)
                )
                perturber.set(perturber.idCol, "row_id")
                spark.sparkContext.setJobDescription(f"dp-spark evaluate: {name} eps {epsilon:g} seed {seed}")
                perturbed_train = perturb_columns(train, [perturber])
                perturbed_test = perturb_columns(test, [perturber]) if settings.perturb_test else test
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
    fs = HadoopFileSystem(spark, output_root)
    root = output_root.rstrip("/")
    for name, frame in (("evaluation_points", results), ("evaluation_summary", summary)):
        write_result_table(spark, frame, f"{root}/{name}")
    title = f"{dataset}: test utility against plausible deniability (mean +- sd over seeds)"
    write_plot(fs, f"{root}/evaluation.png", lambda: plot(summary, title))
    fs.write_text(f"{root}/evaluation.md", report(dataset, summary, comparison, text, {
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
    parser.add_argument("--dataset", help="name in the report (default: the config file's name)")
    parser.add_argument("--master", help="Spark master for local runs (default local[2])")


def run_from_arguments(args: argparse.Namespace) -> int:
    from dp_spark.spark.job import USER_ERRORS, user_error
    from dp_spark.spark.session import get_session

    try:
        config, settings = load_evaluation_config(args.config)
    except ValueError as error:
        return user_error(error)
    started_here = SparkSession.getActiveSession() is None
    spark = get_session("dp-spark evaluate", args.master)
    dataset = args.dataset or Path(args.config).stem
    try:
        result = evaluate(spark, config, settings, args.output, dataset,
                          command="python -m dp_spark evaluate " + " ".join(sys.argv[2:]))
    except USER_ERRORS as error:
        return user_error(error)
    finally:
        if started_here:
            spark.stop()
    print(f"evaluation written under {args.output}: evaluation_points, evaluation_summary, evaluation.png, "
          "evaluation.md")
    if result["verdict"]:
        print(result["verdict"])
    return 0


def main(argv: list[str] | None = None) -> int:
    from dp_spark.spark.job import command_main

    return command_main("evaluate", "Utility of perturbed text.", add_arguments, run_from_arguments, argv)

