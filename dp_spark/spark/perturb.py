"""The perturb job: one run is one transaction over an output root.

    plan        run id, seed, locations
    validate    config, referenced files, output locations, input schema,
                partition values, mechanisms on the real vocabulary, output
                format: everything checkable before any data is read
    lock        one run at a time per output root; finish or roll back a run
                that was killed half-way
    ledger      what the run adds to what was released; refuse a silent
                recomposition; record the release as pending
    perturb     one pass over the input, into the run's staging folder, with
                the statistics summed from the same pass
    statistics  privacy_stats, substitution_stats, substitution_rates (staged)
    publish     everything goes live together, then the ledger entry commits
    manifest    what ran, with what, how long each phase took, and how it ended

Layout under the output root:
    table/                 the perturbed table (or output.table in the catalog)
    privacy_stats/         one row per run and column
    substitution_stats/    (run, column, original, substitute, count), counts >= min_count
    substitution_rates/    (run, column, word, seen, changed, rate), words seen >= min_count
    ledger/<run>.json      the releases of each run, pending / committed / rolled back
    manifests/<run>.json   resolved config, seed fingerprint, versions, counts, phases, status
"""

from __future__ import annotations

import contextlib
import json
import logging
import platform
import re
import secrets
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Iterator

from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from dp_spark import storage
from dp_spark.config import ColumnConfig, Config
from dp_spark.deniability import deniability_summary
from dp_spark.errors import ConfigError, DPRuntimeError, DPSparkError, InputError, PrivacyRefusal
from dp_spark.ledger import (
    COMMITTED,
    ROLLED_BACK,
    ColumnTotal,
    LedgerEntry,
    Release,
    canonical_partition,
    partition_label,
    plan_run,
    row_key_label,
)
from dp_spark.ledger_store import LedgerStore
from dp_spark.lock import RunLock
from dp_spark.publish import (
    JOURNAL,
    Move,
    append_moves,
    publish,
    recover,
    staging_location,
    table_moves,
    write_journal,
)
from dp_spark.randomness import seed_fingerprint
from dp_spark.resources import Runtime, artifact_for, complete_params
from dp_spark.spark.io import TRANSACTIONAL_FORMATS, Input, check_output, read_input, typed_partitions
from dp_spark.spark.perturber import DPTextPerturber, check_id_column, input_kind, perturb
from dp_spark.spark.session import is_connect, phase
from dp_spark.spark.statistics import collect_statistics, collect_statistics_and_repeated_keys, repeated_keys
from dp_spark.spark.tables import STATISTICS_TABLES, ColumnReport, privacy_stats, substitution_tables, write_frame

log = logging.getLogger("dp_spark.perturb")


@dataclass(frozen=True)
class Seed:
    """The run's secret seed and where it came from (never written anywhere:
    the manifest and the ledger get ``source`` and ``fingerprint`` only)."""

    value: bytes = field(repr=False)
    source: str

    @property
    def fingerprint(self) -> str:
        return seed_fingerprint(self.value)

    @classmethod
    def fresh(cls) -> "Seed":
        return cls(secrets.token_bytes(16), "random")


@dataclass
class RunResult:
    run_id: str
    status: str
    locations: dict[str, str]
    manifest: dict[str, Any]
    totals: dict[str, ColumnTotal]
    statistics: dict[str, Any] = field(default_factory=dict)


class _Timer:
    def __init__(self) -> None:
        self.laps: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.laps[name] = round(time.perf_counter() - started, 3)
            log.info("%s: %.1f s", name, self.laps[name])


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


def output_locations(config: Config, run_id: str) -> dict[str, str]:
    root = config.output.root
    locations = {name: storage.join(root, name) for name in ("table", *STATISTICS_TABLES, "ledger")}
    if config.output.table:
        locations["table"] = config.output.table
    locations["manifest"] = storage.join(root, "manifests", f"{run_id}.json")
    return locations


def run(
    spark: SparkSession,
    config: Config,
    partitions: dict[str, str] | None = None,
    seed: Seed | None = None,
    allow_recompose: bool = False,
    *,
    run_id: str | None = None,
    explain: bool = False,
    break_stale_lock: bool = False,
) -> RunResult:
    """Run the perturb job (``explain``: validate and plan, write nothing)."""
    seed = seed or Seed.fresh()
    run_id = run_id or new_run_id()
    locations = output_locations(config, run_id)
    timer = _Timer()
    with timer("validate configuration and locations"):
        check_references(config)
        if not explain:
            try:
                storage.check_writable(config.output.root)
            except DPRuntimeError as error:
                raise ConfigError(f"{config.source}: output.root: {error}") from None
    lock = contextlib.nullcontext() if explain else RunLock(config.output.root, run_id, break_stale=break_stale_lock)
    with lock:
        ledger = LedgerStore(locations["ledger"])
        if not explain:
            recover(config.output.root, ledger, lambda run, status, note: _mark_manifest(config, run, status, note))
            done = ledger.runs().get(run_id)
            if done is not None and done["status"] == COMMITTED:
                log.info("run %s already succeeded: nothing to do (a retry)", run_id)
                manifest = json.loads(storage.read_text(locations["manifest"]))
                return RunResult(run_id, "already succeeded", locations, manifest, {})
        plan = _plan(spark, config, partitions or {}, seed, allow_recompose, run_id, ledger, timer)
        if explain:
            return RunResult(run_id, "explained", locations, _explanation(config, plan, locations), plan.totals)
        return _execute(spark, config, plan, seed, run_id, locations, ledger, timer)


@dataclass
class _Plan:
    input: Input
    frame: DataFrame
    selection: dict[str, Any]
    runtime: Runtime
    perturbers: list[DPTextPerturber]
    releases: list[Release]
    totals: dict[str, ColumnTotal]
    kinds: dict[str, str]


def check_references(config: Config) -> None:
    """Every file the config names exists, before anything is read."""
    embeddings = config.embeddings
    referenced = [("embeddings.artifact", embeddings.artifact), ("job.calibration_table", config.job.calibration_table)]
    if not embeddings.artifact and embeddings.source != "default":
        referenced += [("embeddings.path", embeddings.path), ("embeddings.vocabulary", embeddings.vocabulary)]
    for key, location in referenced:
        if location and not storage.exists(location):
            raise ConfigError(f"{config.source}: {key} = {location} does not exist")
    if config.input.path and not storage.exists(config.input.path):
        raise InputError(f"input {config.input.path}: the path does not exist")


def _plan(spark: SparkSession, config: Config, partitions: dict[str, str], seed: Seed, allow_recompose: bool,
          run_id: str, ledger: LedgerStore, timer: _Timer) -> _Plan:
    with timer("read the input schema"), phase(spark, run_id, "read input schema"):
        source = read_input(spark, config.input)
        schema = source.frame.schema
        kinds = {c.name: input_kind(schema, c.name, c.kind) for c in config.columns}
        _check_columns(config, source)
        selection = typed_partitions(schema, partitions)
        frame = source.frame
        for key, value in selection.items():
            frame = frame.where(F.col(key) == F.lit(value))
    with timer("load embeddings artifact"), phase(spark, run_id, "load resources"):
        mechanisms = [(c.mechanism, complete_params(c.mechanism, c.params, config.index.type)) for c in config.columns]
        runtime = Runtime(artifact_for(config.embeddings, config.index, mechanisms))
    with timer("build the mechanisms and check the output"):
        perturbers = [_perturber(config, column, kinds[column.name], runtime, seed) for column in config.columns]
        releases = _releases(config, perturbers, kinds)
        output_schema = perturb_schema_preview(schema, config, source)
        check_output(spark, config.output, output_schema, storage.join(config.output.root, "_dp_spark_format_probe"))
        _check_output_mode(spark, config)
        totals = plan_run(ledger.entries(), config.input.dataset_name, selection, releases, seed.fingerprint,
                          row_key_label(config.job.id_column), allow_recompose)
    return _Plan(source, frame, selection, runtime, perturbers, releases, totals, kinds)


def _releases(config: Config, perturbers: list[DPTextPerturber], kinds: dict[str, str]) -> list[Release]:
    """Each column's release and its guarantee; a column whose mechanism
    promises none is refused unless it accepts that."""
    releases = []
    for column, perturber in zip(config.columns, perturbers):
        try:
            mechanism = perturber.built_mechanism()
        except ConfigError as error:
            raise ConfigError(f"{config.source}: {error}") from None
        guarantee = mechanism.guarantee()
        if not guarantee.holds and not column.accept_no_guarantee:
            raise PrivacyRefusal(
                f"{config.source}: column {column.name!r} -> {column.output_name!r}: mechanism "
                f"{column.mechanism!r} promises no privacy guarantee ({guarantee.statement}); set "
                f"accept_no_guarantee = true on the column to release it anyway"
            )
        if not guarantee.holds:
            log.warning("column %s -> %s: %s releases WITHOUT a privacy guarantee (accept_no_guarantee = true): %s",
                        column.name, column.output_name, column.mechanism, guarantee.statement)
        releases.append(Release(column.name, column.output_name, column.mechanism, column.epsilon,
                                perturber.release_fingerprint(kinds[column.name]), guarantee))
    return releases


def _check_output_mode(spark: SparkSession, config: Config) -> None:
    output = config.output
    if output.mode != "error":
        return
    exists = spark.catalog.tableExists(output.table) if output.table else storage.exists(output.location("table"))
    if exists:
        raise InputError(f"{config.source}: the output table {output.table or output.location('table')} exists "
                         "and output.mode is 'error'")


def _check_columns(config: Config, source: Input) -> None:
    columns = source.columns
    id_column = config.job.id_column
    if id_column and id_column not in columns:
        raise InputError(f"{config.source}: job.id_column {id_column!r} is not a column of the input "
                         f"(columns: {', '.join(columns)})")
    if id_column:
        check_id_column(source.frame.schema, id_column)
    read = {c.name for c in config.columns}
    for column in config.columns:
        name = column.output_name
        if name in columns and name != column.name and name not in read:
            raise ConfigError(f"{config.source}: column {column.name!r} would be written to {name!r}, an input "
                              "column it does not read: that column would be lost from the output and "
                              "the text would sit beside it; choose a new output_column")
    output_columns = set(columns) | {c.output_name for c in config.columns}
    missing = [c for c in config.output.partition_by if c not in output_columns]
    if missing:
        raise InputError(f"{config.source}: output.partition_by column(s) {', '.join(missing)} are not in the output")


def perturb_schema_preview(schema: Any, config: Config, source: Input) -> Any:
    from pyspark.sql import types as T

    fields = [f for f in schema.fields if f.name in source.columns]
    for column in config.columns:
        field = T.StructField(column.output_name, schema[column.name].dataType, True)
        names = [f.name for f in fields]
        fields = [field if f.name == column.output_name else f for f in fields] if column.output_name in names \
            else [*fields, field]
    return T.StructType(fields)


def _perturber(config: Config, column: ColumnConfig, kind: str, runtime: Runtime, seed: Seed) -> DPTextPerturber:
    perturber = DPTextPerturber(
        inputCol=column.name,
        outputCol=column.output_name,
        mechanism=column.mechanism,
        epsilon=column.epsilon,
        mechanismParams=json.dumps(column.params, sort_keys=True),
        inputKind=kind,
        oov=column.oov,
        placeholder=column.placeholder,
        entities=column.entities,
        neighbours=config.index.neighbours,
        indexType=config.index.type,
        acceptNoGuarantee=column.accept_no_guarantee,
    ).setSeed(seed.value).setEmbeddings(config.embeddings).setRuntime(runtime)
    if config.job.id_column:
        perturber.set(perturber.idCol, config.job.id_column)
    return perturber


def check_unique_ids(frame: DataFrame, id_column: str) -> None:
    """Refuse repeated row keys: rows with one key would share their noise."""
    repeated = repeated_keys(frame, id_column).first()
    if repeated["keys"]:
        _refuse_repeated_ids(id_column, repeated["keys"], repeated["rows"])


def _refuse_repeated_ids(id_column: str, keys: int, rows: int) -> None:
    raise InputError(
        f"id column {id_column!r} is not unique: {keys} value(s) repeat, over {rows} rows; rows with one key "
        "would get identical noise (their outputs would reveal that they share input words); deduplicate the "
        "input or key by another column"
    )


def _execute(spark: SparkSession, config: Config, plan: _Plan, seed: Seed, run_id: str,
             locations: dict[str, str], ledger: LedgerStore, timer: _Timer) -> RunResult:
    """perturb -> statistics -> publish -> manifest, with the release pending in
    the ledger from before the first write until it is committed or rolled back."""
    staging = staging_location(config.output.root, run_id)
    direct = config.output.table is not None or config.output.format in TRANSACTIONAL_FORMATS
    if config.job.id_column and direct:
        # The table goes live with its write: keys are checked on the input first.
        with timer("check that row keys are unique"), phase(spark, run_id, "check row keys"):
            check_unique_ids(plan.frame, config.job.id_column)
    with timer("record the release as pending"):
        manifest = _manifest(spark, config, plan, seed, run_id, locations)
        storage.write_text(locations["manifest"], json.dumps(manifest, indent=2, default=str))
        _record_pending(ledger, config, plan, seed, run_id)
    try:
        staged_table, summed = _perturb_and_write(spark, config, plan, run_id, staging, locations, timer, direct)
        with timer("plausible deniability"):
            reports = _reports(config, plan, summed)
        with timer("write statistics"):
            moves = _stage_statistics(config, run_id, plan, reports, staging, locations)
        if staged_table is not None:
            moves = table_moves(staged_table, locations["table"], storage.join(staging, "previous", "table"),
                                bool(config.output.partition_by)) + moves
        with timer("publish"):
            _publish(staging, run_id, moves, ledger)
    except BaseException as error:
        raise _failed(error, staging, run_id, ledger, manifest, locations, timer) from None
    first = reports[0].statistics
    manifest.update(status="succeeded", finished_at=_now(), rows=first.rows + first.null_rows,
                    phases_seconds=timer.laps, columns=_manifest_columns(reports))
    storage.write_text(locations["manifest"], json.dumps(manifest, indent=2, default=str))
    _log_columns(reports)
    statistics = {report.column.output_name: report.statistics for report in reports}
    return RunResult(run_id, "succeeded", locations, manifest, plan.totals, statistics)


def _record_pending(ledger: LedgerStore, config: Config, plan: _Plan, seed: Seed, run_id: str) -> None:
    """The run's releases, recorded before anything can change: they count until committed or rolled back."""
    recorded_at = _now()
    ledger.record(run_id, [
        LedgerEntry.of(release, run_id=run_id, dataset=config.input.dataset_name,
                       partition=canonical_partition(plan.selection), seed_fingerprint=seed.fingerprint,
                       row_key=row_key_label(config.job.id_column), recorded_at=recorded_at)
        for release in plan.releases
    ])


def _perturb_and_write(spark: SparkSession, config: Config, plan: _Plan, run_id: str, staging: str,
                       locations: dict[str, str], timer: _Timer, direct: bool) -> tuple[str | None, dict[str, Any]]:
    """One pass: the table written (staged, or in place for catalog and
    transactional outputs), row keys checked, statistics summed, all from
    the same persisted pass."""
    with timer("plan the pass and mark it for caching"):
        perturbation = perturb(plan.frame, plan.perturbers, statistics=True, malformed=plan.input.malformed)
        combined = perturbation.combined.persist()
    try:
        if direct:
            # The table goes live with this write: from here on the release counts.
            write_journal(staging, run_id, [])
        with timer("perturb and write the table"), phase(spark, run_id, "perturb and write table"):
            staged_table = _write_table(perturbation.data, config, staging)
        vocab_size, min_count = len(plan.runtime.vocabulary), config.job.min_count
        if config.job.id_column and not direct:
            # Checked on the pass just computed (cached), before anything is published, in the
            # statistics' job: a small run pays one job's fixed cost, not two.
            with timer("sum the statistics and check that row keys are unique"), \
                    phase(spark, run_id, "sum statistics, check row keys"):
                summed, (keys, rows) = collect_statistics_and_repeated_keys(
                    perturbation.stat_rows, perturbation.outputs, vocab_size, min_count, perturbation.data,
                    config.job.id_column)
            if keys:
                _refuse_repeated_ids(config.job.id_column, keys, rows)
        else:
            with timer("sum the statistics"), phase(spark, run_id, "sum statistics"):
                summed = collect_statistics(perturbation.stat_rows, perturbation.outputs, vocab_size, min_count)
    finally:
        combined.unpersist()
    return staged_table, summed


def _publish(staging: str, run_id: str, moves: list[Move], ledger: LedgerStore) -> None:
    """Journal the moves, perform them, commit the ledger entry. From the
    journal on, an interrupted run is finished by the next one, not rolled back."""
    write_journal(staging, run_id, moves)
    publish(staging)
    ledger.set_status(run_id, COMMITTED)
    storage.delete(staging)


def _failed(error: BaseException, staging: str, run_id: str, ledger: LedgerStore, manifest: dict[str, Any],
            locations: dict[str, str], timer: _Timer) -> BaseException:
    """Roll back what never went live, record the failure, and return the
    error as the user should see it."""
    failure = translate_failure(error)
    if not storage.exists(storage.join(staging, JOURNAL)):
        storage.delete(staging)
        ledger.set_status(run_id, ROLLED_BACK)
    manifest.update(status="failed", finished_at=_now(), error=f"{type(failure).__name__}: {failure}",
                    phases_seconds=timer.laps)
    storage.write_text(locations["manifest"], json.dumps(manifest, indent=2, default=str))
    log.error("run %s failed: %s", run_id, failure)
    return failure


def _log_columns(reports: list[ColumnReport]) -> None:
    for report in reports:
        s = report.statistics
        log.info("column %s: %d rows, %d tokens, %d perturbed, %d outside the vocabulary, substitution rate %.3f",
                 report.column.output_name, s.rows, s.tokens, s.perturbed, s.oov, s.substitution_rate)
        if report.column.oov == "keep" or s.unprotected:
            log.warning("column %s: %d token(s) outside the vocabulary released unprotected, as written (oov = %s)",
                        report.column.output_name, s.unprotected, report.column.oov)


def _write_table(data: DataFrame, config: Config, staging: str) -> str | None:
    """Write the table: into staging (returned), or, for catalog tables and
    transactional formats, in place through the format's own commit (None)."""
    output = config.output
    writer = data.write.format(output.format).options(**output.options)
    if output.partition_by:
        writer = writer.partitionBy(*output.partition_by)
    if output.table:
        if data.sparkSession.catalog.tableExists(output.table):
            # insertInto matches columns by position: put them in the table's order.
            data.select(*data.sparkSession.table(output.table).columns).write.insertInto(output.table, overwrite=True)
        else:
            writer.saveAsTable(output.table)
        return None
    if output.format in TRANSACTIONAL_FORMATS:
        writer.mode("overwrite").option("partitionOverwriteMode", "dynamic").save(output.location("table"))
        return None
    staged = storage.join(staging, "table")
    writer.mode("error").save(staged)
    return staged


def _reports(config: Config, plan: _Plan, summed: dict[str, Any]) -> list[ColumnReport]:
    reports = []
    for column, perturber in zip(config.columns, plan.perturbers):
        mechanism = perturber.built_mechanism()
        statistics, suppressed = summed[column.output_name]
        deniability = _deniability(config, mechanism, statistics)
        reports.append(ColumnReport(column, statistics, suppressed, mechanism.describe(), mechanism.guarantee(),
                                    plan.totals[column.name], deniability))
    return reports


def _deniability(config: Config, mechanism: Any, statistics: Any) -> dict[str, Any]:
    """N_w and S_w of the mechanism over a vocabulary sample and over the
    text's words; from the calibration table when it has this mechanism."""
    table = config.job.calibration_table
    text = statistics.words_seen
    summary = deniability_summary(mechanism, config.job.deniability_sample, config.job.deniability_draws,
                                  text if len(text[0]) else None, config.index.cache_dir)
    if table:
        found = _calibration_row(table, mechanism)
        if found is not None:
            summary.update(found, deniability_source=f"calibration table {table}")
    return summary


def _calibration_row(table: str, mechanism: Any) -> dict[str, Any] | None:
    import pyarrow.dataset as ds

    fs, path = storage.resolve(table)
    frame = ds.dataset(path, filesystem=fs, format="parquet").to_table().to_pandas()
    rows = frame[(frame["band"] == "all") & (frame["status"] == "ok") & (frame["mechanism"] == mechanism.name)
                 & ((frame["epsilon"] - mechanism.epsilon).abs() < 1e-9)]
    if rows.empty:
        log.warning("%s has no row for %s at epsilon %g: N_w/S_w measured on a sample", table, mechanism.name,
                    mechanism.epsilon)
        return None
    keys = [c for c in rows.columns if c.startswith(("nw_", "sw_"))]
    return {k: float(rows.iloc[0][k]) for k in keys}


def _stage_statistics(config: Config, run_id: str, plan: _Plan, reports: list[ColumnReport],
                      staging: str, locations: dict[str, str]) -> list[Move]:
    min_count = config.job.min_count
    pairs, rates = substitution_tables(run_id, reports, plan.runtime.vocabulary.words, min_count)
    frames = {
        "privacy_stats": privacy_stats(run_id, config.input.dataset_name, partition_label(plan.selection), reports,
                                       min_count),
        "substitution_stats": pairs,
        "substitution_rates": rates,
    }
    moves = []
    for name, frame in frames.items():
        staged = storage.join(staging, name)
        if write_frame(frame, staged, f"part-{run_id}.parquet"):
            moves += append_moves(staged, locations[name])
    return moves


def _manifest(spark: SparkSession, config: Config, plan: _Plan, seed: Seed, run_id: str,
              locations: dict[str, str]) -> dict[str, Any]:
    artifact = plan.runtime.artifact
    return {
        "run_id": run_id,
        "status": "running",
        "started_at": _now(),
        "finished_at": None,
        "seed_source": seed.source,
        "seed_fingerprint": seed.fingerprint,
        "config_file": config.source,
        "config": config.to_dict(),
        "input": {"location": config.input.location, "format": config.input.format,
                  "dataset": config.input.dataset_name, "partition": partition_label(plan.selection)},
        "output": locations,
        "artifact": {"id": artifact.id, "embeddings_fingerprint": artifact.fingerprint,
                     "words": artifact.meta["words"], "neighbours": artifact.neighbours_k},
        "releases": [
            {"column": r.column, "output_column": r.output_column, "mechanism": r.mechanism,
             "epsilon": r.epsilon, "release_fingerprint": r.release_fingerprint, **r.guarantee.to_record()}
            for r in plan.releases
        ],
        "versions": _versions(),
        "spark": {"mode": "connect" if is_connect(spark) else "classic", "version": spark.version},
    }


def _manifest_columns(reports: list[ColumnReport]) -> dict[str, Any]:
    return {
        r.column.output_name: {
            "input_column": r.column.name,
            "mechanism": r.described,
            "tokens": r.statistics.tokens,
            "tokens_perturbed": r.statistics.perturbed,
            "tokens_oov": r.statistics.oov,
            "tokens_changed": r.statistics.changed,
            "epsilon_total_per_token": r.total.epsilon if r.total.bounded else None,
            "delta_total_per_token": r.total.delta if r.total.bounded else None,
            "releases_without_guarantee": r.total.unprotected,
        }
        for r in reports
    }


def _explanation(config: Config, plan: _Plan, locations: dict[str, str]) -> dict[str, Any]:
    artifact = plan.runtime.artifact
    return {
        "input": {"location": config.input.location, "format": config.input.format,
                  "dataset": config.input.dataset_name, "partition": partition_label(plan.selection)},
        "columns": [
            {"column": r.column, "output_column": r.output_column, "kind": plan.kinds[r.column],
             "mechanism": r.mechanism, "epsilon": r.epsilon, "guarantee": r.guarantee.statement,
             "total_after_run": (f"{plan.totals[r.column].epsilon:g} per token"
                                 if plan.totals[r.column].bounded else "unbounded"),
             "composes_with_earlier_releases": len(plan.totals[r.column].earlier)}
            for r in plan.releases
        ],
        "resources": {"artifact": artifact.id, "words": artifact.meta["words"],
                      "neighbours": artifact.neighbours_k, "files": sorted(artifact.roles)},
        "output": locations,
        "row_key": row_key_label(config.job.id_column),
    }


def _mark_manifest(config: Config, run_id: str, status: str, note: str) -> None:
    location = storage.join(config.output.root, "manifests", f"{run_id}.json")
    manifest = json.loads(storage.read_text(location)) if storage.exists(location) else {"run_id": run_id}
    manifest.update(status=status, recovered_at=_now(), recovery=note)
    storage.write_text(location, json.dumps(manifest, indent=2, default=str))


_OWN_ERROR = re.compile(r"dp_spark\.errors\.(\w+): (.*)")


def translate_failure(error: BaseException) -> BaseException:
    """A failure as the user should see it: dp-spark's own errors raised in a
    task come back as themselves (from the worker's traceback); Spark's are
    named by their error class only, since their text can quote input rows."""
    if isinstance(error, DPSparkError) or not isinstance(error, Exception):
        return error
    text = str(error)
    found = _OWN_ERROR.findall(text)
    if found:
        name, message = found[-1]
        cls = {"InputError": InputError, "ConfigError": ConfigError, "PrivacyRefusal": PrivacyRefusal}.get(
            name, DPRuntimeError)
        return cls(message.strip())
    if isinstance(error, AnalysisException):
        return InputError(f"Spark could not plan the run: {str(error).splitlines()[0][:300]}")
    error_class = re.search(r"\[([A-Z_.]+)\]", text)
    return DPRuntimeError(
        f"a Spark job failed ({error_class.group(1) if error_class else type(error).__name__}); its message "
        "is not repeated here because it may quote input rows: see the Spark UI or driver log for details"
    )


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


__all__ = ["RunResult", "Seed", "check_unique_ids", "output_locations", "run", "translate_failure"]
