"""The calibrate job: N_w and S_w over a vocabulary sample for mechanisms x
epsilons, in parallel on Spark (rows are (mechanism, epsilon, word), spread
over partitions), then tables, a plot and a report.

Under the output root:
    calibration_words/        one row per (mechanism, epsilon, word): N_w, S_w, band (Parquet; .csv beside)
    calibration_summary/      one row per (mechanism, epsilon, band), refused epsilons with reasons
    calibration.png           N_w and S_w quantile bands against epsilon
    calibration.md            the report, with the epsilon for the target median N_w
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark.sql import SparkSession
from pyspark.sql import types as T

from dp_spark import storage
from dp_spark.calibration import Refusal, bracket, describe_crossing, plot, report, summary_table
from dp_spark.config import EmbeddingsConfig, IndexConfig, InputConfig, load_config, parse_value
from dp_spark.deniability import weighted_summary
from dp_spark.errors import ConfigError, InputError
from dp_spark.mechanisms import MECHANISMS, Mechanism
from dp_spark.resources import Runtime, artifact_for, complete_params
from dp_spark.results import write_plot, write_result_table
from dp_spark.spark.io import read_input
from dp_spark.spark.perturber import DPTextPerturber, perturb
from dp_spark.spark.session import phase
from dp_spark.spark.shipping import ShippedArtifact, ship_artifact, worker_runtime
from dp_spark.spark.statistics import collect_statistics
from dp_spark.stats import bisect_epsilon, frequency_band, plausible_deniability, stratified_sample

log = logging.getLogger("dp_spark.calibrate")


@dataclass(frozen=True)
class CalibrationSettings:
    mechanisms: tuple[str, ...]
    epsilons: tuple[float, ...]
    sample_size: int = 1000
    draws: int = 500
    seed: int = 0
    target_nw: float = 0.5
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    # (mechanism, parameter) pairs to tune for the target median N_w at the
    # mechanism's first valid epsilon: the knob that moves a mechanism whose
    # epsilon barely does (tgumbel's Poisson rate).
    tune: tuple[tuple[str, str], ...] = ()
    # The bisection evaluates N_w at new epsilons: on a smaller sample, for time.
    bisect_sample: int = 200
    bisect_draws: int = 200


def calibrate(
    spark: SparkSession,
    settings: CalibrationSettings,
    output_root: str,
    embeddings: EmbeddingsConfig | None = None,
    index: IndexConfig | None = None,
    command: str = "",
    text: tuple[InputConfig, str] | None = None,
) -> dict[str, Any]:
    """N_w and S_w per (mechanism, epsilon) over a stratified vocabulary
    sample; with ``text`` (an input and its text column), also over the
    words of that text, weighted by their tokens (band "text")."""
    embeddings = embeddings or EmbeddingsConfig()
    index = index or IndexConfig()
    params = {name: complete_params(name, settings.params.get(name, {}), index.type) for name in settings.mechanisms}
    settings = dataclasses.replace(settings, params=params)
    runtime = Runtime(artifact_for(embeddings, index, list(params.items())))
    vocabulary = runtime.vocabulary
    words = stratified_sample(len(vocabulary), settings.sample_size, settings.seed)
    text_words = None
    if text is not None:
        with phase(spark, "calibrate", "count the text's words"):
            ids, counts = text_word_counts(spark, text[0], text[1], runtime)
        top = np.argsort(-counts, kind="stable")[:TEXT_WORDS]
        text_words = (ids[top], counts[top], float(counts[top].sum() / max(counts.sum(), 1)))

    valid, refusals, details, floors = [], [], {}, {}
    for name in settings.mechanisms:
        for epsilon in settings.epsilons:
            try:
                mechanism = runtime.mechanism(name, epsilon, settings.params.get(name, {}))
            except ValueError as error:
                refusals.append(Refusal(name, epsilon, str(error)))
                continue
            described = mechanism.describe()
            details[(name, float(epsilon))] = described
            if "epsilon_min" in described:
                floors[name] = described["epsilon_min"]
            valid.append((name, float(epsilon)))
        if name == "tgumbel" and name not in floors:
            floors[name] = _tgumbel_floor(runtime)
    log.info("calibrating %d (mechanism, epsilon) pairs over %d words x %d draws; %d refused",
             len(valid), len(words), settings.draws, len(refusals))

    measuring = words if text_words is None else np.union1d(words, text_words[0])
    with phase(spark, "calibrate", "N_w and S_w per word"):
        measured = _measure(spark, ship_artifact(spark, runtime.artifact), settings, valid, measuring)
    if text_words is not None:
        by_text = measured[measured["word_id"].isin(text_words[0])]
        measured = measured[measured["word_id"].isin(words)].reset_index(drop=True)
    measured["word"] = vocabulary.words.take(pa.array(measured["word_id"].to_numpy())).to_pylist()
    measured["band"] = frequency_band(measured["word_id"].to_numpy())
    summary = summary_table(measured, refusals, details)
    if text_words is not None:
        summary = pd.concat([summary, _text_summary(by_text, text_words)], ignore_index=True)

    crossings = {}
    for name in settings.mechanisms:
        grid = summary[summary["mechanism"] == name]
        found = None
        limits = bracket(grid, settings.target_nw)
        if limits is not None:
            found = _bisect(runtime, name, settings, words, limits)
        crossings[name] = describe_crossing(name, found, grid, settings.target_nw, floors.get(name))
        log.info("%s: median N_w = %g at %s", name, settings.target_nw, crossings[name])
    for name, parameter in settings.tune:
        epsilons = sorted(e for m, e in valid if m == name)
        label = f"{name} {parameter}"
        if not epsilons:
            crossings[label] = "no valid epsilon in the grid to tune at"
            continue
        crossings[label] = _tune(runtime, name, parameter, epsilons[0], settings, words)
        log.info("%s: %s", label, crossings[label])

    locations = {name: storage.join(output_root, name) for name in
                 ("calibration_words", "calibration_summary", "calibration.png", "calibration.md")}
    for name, frame in (("calibration_words", measured), ("calibration_summary", summary)):
        write_result_table(frame, locations[name])
    if not write_plot(locations["calibration.png"], lambda: plot(summary, floors)):
        del locations["calibration.png"]
    text = report(summary, crossings, {
        "sample_size": len(words), "draws": settings.draws, "seed": settings.seed,
        "embeddings": f"{embeddings.source}, {len(vocabulary)} words", "command": command,
    }, settings.target_nw)
    storage.write_text(locations["calibration.md"], text)
    return {"locations": locations, "summary": summary, "words": measured, "crossings": crossings}


def _tgumbel_floor(runtime: Any) -> float:
    from dp_spark.mechanisms.tgumbel import minimum_epsilon

    return minimum_epsilon(len(runtime.vocabulary), runtime.artifact.neighbour_table().min_distance)


def _measure(
    spark: SparkSession,
    shipped: ShippedArtifact,
    settings: CalibrationSettings,
    valid: list[tuple[str, float]],
    words: np.ndarray,
) -> pd.DataFrame:
    schema = T.StructType([
        T.StructField("mechanism", T.StringType()),
        T.StructField("epsilon", T.DoubleType()),
        T.StructField("word_id", T.LongType()),
    ])
    out_schema = T.StructType(
        [*schema.fields, T.StructField("n_w", T.DoubleType()), T.StructField("s_w", T.LongType())]
    )
    if not valid:
        return pd.DataFrame({f.name: [] for f in out_schema.fields})
    rows = pd.DataFrame(
        [(name, epsilon, int(w)) for name, epsilon in valid for w in words],
        columns=["mechanism", "epsilon", "word_id"],
    )
    partitions = max(2, int(spark.conf.get("spark.sql.shuffle.partitions")) * 2)
    params, draws, seed = settings.params, settings.draws, settings.seed

    def measure(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        runtime = worker_runtime(shipped, 1)
        for batch in batches:
            frame = batch.to_pandas()
            for (name, epsilon), group in frame.groupby(["mechanism", "epsilon"], sort=False):
                mechanism = runtime.mechanism(name, float(epsilon), params.get(name, {}))
                n_w, s_w = plausible_deniability(mechanism, group["word_id"].to_numpy(), draws, seed=seed)
                yield pa.RecordBatch.from_pandas(
                    group.assign(n_w=n_w, s_w=s_w.astype(np.int64)), preserve_index=False
                )

    df = spark.createDataFrame(rows, schema).repartition(partitions)
    return df.mapInArrow(measure, out_schema).toPandas().sort_values(["mechanism", "epsilon", "word_id"],
                                                                      ignore_index=True)


def _bisect(runtime: Any, name: str, settings: CalibrationSettings, words: np.ndarray,
            limits: tuple[float, float]) -> float | None:
    rng = np.random.default_rng(settings.seed)
    subsample = np.sort(rng.choice(words, size=min(settings.bisect_sample, len(words)), replace=False))

    def median_survival(epsilon: float) -> float:
        mechanism = runtime.mechanism(name, epsilon, settings.params.get(name, {}))
        n_w, _ = plausible_deniability(mechanism, subsample, settings.bisect_draws, seed=settings.seed)
        return float(np.median(n_w))

    return bisect_epsilon(median_survival, settings.target_nw, *limits)


TEXT_WORDS = 500  # the text's most frequent words measured (their share of its tokens is reported)


class _Identity(Mechanism):
    """Returns its input: a perturbation pass with it only counts the words."""

    name = "identity"

    def _perturb_in_vocabulary(self, ids: np.ndarray, rng: Any) -> np.ndarray:
        return ids


def _identity(embeddings: Any) -> Mechanism:
    return _Identity(embeddings, 1.0)


def text_word_counts(spark: SparkSession, source: InputConfig, column: str, runtime: Runtime
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(vocabulary ids, token counts) of the words of a text column, through
    the perturb job's own tokenizer (a pass with the identity, summing its
    statistics): what the text's N_w is weighted by."""
    frame = read_input(spark, source).frame
    if column not in frame.columns:
        raise InputError(f"--text-column {column!r}: the input has no such column "
                         f"(columns: {', '.join(frame.columns)})")
    counter = (DPTextPerturber(inputCol=column, outputCol=column, mechanism="identity", acceptNoGuarantee=True)
               .setCustomMechanism(_identity).setRuntime(runtime))
    passed = perturb(frame.select(column), [counter], statistics=True)
    (statistics, _), = collect_statistics(passed.stat_rows, passed.outputs, len(runtime.vocabulary), 1).values()
    return statistics.words_seen


def _text_summary(measured: pd.DataFrame, text_words: tuple[np.ndarray, np.ndarray, float]) -> pd.DataFrame:
    """Band "text": N_w and S_w per (mechanism, epsilon) over the text's words, weighted by their tokens."""
    ids, counts, covered = text_words
    weight = dict(zip(ids.tolist(), counts.tolist()))
    rows = []
    for (mechanism, epsilon), group in measured.groupby(["mechanism", "epsilon"], sort=True):
        weights = group["word_id"].map(weight).to_numpy(float)
        row = {"mechanism": mechanism, "epsilon": float(epsilon), "band": "text", "status": "ok", "reason": None,
               "words": len(group), "text_tokens_covered": covered}
        row.update({f"nw_{k}": v for k, v in weighted_summary(group["n_w"].to_numpy(), weights).items()})
        row.update({f"sw_{k}": v for k, v in weighted_summary(group["s_w"].to_numpy(), weights).items()})
        rows.append(row)
    return pd.DataFrame(rows)


# The range a tuned parameter is searched in (bisection on its logarithm).
TUNE_RANGE = (0.01, 1000.0)


def _tune(runtime: Any, name: str, parameter: str, epsilon: float, settings: CalibrationSettings,
          words: np.ndarray) -> str:
    """The value of ``parameter`` that gives the target median N_w at
    ``epsilon``, by bisection (N_w falls as the parameter grows: more
    candidates, fewer survivals), or why there is none."""
    rng = np.random.default_rng(settings.seed)
    subsample = np.sort(rng.choice(words, size=min(settings.bisect_sample, len(words)), replace=False))

    def falling_survival(value: float) -> float:
        params = {**settings.params.get(name, {}), parameter: value}
        mechanism = runtime.mechanism(name, epsilon, params)
        n_w, _ = plausible_deniability(mechanism, subsample, settings.bisect_draws, seed=settings.seed)
        return -float(np.median(n_w))

    found = bisect_epsilon(falling_survival, -settings.target_nw, *TUNE_RANGE)
    if found is None:
        low, high = (-falling_survival(v) for v in TUNE_RANGE)
        return (f"not reached at epsilon {epsilon:g}: median N_w goes from {low:.3f} to {high:.3f} as {parameter} "
                f"goes from {TUNE_RANGE[0]:g} to {TUNE_RANGE[1]:g}")
    return f"{parameter} = {found:.3g} gives median N_w = {settings.target_nw:g} at epsilon {epsilon:g}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mechanisms", default="tgumbel,mlap", help="comma-separated mechanism names")
    parser.add_argument("--epsilons", default="1,2,5,10,20,40,100,200", help="comma-separated epsilon grid")
    parser.add_argument("--output", default="output/calibration", help="output root")
    parser.add_argument("--sample", type=int, default=1000, help="vocabulary words, stratified by frequency")
    parser.add_argument("--draws", type=int, default=500, help="draws per word")
    parser.add_argument("--target-nw", type=float, default=0.5, help="median N_w to find epsilon for")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample and the draws (public)")
    parser.add_argument("--param", action="append", default=[], metavar="MECHANISM.KEY=VALUE",
                        help="mechanism parameter, e.g. mlap.max_distance=7.5 (repeatable)")
    parser.add_argument("--tune", action="append", default=[], metavar="MECHANISM.PARAMETER",
                        help="find the parameter value for the target median N_w at the mechanism's first valid "
                             "epsilon, e.g. tgumbel.poisson_rate (repeatable)")
    parser.add_argument("--config", help="a config whose [embeddings] and [index] to use (and [input], with "
                                         "--text-column)")
    parser.add_argument("--text-column", help="also report N_w and S_w over this text column of the config's "
                                              "[input], weighted by its tokens (band 'text')")
    parser.add_argument("--master", help="Spark master for a local classic session (default local[2])")
    parser.add_argument("--remote", help="Spark Connect URL (default $SPARK_REMOTE)")
    parser.add_argument("--verbose", action="store_true", help="debug logging")


def parse_settings(args: argparse.Namespace) -> CalibrationSettings:
    mechanisms = tuple(m.strip() for m in args.mechanisms.split(",") if m.strip())
    unknown = [m for m in mechanisms if m not in MECHANISMS]
    if unknown or not mechanisms:
        raise ConfigError(f"--mechanisms must name some of {', '.join(sorted(MECHANISMS))}; got {args.mechanisms!r}")
    try:
        epsilons = tuple(sorted({float(e) for e in args.epsilons.split(",") if e.strip()}))
    except ValueError:
        raise ConfigError(f"--epsilons must be comma-separated numbers; got {args.epsilons!r}") from None
    if not epsilons or min(epsilons) <= 0:
        raise ConfigError(f"--epsilons must be positive numbers; got {args.epsilons!r}")
    if not 0 < args.target_nw < 1:
        raise ConfigError(f"--target-nw must be between 0 and 1; got {args.target_nw}")
    if args.sample < 1 or args.draws < 2:
        raise ConfigError("--sample must be >= 1 and --draws >= 2")
    params: dict[str, dict[str, Any]] = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        mechanism, dot, name = key.partition(".")
        if not sep or not dot or mechanism not in mechanisms:
            raise ConfigError(f"--param expects MECHANISM.KEY=VALUE for a calibrated mechanism; got {item!r}")
        params.setdefault(mechanism, {})[name] = parse_value(value)
    tune = []
    for item in args.tune:
        mechanism, dot, parameter = item.partition(".")
        if not dot or mechanism not in mechanisms or not parameter:
            raise ConfigError(f"--tune expects MECHANISM.PARAMETER for a calibrated mechanism; got {item!r}")
        tune.append((mechanism, parameter))
    return CalibrationSettings(mechanisms, epsilons, args.sample, args.draws, args.seed, args.target_nw, params,
                               tuple(tune))


def run_from_arguments(args: argparse.Namespace) -> dict[str, Any]:
    from dp_spark.spark.session import session

    settings = parse_settings(args)
    config = load_config(args.config, "build") if args.config else None
    if args.text_column and (config is None or config.input is None):
        raise ConfigError("--text-column needs --config with an [input] section to read the text from")
    text = (config.input, args.text_column) if args.text_column else None
    with session("dp-spark calibrate", args.master, args.remote) as spark:
        result = calibrate(
            spark, settings, args.output,
            config.embeddings if config else None, config.index if config else None,
            command="python -m dp_spark calibrate " + " ".join(sys.argv[2:]), text=text,
        )
    return {"command": "calibrate", "status": "succeeded", "locations": result["locations"],
            "crossings": result["crossings"], "target_nw": settings.target_nw}


def print_summary(summary: dict[str, Any]) -> None:
    print("calibration written:")
    for name, location in summary["locations"].items():
        print(f"  {name:20s} {location}")
    for name, text in summary["crossings"].items():
        print(f"  median N_w = {summary['target_nw']:g}, {name}: {text}")
