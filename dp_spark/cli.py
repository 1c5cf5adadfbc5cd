"""Command line: ``python -m dp_spark <command>`` (and ``spark-submit jobs/<command>.py``).

    perturb    perturb text columns of a table (the job)
    build      build the embeddings' artifact once, at any storage location
    calibrate  N_w / S_w against epsilon per mechanism: tables, plot, report
    evaluate   accuracy of classifiers trained on perturbed text, at equal privacy
    audit      measure a mechanism's privacy loss against the guarantee it books
    demo       perturb one sentence with each mechanism, no Spark

Every error a user can fix prints one line and exits with a documented
status: 2 bad config or input, 3 refused by the ledger or a guarantee check,
4 the output root is locked by another run, 1 anything else.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from typing import Any, Callable

from dp_spark.errors import ConfigError, DPSparkError, exit_code

log = logging.getLogger("dp_spark")

DEMO_SENTENCE = "the movie was terrible but the actors were great".split()
SEED_ENVIRONMENT = "DP_SPARK_SEED"


def configure_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # faiss announces at INFO which of its builds it loaded, at every import;
    # py4j logs every call (and pickled functions at DEBUG).
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    logging.getLogger("py4j").setLevel(logging.WARNING)


def _spark_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--master", help="Spark master for a local classic session (default local[2])")
    parser.add_argument("--remote", help="Spark Connect URL (sc://host:15002, or local[N] for a local server; "
                                         "default $SPARK_REMOTE)")
    parser.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    parser.add_argument("--verbose", action="store_true", help="debug logging")


def _perturb_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="TOML job configuration")
    parser.add_argument("--input", help="input path (overrides input.path / input.table)")
    parser.add_argument("--output", help="output root (overrides output.root)")
    parser.add_argument("--partition", action="append", default=[], metavar="KEY=VALUE",
                        help="perturb only rows where KEY = VALUE (repeatable; typed by the column)")
    parser.add_argument("--seed-file", help="file holding the secret seed (hex); or set $DP_SPARK_SEED (hex)")
    parser.add_argument("--seed", help="secret seed on the command line: tests and reproduction only (it shows "
                                       "in ps and the Spark UI)")
    parser.add_argument("--run-id", help="a run id of the scheduler's: a retry of a run that succeeded does nothing")
    parser.add_argument("--allow-recompose", action="store_true",
                        help="release data the ledger says was already released with other noise")
    parser.add_argument("--explain", action="store_true",
                        help="validate everything and print the plan; write nothing")
    parser.add_argument("--break-stale-lock", action="store_true",
                        help="take over the output root's lock from a run whose lease expired")
    _spark_arguments(parser)


def resolve_seed(args: argparse.Namespace) -> Any:
    """The run's seed: --seed-file, $DP_SPARK_SEED, --seed, or 128 fresh random bits."""
    from dp_spark.spark.perturb import Seed

    if args.seed_file:
        try:
            with open(args.seed_file, "rb") as handle:
                raw = handle.read()
        except OSError as error:
            raise ConfigError(f"--seed-file {args.seed_file}: {error.strerror}") from None
        return Seed(_seed_bytes(raw.strip(), f"--seed-file {args.seed_file}"), "file")
    if os.environ.get(SEED_ENVIRONMENT):
        return Seed(_seed_bytes(os.environ[SEED_ENVIRONMENT].strip().encode(), f"${SEED_ENVIRONMENT}"), "environment")
    if args.seed:
        log.warning("--seed puts the secret seed on the command line (ps, the Spark UI): use it for tests only; "
                    "use --seed-file or $%s in production", SEED_ENVIRONMENT)
        return Seed(args.seed.encode(), "given")
    return Seed.fresh()


def _seed_bytes(raw: bytes, where: str) -> bytes:
    try:
        value = bytes.fromhex(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ConfigError(f"{where}: the seed must be hexadecimal (e.g. from `openssl rand -hex 16`)") from None
    if len(value) < 16:
        raise ConfigError(f"{where}: the seed has {len(value)} bytes; use at least 16 (32 hex digits)")
    return value


def run_perturb(args: argparse.Namespace) -> dict[str, Any]:
    from dp_spark.config import load_config
    from dp_spark.spark.io import parse_partitions
    from dp_spark.spark.perturb import run
    from dp_spark.spark.session import session

    config = load_config(args.config).with_overrides(args.input, args.output)
    partitions = parse_partitions(args.partition)
    seed = resolve_seed(args)
    with session(f"dp-spark perturb {config.input.dataset_name}", args.master, args.remote,
                 config.job.max_records_per_batch) as spark:
        result = run(spark, config, partitions, seed, args.allow_recompose, run_id=args.run_id,
                     explain=args.explain, break_stale_lock=args.break_stale_lock)
    if result.status == "explained":
        return {"command": "perturb", "status": "explained", "run_id": result.run_id, "plan": result.manifest}
    return {"command": "perturb", "status": result.status, "run_id": result.run_id,
            "rows": result.manifest.get("rows"), "locations": result.locations,
            "columns": result.manifest.get("columns", {})}


def print_perturb(summary: dict[str, Any]) -> None:
    if summary["status"] == "explained":
        print(f"plan of run {summary['run_id']} (nothing written):")
        print(json.dumps(summary["plan"], indent=2))
        return
    print(f"run {summary['run_id']} {summary['status']}: {summary['rows']} rows")
    for name in ("table", "privacy_stats", "substitution_stats", "substitution_rates", "ledger", "manifest"):
        print(f"  {name:19s} {summary['locations'][name]}")


def _build_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="a config whose [embeddings] and [index] to build (default embeddings)")
    parser.add_argument("--output", required=True, help="where to put the artifact folder (any storage location)")
    parser.add_argument("--index-types", default="", help="approximate indexes to include, e.g. hnsw,ivf")
    parser.add_argument("--spark", action="store_true",
                        help="find the neighbour table with Spark tasks (query slices; spark-submit jobs/build.py "
                             "always does)")
    parser.add_argument("--search", default="auto", choices=("auto", "flat", "ivf"),
                        help="with --spark: flat (exact, the driver's table) or ivf (approximate); auto: ivf from "
                             "1M words")
    parser.add_argument("--slices", type=int, help="with --spark: query slices (tasks; default one per 16,384 words)")
    parser.add_argument("--nprobe", type=int, default=256,
                        help="with --spark --search ivf: lists probed per word (recall@64 0.99 at 400k words)")
    parser.add_argument("--threads", type=int, help="with --spark: FAISS threads per task (default: the driver's, "
                                                    "which makes the flat table the driver's own exactly)")
    _spark_arguments(parser)


def run_build(args: argparse.Namespace) -> dict[str, Any]:
    import time

    from dp_spark.artifact import build_to
    from dp_spark.config import Config, load_config
    from dp_spark.embeddings import load_embeddings

    if not args.spark and (args.search != "auto" or args.slices or args.threads or args.master or args.remote):
        raise ConfigError("--search, --slices, --threads, --master and --remote build with Spark: add --spark")
    config = load_config(args.config, "build") if args.config else Config()
    kinds = tuple(k.strip() for k in args.index_types.split(",") if k.strip())
    started = time.perf_counter()
    embeddings = load_embeddings(config.embeddings)
    log.info("build: %d words loaded in %.1f s", embeddings.size, time.perf_counter() - started)
    arguments = (embeddings, args.output, config.index.neighbours, kinds, config.embeddings.to_dict())
    if not args.spark:
        location, artifact = build_to(*arguments)
    else:
        from dp_spark.spark.build import SparkTableBuilder, table_plan
        from dp_spark.spark.session import session

        plan = table_plan(embeddings.size, args.search, args.slices, nprobe=args.nprobe, threads=args.threads)
        with session("dp-spark build", args.master, args.remote) as spark:
            builder = SparkTableBuilder(spark, plan)
            location, artifact = build_to(*arguments, table_builder=builder, table=plan.description())
    log.info("build: artifact %s written to %s in %.1f s", artifact.id, location, time.perf_counter() - started)
    return {"command": "build", "status": "succeeded", "artifact": location, "id": artifact.id,
            "words": artifact.meta["words"], "neighbours": artifact.neighbours_k, "files": sorted(artifact.roles),
            "neighbour_table": artifact.meta["neighbour_table"]}


def print_build(summary: dict[str, Any]) -> None:
    table = summary["neighbour_table"]
    how = "exact" if table["exact"] else f"approximate ({table['search']}, nprobe {table.get('nprobe')})"
    print(f"artifact {summary['id']} ({summary['words']} words, K = {summary['neighbours']}, {how} neighbour table, "
          f"found {'by Spark tasks' if table['built_on'] == 'spark' else 'on the driver'}) at {summary['artifact']}")
    print(f'  use it with:  [embeddings] artifact = "{summary["artifact"]}"')


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vocab-size", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)


def run_demo(args: argparse.Namespace) -> int:
    import numpy as np

    from dp_spark.embeddings import Embeddings
    from dp_spark.mechanisms import build_mechanism

    embeddings = Embeddings.default(args.vocab_size)
    print(f"embeddings: GloVe 6B 50d, {embeddings.size} words")
    print(f"input:            {' '.join(DEMO_SENTENCE)}")
    for name, epsilon in (("mlap", 10.0), ("mlap", 20.0), ("tgumbel", 100.0)):
        mechanism = build_mechanism(name, embeddings, epsilon=epsilon)
        output = mechanism.perturb_words(DEMO_SENTENCE, np.random.default_rng(args.seed))
        print(f"{name:8s} eps={epsilon:<6g} {' '.join(output)}   [{mechanism.guarantee().statement}]")
    return 0


def _from(module: str, name: str) -> Callable:
    """A command's function, imported when called (so that ``--help`` and the
    pure commands never import pyspark)."""

    def call(*args: Any) -> Any:
        return getattr(importlib.import_module(module), name)(*args)

    return call


COMMANDS: dict[str, tuple[str, Callable, Callable, Callable | None]] = {
    "perturb": ("perturb text columns of a table", _perturb_arguments, run_perturb, print_perturb),
    "build": ("build the embeddings' artifact", _build_arguments, run_build, print_build),
    "calibrate": ("N_w / S_w against epsilon per mechanism", _from("dp_spark.spark.calibrate", "add_arguments"),
                  _from("dp_spark.spark.calibrate", "run_from_arguments"),
                  _from("dp_spark.spark.calibrate", "print_summary")),
    "evaluate": ("utility of classifiers trained on perturbed text", _from("dp_spark.spark.evaluate", "add_arguments"),
                 _from("dp_spark.spark.evaluate", "run_from_arguments"),
                 _from("dp_spark.spark.evaluate", "print_summary")),
    "audit": ("measure a mechanism's privacy loss against the guarantee it books",
              _from("dp_spark.audit", "add_arguments"), _from("dp_spark.audit", "run_from_arguments"), None),
    "demo": ("perturb a sentence with each mechanism (no Spark)", _demo_arguments, run_demo, None),
}


def parser_for(commands: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dp_spark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in commands:
        description, add, _, _ = COMMANDS[name]
        add(sub.add_parser(name, help=description, description=description))
    return parser


def main(argv: list[str] | None = None, commands: list[str] | None = None) -> int:
    """Run a command; user errors print one line and return their exit status."""
    parser = parser_for(commands or list(COMMANDS))
    if commands and len(commands) == 1 and (not argv or argv[0] != commands[0]):
        argv = [commands[0], *(argv if argv is not None else sys.argv[1:])]
    args = parser.parse_args(argv)
    configure_logging(getattr(args, "verbose", False))
    _, _, handler, printer = COMMANDS[args.command]
    try:
        outcome = handler(args)
    except DPSparkError as error:
        return _fail(error, args)
    except Exception as error:  # Spark's own errors: one line, never a Java stack trace
        from dp_spark.spark.perturb import translate_failure

        log.debug("failure", exc_info=error)
        return _fail(translate_failure(error), args)
    if isinstance(outcome, int):
        return outcome
    if getattr(args, "json", False):
        print(json.dumps(outcome, default=str))
    elif printer:
        printer(outcome)
    return 0


def _fail(error: BaseException, args: argparse.Namespace) -> int:
    code = exit_code(error)
    message = str(error).strip().replace("\n", " ") or type(error).__name__
    if getattr(args, "json", False):
        print(json.dumps({"command": args.command, "status": "failed", "exit_code": code,
                          "error": type(error).__name__, "message": message}))
    print(f"dp-spark: error: {message}", file=sys.stderr)
    return code
