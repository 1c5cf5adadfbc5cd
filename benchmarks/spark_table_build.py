"""The neighbour table of the default vocabulary built on the driver and by
Spark tasks, paired in one process and one local[2] session (its start
excluded): seconds, and whether the tables are equal.

    nice .venv/bin/python benchmarks/spark_table_build.py [--vocab-size 100000] [--k 64]

Order: driver, Spark with the driver's FAISS threads per task (the default,
identical table), Spark with 1 thread per task, driver again.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab-size", type=int, default=100_000)
    parser.add_argument("--k", type=int, default=64)
    args = parser.parse_args()
    from dp_spark.config import EmbeddingsConfig
    from dp_spark.embeddings import load_embeddings
    from dp_spark.index import build_neighbour_table
    from dp_spark.spark.build import neighbour_table_on_spark, table_plan
    from dp_spark.spark.session import start_session

    embeddings = load_embeddings(EmbeddingsConfig(vocab_size=args.vocab_size))
    spark, _ = start_session("dp-spark table build benchmark", "local[2]")
    spark.sparkContext.setLogLevel("ERROR")
    spark.range(4).count()
    reference = None
    for name, threads in (("driver", None), ("spark, driver's threads", None), ("spark, 1 thread", 1),
                          ("driver", None)):
        load = os.getloadavg()[0]
        started = time.perf_counter()
        if name == "driver":
            table = build_neighbour_table(embeddings, args.k)
        else:
            plan = table_plan(embeddings.size, "flat", threads=threads)
            table = neighbour_table_on_spark(spark, embeddings, args.k, plan)
        seconds = time.perf_counter() - started
        reference = reference or table
        differing = int((table.ids != reference.ids).any(axis=1).sum())
        print(f"{name:24s} {seconds:7.1f} s  load {load:5.1f}  rows differing from the first driver table: "
              f"{differing}, distances equal: {np.array_equal(table.distances, reference.distances)}", flush=True)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
