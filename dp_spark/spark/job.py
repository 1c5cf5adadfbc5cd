"""The perturb job: read a table, perturb its text columns, write the table,
its statistics, the ledger and the run manifest.

Layout under the output root:
    table/                 the perturbed table (same schema, columns replaced or added)
    privacy_stats/         one row per run and column
    substitution_stats/    (run, column, original, substitute, count), counts >= min_count
    substitution_rates/    (run, column, word, seen, changed, rate), words seen >= min_count
    ledger/                epsilon spent per (dataset, partition, column, run)
    manifests/<run>.json   resolved config, seed fingerprint, versions, counts, status
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import secrets
import sys
import time
import uuid
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from dp_spark.config import Config, load_config
from dp_spark.ledger import (
    LedgerEntry,
    RecompositionRefused,
    Release,
    check_recomposition,
    partition_label,
    row_key_label,
)
from dp_spark.randomness import seed_fingerprint
from dp_spark.spark.io import HadoopFileSystem, read_input, write_table
from dp_spark.spark.perturber import (
    DPTextPerturber,
    SharedResources,
    input_kind,
    perturb_columns,
    shared_resources,
)
from dp_spark.spark.resources import complete_params
from dp_spark.stats import QUANTILES, ColumnStatistics, plausible_deniability, stratified_sample, summarize

log = logging.getLogger("dp_spark.perturb")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="TOML job configuration")
    parser.add_argument("--input", help="input path (overrides input.path / input.table)")
    parser.add_argument("--output", help="output root (overrides output.root)")
    parser.add_argument(
        "--partition", action="append", default=[], metavar="KEY=VALUE",
        help="perturb only rows where KEY = VALUE (repeatable); recorded in the ledger",
    )
    parser.add_argument(
        "--seed",
        help="secret seed, for tests and reproduction only (default: 128 random bits per run); "
        "a short seed can be guessed from its fingerprint",
    )
    parser.add_argument("--allow-recompose", action="store_true",
                        help="allow perturbing data already released with another seed")
    parser.add_argument("--master", help="Spark master for local runs (default local[2])")


def parse_partitions(values: list[str]) -> dict[str, str]:
    partitions = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise ValueError(f"--partition expects KEY=VALUE, got {value!r}")
        partitions[key] = val
    return partitions


@dataclasses.dataclass
class RunResult:
    run_id: str
    locations: dict[str, str]
    statistics: dict[str, ColumnStatistics]
    manifest: dict[str, Any]


def run(
    spark: SparkSession,
    config: Config,
    partitions: dict[str, str] | None = None,
    seed: bytes | None = None,
    allow_recompose: bool = False,
) -> RunResult:
    """Run the perturb job; on failure the manifest says so and the table is untouched."""
    partitions = partitions or {}
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]
    seed_source = "given" if seed is not None else "random"
    seed = seed if seed is not None else secrets.token_bytes(16)
    fingerprint = seed_fingerprint(seed)
    output = config.output
    locations = {
        name: output.location(name)
        for name in ("table", "privacy_stats", "substitution_stats", "substitution_rates", "ledger")
    }
    locations["manifest"] = output.location(f"manifests/{run_id}.json")
    fs = HadoopFileSystem(spark, output.root)
    manifest: dict[str, Any] = {
        "run_id": run_id,
        "status": "running",
        "started_at": _now(),
        "finished_at": None,
        "seed_source": seed_source,
        "seed_fingerprint": fingerprint,
        "config_file": config.source,
        "config": config.to_dict(),
        "input": {"location": config.input.location, "format": config.input.format,
                  "dataset": config.input.dataset_name, "partition": partition_label(partitions)},
        "output": locations,
        "versions": _versions(),
        "spark": {"app_id": spark.sparkContext.applicationId, "master": spark.sparkContext.master},
    }
    fs.write_text(locations["manifest"], json.dumps(manifest, indent=2))
    log.info("run %s: seed %s (fingerprint %s)", run_id, seed_source, fingerprint)
    try:
        result = _run(spark, config, partitions, seed, fingerprint, allow_recompose, run_id, locations, manifest)
    except BaseException as error:
        manifest.update(status="failed", finished_at=_now(), error=f"{type(error).__name__}: {error}")
        fs.write_text(locations["manifest"], json.dumps(manifest, indent=2, default=str))
        log.error("run %s failed: %s: %s", run_id, type(error).__name__, error)
        raise
    manifest.update(status="succeeded", finished_at=_now())
    fs.write_text(locations["manifest"], json.dumps(manifest, indent=2, default=str))
    return result


def _run(
    spark: SparkSession,
    config: Config,
    partitions: dict[str, str],
    seed: bytes,
    fingerprint: str,
    allow_recompose: bool,
    run_id: str,
    locations: dict[str, str],
    manifest: dict[str, Any],
) -> RunResult:
    sc = spark.sparkContext
    timer = _PhaseTimer()

    sc.setJobDescription(f"dp-spark {run_id}: read input schema")
    log.info("reading input %s (%s)", config.input.location, config.input.format)
    df = read_input(spark, config.input, partitions)
    kinds = {c.name: input_kind(df.schema, c.name, c.kind) for c in config.columns}
    if config.job.id_column and config.job.id_column not in df.columns:
        raise ValueError(
            f"{config.source}: job.id_column {config.job.id_column!r} is not a column of the input "
            f"(columns: {', '.join(df.columns)})"
        )
    output_columns = set(df.columns) | {c.output_name for c in config.columns}
    missing = [c for c in config.output.partition_by if c not in output_columns]
    if missing:
        raise ValueError(f"{config.source}: output.partition_by column(s) {missing} are not in the output")

    partition = partition_label(partitions)
    dataset = config.input.dataset_name
    row_key = row_key_label(config.job.id_column)
    entries = _read_ledger(spark, locations["ledger"])
    releases = [Release(c.name, c.output_name, c.mechanism, c.epsilon) for c in config.columns]
    totals = check_recomposition(entries, dataset, partition, releases, fingerprint, row_key, allow_recompose)
    timer.lap("validated input, config and ledger")

    shared = _resources(spark, config)
    timer.lap("built and broadcast embeddings, index and neighbour table")

    perturbers = {}
    for column in config.columns:
        perturber = (
            DPTextPerturber(
                inputCol=column.name,
                outputCol=column.output_name,
                mechanism=column.mechanism,
                epsilon=column.epsilon,
                mechanismParams=json.dumps(_params(config, column)),
                inputKind=kinds[column.name],
                oov=column.oov,
                placeholder=column.placeholder,
                udfKind=config.job.udf,
            )
            .setSeed(seed)
            .setResources(shared)
        )
        if config.job.id_column:
            perturber.set(perturber.idCol, config.job.id_column)
        perturbers[column.output_name] = perturber
    df = perturb_columns(df, list(perturbers.values()))

    sc.setJobDescription(f"dp-spark {run_id}: perturb and write table")
    log.info("perturbing %d column(s) and writing %s", len(perturbers), locations["table"])
    write_table(spark, df, config.output, run_id)
    timer.lap("perturbed and wrote the table")

    statistics = {name: p.statistics.value for name, p in perturbers.items()}
    first = next(iter(statistics.values()))
    rows = first.rows + first.null_rows
    runtime = shared.runtime
    mechanisms = {
        c.output_name: runtime.mechanism(c.mechanism, c.epsilon, _params(config, c)) for c in config.columns
    }
    described = {name: mechanism.describe() for name, mechanism in mechanisms.items()}
    recorded_at = _now()
    _append(spark, locations["ledger"], pd.DataFrame([
        dataclasses.asdict(LedgerEntry(run_id, dataset, partition, c.name, c.output_name, c.mechanism,
                                       c.epsilon, fingerprint, row_key, recorded_at))
        for c in config.columns
    ]))
    deniability = {name: _deniability(spark, config, mechanism) for name, mechanism in mechanisms.items()}
    sc.setJobDescription(f"dp-spark {run_id}: write statistics")
    _write_statistics(spark, config, run_id, dataset, partition, statistics, described, totals,
                      deniability, runtime.vocabulary.words, locations)
    timer.lap("wrote ledger and statistics")

    manifest["rows"] = rows
    manifest["columns"] = {
        c.output_name: {
            "input_column": c.name,
            "mechanism": described[c.output_name],
            "tokens": statistics[c.output_name].tokens,
            "tokens_perturbed": statistics[c.output_name].perturbed,
            "tokens_oov": statistics[c.output_name].oov,
            "tokens_changed": statistics[c.output_name].changed,
            "epsilon_total_per_token": totals[c.name],
        }
        for c in config.columns
    }
    manifest["phases_seconds"] = timer.laps
    for name, s in statistics.items():
        log.info(
            "column %s: %d rows, %d tokens, %d perturbed, %d outside the vocabulary, "
            "substitution rate %.3f", name, s.rows, s.tokens, s.perturbed, s.oov, s.substitution_rate,
        )
    return RunResult(run_id, locations, statistics, manifest)


def _resources(spark: SparkSession, config: Config) -> SharedResources:
    log.info("loading embeddings (%s) and building index/neighbour table", config.embeddings.source)
    mechanisms = [(c.mechanism, _params(config, c)) for c in config.columns]
    return shared_resources(spark, config.embeddings, config.index, mechanisms)


def _params(config: Config, column: Any) -> dict[str, Any]:
    return complete_params(column.mechanism, column.params, config.index.type)


def _write_statistics(
    spark: SparkSession,
    config: Config,
    run_id: str,
    dataset: str,
    partition: str,
    statistics: dict[str, ColumnStatistics],
    described: dict[str, dict[str, Any]],
    totals: dict[str, float],
    deniability: dict[str, dict[str, Any]],
    words: Any,
    locations: dict[str, str],
) -> None:
    min_count = config.job.min_count
    privacy_rows, pair_frames, rate_frames = [], [], []
    for column in config.columns:
        s = statistics[column.output_name]
        originals, substitutes, counts = s.frequent_pairs(min_count)
        word_ids, seen, changed = s.word_rates(min_count)
        row_epsilon = s.row_epsilon(column.epsilon)
        privacy_rows.append({
            "run_id": run_id,
            "dataset": dataset,
            "partition": partition,
            "column": column.name,
            "output_column": column.output_name,
            "mechanism": column.mechanism,
            "parameters": json.dumps(described[column.output_name], sort_keys=True, default=str),
            "epsilon": column.epsilon,
            "epsilon_total_per_token": totals[column.name],
            "rows": s.rows,
            "null_rows": s.null_rows,
            "tokens": s.tokens,
            "tokens_perturbed": s.perturbed,
            "tokens_oov": s.oov,
            "tokens_changed": s.changed,
            "tokens_skipped": s.skipped,
            "substitution_rate": s.substitution_rate,
            "row_epsilon_mean": row_epsilon["mean"],
            "row_epsilon_p50": row_epsilon["p50"],
            "row_epsilon_p99": row_epsilon["p99"],
            "row_epsilon_max": row_epsilon["max"],
            "min_count": min_count,
            "pairs_reported": len(counts),
            "pairs_suppressed": len(s.pairs[0]) - len(counts),
            **deniability[column.output_name],
        })
        pair_frames.append(pd.DataFrame({
            "run_id": run_id, "column": column.name, "output_column": column.output_name,
            "original": words.take(originals).to_pylist() if len(originals) else [],
            "substitute": words.take(substitutes).to_pylist() if len(substitutes) else [],
            "count": counts,
        }))
        rate_frames.append(pd.DataFrame({
            "run_id": run_id, "column": column.name, "output_column": column.output_name,
            "word": words.take(word_ids).to_pylist() if len(word_ids) else [],
            "seen": seen, "changed": changed,
            "substitution_rate": changed / seen if len(seen) else [],
        }))
    _append(spark, locations["privacy_stats"], pd.DataFrame(privacy_rows))
    _append(spark, locations["substitution_stats"], pd.concat(pair_frames, ignore_index=True))
    _append(spark, locations["substitution_rates"], pd.concat(rate_frames, ignore_index=True))


def _deniability(spark: SparkSession, config: Config, mechanism: Any) -> dict[str, Any]:
    """N_w and S_w summaries of the mechanism over the vocabulary (not over
    the private data): from the calibration table when configured and it has
    this mechanism and epsilon, else measured on a sample now."""
    keys = [f"{stat}_{k}" for stat in ("nw", "sw") for k in ("mean", *(f"p{q}" for q in QUANTILES))]
    table = config.job.calibration_table
    if table:
        found = (
            spark.read.parquet(table)
            .where(f"band = 'all' AND status = 'ok' AND mechanism = '{mechanism.name}'")
            .where(F.abs(F.col("epsilon") - F.lit(mechanism.epsilon)) < 1e-9)
            .limit(1).collect()
        )
        if found:
            return {**{k: found[0][k] for k in keys}, "deniability_source": f"calibration table {table}"}
        log.warning("%s has no row for %s at epsilon %g: measuring N_w/S_w on a sample",
                    table, mechanism.name, mechanism.epsilon)
    sample = stratified_sample(mechanism.embeddings.size, config.job.deniability_sample)
    n_w, s_w = plausible_deniability(mechanism, sample, config.job.deniability_draws)
    summary = {f"nw_{k}": v for k, v in summarize(n_w).items()}
    summary.update({f"sw_{k}": v for k, v in summarize(s_w).items()})
    source = f"{len(sample)} vocabulary words x {config.job.deniability_draws} draws"
    return {**summary, "deniability_source": source}


def _append(spark: SparkSession, path: str, frame: pd.DataFrame) -> None:
    """Append a small driver-side table as Parquet (one file per run)."""
    if len(frame):
        spark.createDataFrame(frame).coalesce(1).write.mode("append").parquet(path)


def _read_ledger(spark: SparkSession, path: str) -> list[LedgerEntry]:
    if not HadoopFileSystem(spark, path).exists(path):
        return []
    names = [f.name for f in dataclasses.fields(LedgerEntry)]
    return [LedgerEntry(**{n: row[n] for n in names}) for row in spark.read.parquet(path).collect()]


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("dp-spark", "pyspark", "numpy", "pandas", "pyarrow", "faiss-cpu"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class _PhaseTimer:
    def __init__(self) -> None:
        self._start = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.laps[phase] = round(now - self._start, 3)
        log.info("%s (%.1f s)", phase, now - self._start)
        self._start = now


def main(argv: list[str] | None = None) -> int:
    """Entry point shared by ``spark-submit jobs/perturb.py`` and ``python -m dp_spark perturb``."""
    return command_main("perturb", "Perturb text columns of a table.", add_arguments, run_from_arguments, argv)


def command_main(prog: str, description: str, add: Any, run_parsed: Any, argv: list[str] | None) -> int:
    """Parse ``argv`` with ``add``'s arguments, set up logging, run ``run_parsed``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add(parser)
    configure_logging()
    return run_parsed(parser.parse_args(argv))


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # faiss announces at INFO which of its builds it loaded, at every import.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    logging.getLogger("py4j").setLevel(logging.WARNING)


def run_from_arguments(args: argparse.Namespace) -> int:
    """Run from parsed arguments; user errors (bad config, bad input, a refused
    recomposition) print one clear message and exit with status 2."""
    from dp_spark.spark.session import get_session

    try:
        config = load_config(args.config).with_overrides(args.input, args.output)
        partitions = parse_partitions(args.partition)
    except ValueError as error:
        return user_error(error)
    started_here = SparkSession.getActiveSession() is None
    spark = get_session(
        f"dp-spark perturb {config.input.dataset_name}", args.master, config.job.max_records_per_batch
    )
    try:
        result = run(
            spark, config, partitions, args.seed.encode() if args.seed else None, args.allow_recompose
        )
    except USER_ERRORS as error:
        return user_error(error)
    finally:
        if started_here:
            spark.stop()
    print(f"run {result.run_id} succeeded: {result.manifest['rows']} rows")
    for name in ("table", "privacy_stats", "substitution_stats", "substitution_rates", "ledger", "manifest"):
        print(f"  {name:19s} {result.locations[name]}")
    return 0


USER_ERRORS = (ValueError, RecompositionRefused, FileExistsError)


def user_error(error: BaseException) -> int:
    log.debug("user error", exc_info=error)
    print(f"dp-spark: error: {error}", file=sys.stderr)
    return 2
