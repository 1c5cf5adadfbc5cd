"""Where the Python workers' time goes inside Spark, for the string path:
Spark's own UDF profiler (``spark.sql.pyspark.udf.profiler = perf``,
cProfile around each batch of the mapInArrow function, input decoding
included) over one pass of each dp-spark pass of ``spark_job.py``.

Usage: python benchmarks/worker_profile.py [--master local[2]] [--words 2000000]
                                           [--passes identity,tgumbel] [--kind string] [--top 12]

The same input and passes as ``spark_job.py`` (sentences of ../shared/data,
keyed by id, statistics on, noop sink); a warm-up pass of each runs
unprofiled first. Prints, per pass, the profiled seconds per million tokens
grouped by where the code lives (dp_spark's modules; numpy, pandas, pyarrow
and faiss called from them are charged to the caller's group through
cumulative time of dp_spark's entry points), then the functions with the
most own time. Markdown, for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import pstats
import sys
import tempfile
from datetime import date
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))

import spark_job  # noqa: E402
from pyspark import cloudpickle  # noqa: E402
from spark_job import make_pass, session  # noqa: E402
from text_corpus import DEFAULT_DATA, corpus, word_count  # noqa: E402

from dp_spark.config import EmbeddingsConfig, IndexConfig  # noqa: E402
from dp_spark.resources import Runtime, artifact_for  # noqa: E402

# dp_spark entry points whose cumulative time is one step each (a step called within another is
# charged to both: read the table as "time under", not as a partition).
STEPS = {
    "segment (tokenize)": ("tokenize.py", "segment"),
    "Vocabulary.ids (lookup)": ("tokenize.py", "ids"),
    "mechanism.perturb": ("base.py", "perturb"),
    "token_keys (keyed randomness)": ("randomness.py", "token_keys"),
    "replacements (_word_targets)": ("columns.py", "_word_targets"),
    "StatisticsBuilder.add_batch": ("stats.py", "add_batch"),
    "ColumnPerturbation.apply (all of dp-spark's column work)": ("columns.py", "apply"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--words", type=int, default=2_000_000)
    parser.add_argument("--passes", default="identity,tgumbel")
    parser.add_argument("--kind", default="string", choices=("string", "tokens"))
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    cloudpickle.register_pickle_by_value(spark_job)  # its identity mechanism travels to the workers

    work = Path(tempfile.mkdtemp(prefix="dp_spark_profile_"))
    table = corpus(args.words, args.data)
    tokens = word_count(table)
    paths = {"input": work / "input.parquet"}
    pq.write_table(table, paths["input"], row_group_size=max(1, table.num_rows // 16), use_dictionary=False)
    spark = session(args.master)
    runtime = Runtime(artifact_for(EmbeddingsConfig(), IndexConfig(), []))
    print(f"Date: {date.today()}; {args.master} on {os.cpu_count()} cores; load average "
          f"{os.getloadavg()[0]:.2f}; {tokens:,} words of {table.num_rows:,} sentences, {args.kind} column.\n")
    for name in args.passes.split(","):
        make_pass(spark, name, args.kind, paths, work / "out", 4, runtime)()  # warm-up, unprofiled
        spark.conf.set("spark.sql.pyspark.udf.profiler", "perf")
        make_pass(spark, name, args.kind, paths, work / "out", 4, runtime)()
        spark.conf.unset("spark.sql.pyspark.udf.profiler")
        dump = work / f"profile_{name}"
        spark.profile.dump(str(dump))
        spark.profile.clear()
        files = sorted(str(p) for p in dump.rglob("*.pstats"))
        stats = pstats.Stats(*files)
        per_million = 1e6 / tokens
        everything = max(entry[3] for entry in stats.stats.values())  # the profiled function's cumulative
        print(f"### {name}: {everything * per_million:.2f} s per million tokens under the profiler "
              f"(cProfile's own overhead included)\n")
        print("| step | cumulative s per M tokens | share |")
        print("|---|---|---|")
        for label, (file, function) in STEPS.items():
            cumulative = sum(entry[3] for (path, _, func), entry in stats.stats.items()
                             if path.endswith(file) and func == function)
            if cumulative:
                print(f"| {label} | {cumulative * per_million:.3f} | {cumulative / everything:.0%} |")
        print(f"\nTop {args.top} functions by own time:\n")
        print("| function | own s per M tokens | share |")
        print("|---|---|---|")
        ranked = sorted(stats.stats.items(), key=lambda item: -item[1][2])[: args.top]
        for (path, line, function), entry in ranked:
            where = f"{Path(path).name}:{line}" if line else path
            print(f"| `{function}` ({where}) | {entry[2] * per_million:.3f} | {entry[2] / everything:.0%} |")
        print()
    spark.stop()


if __name__ == "__main__":
    main()
