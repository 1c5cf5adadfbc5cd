"""Spark throughput on real sentences: string and array<string> columns
against a bare mapInArrow pass-through in the same run.

Usage: python benchmarks/spark_job.py [--master local[2]] [--masters local[1],local[2]]
                                      [--words 4000000] [--mlap-words 100000] [--rounds 3]
                                      [--passes NAME,...] [--data ../shared/data]

Input: the sentences of ``../shared/data`` (``text_corpus``), one per row,
repeated to at least --words words, written once to a temporary Parquet
file with an ``id`` column, the sentence as a string column ``text`` and
the same words as an array<string> column ``tokens``, in --tasks input
splits of equal size under every master. Each pass reads its column and
the id, and writes to the noop sink:

- ``bare``: ``mapInArrow(lambda it: it)``, Spark's plumbing alone;
- ``identity``: dp-spark with a custom mechanism that returns its input
  (tokenising, lookups, keys, reassembly and statistics, no noise);
- ``tgumbel``: tgumbel at epsilon 100;
- ``mlap``: mlap at epsilon 10 on the first --mlap-words words only;
- ``tgumbel-parquet``: tgumbel on strings written to Parquet;
- ``job``: the whole job, ``dp_spark.spark.perturb.run`` (tgumbel on the
  string column, keyed by id, to Parquet under a fresh output root: the
  persisted pass, statistics summed with the row-key check, N_w/S_w from
  the cache after the warm-up, ledger, manifest, publish), on a file of
  the id and text columns only.

dp-spark passes go through ``perturb(..., statistics=True)``, as the job
does, keyed by the id column. Rounds are paired: every round runs every
pass once (in a rotated order), and each ratio is the median over rounds of
the ratio to the bare pass of the same column kind in the same round; a
warm-up round is dropped. CPU seconds of the JVM and of the Python workers
are read from /proc for each pass.

With --masters, each round runs every pass once under each master, a fresh
session each (warm-up pass dropped), and the table compares them, with the
cores each master kept busy (JVM and Python CPU seconds over wall seconds).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))

from text_corpus import DEFAULT_DATA, corpus, word_count  # noqa: E402

import dp_spark.spark.perturb as job  # noqa: E402
from dp_spark.config import EmbeddingsConfig, IndexConfig, parse_config  # noqa: E402
from dp_spark.embeddings import Embeddings  # noqa: E402
from dp_spark.mechanisms.base import Mechanism  # noqa: E402
from dp_spark.resources import Runtime, artifact_for  # noqa: E402
from dp_spark.spark.perturber import DPTextPerturber, perturb  # noqa: E402
from dp_spark.spark.session import start_session  # noqa: E402

PASSES = ("bare", "identity", "tgumbel", "mlap", "tgumbel-parquet", "job")
KINDS = {"string": "text", "tokens": "tokens"}


class Identity(Mechanism):
    """Returns its input: measures everything but the mechanism."""

    name = "identity"

    def _perturb_in_vocabulary(self, ids, rng):
        return ids


def identity_mechanism(embeddings: Embeddings) -> Mechanism:
    return Identity(embeddings, 1.0)


def cpu_seconds() -> dict[str, float]:
    """CPU seconds used so far by this process's descendants (the JVM and
    the Python workers it forks), by kind, from /proc (reaped children's
    time counts in their parent's cutime)."""
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                text = handle.read()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        stats[int(entry)] = [name, *fields]
        children.setdefault(int(fields[1]), []).append(int(entry))
    tick = os.sysconf("SC_CLK_TCK")
    used = {"jvm": 0.0, "python": 0.0}
    pending = list(children.get(os.getpid(), []))
    while pending:
        pid = pending.pop()
        name, *fields = stats[pid]
        # fields[11:15]: utime, stime, cutime, cstime (man 5 proc, from field 14)
        seconds = sum(int(x) for x in fields[11:15]) / tick
        used["jvm" if name == "java" else "python"] += seconds
        pending.extend(children.get(pid, []))
    return used


def make_pass(spark, name: str, kind: str, paths: dict[str, Path], output: Path, tasks: int,
              runtime: Runtime | None = None):
    """A function running one pass to its sink, reading its file in ``tasks`` splits."""
    column = KINDS[kind]
    source = paths[name if name in ("mlap", "job") else "input"]

    def run() -> None:
        spark.conf.set("spark.sql.files.maxPartitionBytes", str(-(-source.stat().st_size // tasks) + 1))
        if name == "job":
            document = {
                "input": {"path": str(source), "format": "parquet", "dataset": "benchmark"},
                "output": {"root": str(output)},
                "job": {"id_column": "id"},
                "columns": [{"name": column, "mechanism": "tgumbel", "epsilon": 100.0, "accept_no_guarantee": True}],
            }
            job.run(spark, parse_config(document, source="benchmark"), seed=job.Seed.fresh())
            return
        df = spark.read.parquet(str(source)).select("id", column)
        if name == "bare":
            result = df.mapInArrow(lambda batches: batches, df.schema)
        else:
            mechanism = "tgumbel" if name.startswith("tgumbel") else name
            perturber = DPTextPerturber(
                inputCol=column, outputCol=column, mechanism=mechanism, idCol="id", acceptNoGuarantee=True,
                epsilon={"identity": 1.0, "tgumbel": 100.0, "mlap": 10.0}[mechanism],
            ).setEmbeddings(EmbeddingsConfig())
            if runtime is not None:
                perturber.setRuntime(runtime)
            if name == "identity":
                perturber.setCustomMechanism(identity_mechanism)
            result = perturb(df, [perturber], statistics=True).combined
        if name.endswith("parquet"):
            result.write.mode("overwrite").parquet(str(output))
        else:
            result.write.format("noop").mode("overwrite").save()

    return run


def timed(run) -> tuple[float, dict[str, float]]:
    before = cpu_seconds()
    start = time.perf_counter()
    run()
    elapsed = time.perf_counter() - start
    after = cpu_seconds()
    return elapsed, {k: after[k] - before[k] for k in after}


def session(master: str):
    spark, _ = start_session("dp-spark benchmark", master)
    if hasattr(spark, "sparkContext"):
        spark.sparkContext.setLogLevel("ERROR")
    return spark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--masters", help="comma-separated masters to compare, e.g. local[1],local[2]")
    parser.add_argument("--words", type=int, default=4_000_000)
    parser.add_argument("--mlap-words", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--passes", default="bare,identity,tgumbel,tgumbel-parquet,job",
                        help=f"comma-separated, of {', '.join(PASSES)}")
    parser.add_argument("--kinds", default="string,tokens")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--tasks", type=int, default=4,
                        help="input splits of each file, the same under every master (a Python worker runs a "
                             "full gc.collect() after every task, ~50 ms: tiny splits would measure that)")
    args = parser.parse_args()
    names = args.passes.split(",")
    kinds = args.kinds.split(",")
    masters = args.masters.split(",") if args.masters else [args.master]

    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="dp_spark_bench_"))
    table = corpus(args.words, args.data)
    words = {"input": word_count(table)}
    paths = {"input": work / "input.parquet", "mlap": work / "mlap.parquet", "job": work / "job.parquet"}
    # No dictionary encoding: the repeated sentences would otherwise be read
    # back from a dictionary, which real text does not allow.
    mlap_rows = int(np.searchsorted(np.cumsum(table.column("tokens").combine_chunks().value_lengths()),
                                    args.mlap_words)) + 1
    for path, rows in ((paths["input"], table.num_rows), (paths["mlap"], mlap_rows), (paths["job"], table.num_rows)):
        # Row groups are the unit input splits are made of: several per task.
        written = table.select(["id", "text"]) if path == paths["job"] else table
        pq.write_table(written.slice(0, rows), path, row_group_size=max(1, rows // (4 * args.tasks)),
                       use_dictionary=False, compression="snappy")
    words["mlap"] = word_count(table.slice(0, mlap_rows))

    passes = [(name, kind) for name in names for kind in kinds
              if not (name in ("mlap", "tgumbel-parquet", "job") and kind != "string")]
    seconds: dict[tuple[str, str, str], list[float]] = {}
    cpu: dict[tuple[str, str, str], list[dict[str, float]]] = {}
    ratios: dict[tuple[str, str, str], list[float]] = {}
    single = len(masters) == 1
    # One session for the whole run, its first round a warm-up; or, comparing
    # masters, a fresh session per master per round, each warmed up by one pass of each kind.
    spark = session(masters[0]) if single else None
    for round_number in range(args.rounds + single):
        for master in masters:
            if not single:
                spark = session(master)
                for kind in kinds:
                    make_pass(spark, "identity", kind, paths, work / "out", args.tasks)()
            runtime = Runtime(artifact_for(EmbeddingsConfig(), IndexConfig(), []))
            order = passes[round_number % len(passes):] + passes[: round_number % len(passes)]
            this_round = {}
            for name, kind in order:
                elapsed, used = timed(make_pass(spark, name, kind, paths, work / "out", args.tasks, runtime))
                shutil.rmtree(work / "out", ignore_errors=True)
                this_round[(master, name, kind)] = elapsed
                seconds.setdefault((master, name, kind), []).append(elapsed)
                cpu.setdefault((master, name, kind), []).append(used)
            for (m, name, kind), elapsed in this_round.items():
                if this_round.get((m, "bare", kind)) and name != "mlap":
                    ratios.setdefault((m, name, kind), []).append(this_round[(m, "bare", kind)] / elapsed)
            if not single:
                spark.stop()
        if single and round_number == 0:  # the warm-up round
            for measured in (seconds, cpu, ratios):
                measured.clear()
    if single:
        spark.stop()

    rounds = len(next(iter(seconds.values())))
    print(f"Date: {date.today()}; {', '.join(masters)} on {os.cpu_count()} cores ({platform.machine()}); "
          f"load average before: {load_before:.2f}, after: {os.getloadavg()[0]:.2f}. Input: "
          f"{table.num_rows:,} sentences, {words['input']:,} words (mlap: {words['mlap']:,}); "
          f"median of {rounds} paired rounds.\n")
    print("| master | pass | column | tokens/s | vs bare (same column, same round) "
          "| CPU s per M tokens: JVM | Python |")
    print("|---|---|---|---|---|---|---|")
    for key, times in seconds.items():
        master, name, kind = key
        tokens = words["mlap" if name == "mlap" else "input"]
        rate = tokens / statistics.median(times)
        ratio = f"{statistics.median(ratios[key]):.2f}" if key in ratios else "-"
        jvm = statistics.median(c["jvm"] for c in cpu[key]) / tokens * 1e6
        python = statistics.median(c["python"] for c in cpu[key]) / tokens * 1e6
        print(f"| {master} | {name} | {kind} | {rate:,.0f} | {ratio} | {jvm:.2f} | {python:.2f} |")
    if len(masters) > 1:
        # Cores busy: CPU seconds of the JVM and the Python workers over the wall seconds. A
        # master that keeps every core of the machine busy cannot scale further on it.
        print("\n| pass | column | " + " / ".join(masters[::-1]) + " (paired) | "
              + " | ".join(f"cores busy, {m}" for m in masters) + " |")
        print("|---|---|---|" + "---|" * len(masters))
        for name, kind in passes:
            first, last = (seconds[(m, name, kind)] for m in (masters[0], masters[-1]))
            busy = [statistics.median((c["jvm"] + c["python"]) / t for c, t in zip(cpu[(m, name, kind)],
                                                                                 seconds[(m, name, kind)]))
                    for m in masters]
            print(f"| {name} | {kind} | {statistics.median(a / b for a, b in zip(first, last)):.2f} | "
                  + " | ".join(f"{b:.2f}" for b in busy) + " |")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
