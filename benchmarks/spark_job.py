"""End-to-end throughput of the Spark perturbation in local[2].

Usage: python benchmarks/spark_job.py [--rows 200000] [--tokens-per-row 20] [--mlap-rows 200000]

Generates a Parquet table of rows x tokens (array<string>, Zipf-distributed
words of the default vocabulary), then times read -> DPTextPerturber -> sink
for an identity pass (same read, same plumbing and token lookups, a mechanism
that returns its input), tgumbel and mlap; for each of the three plumbings
(mapInArrow, arrow_udf, pandas_udf) and two sinks (noop: the pipeline alone;
parquet: written out). Each figure is the median of --repeats runs, passes
interleaved so that the machine's drift hits all of them alike. Prints Markdown.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dp_spark.config import EmbeddingsConfig, IndexConfig
from dp_spark.embeddings import Embeddings
from dp_spark.mechanisms.base import Mechanism
from dp_spark.spark.perturber import DPTextPerturber, shared_resources
from dp_spark.spark.resources import load_embeddings
from dp_spark.spark.session import get_session


class Identity(Mechanism):
    """Returns its input: measures everything but the mechanism."""

    name = "identity"

    def _perturb_in_vocabulary(self, ids, rng):
        return ids


def identity_mechanism(embeddings: Embeddings) -> Mechanism:
    return Identity(embeddings, 1.0)


def write_table(path: Path, words: np.ndarray, rows: int, per_row: int, seed: int = 1) -> None:
    weights = 1.0 / np.arange(1, len(words) + 1)
    cdf = np.cumsum(weights) / weights.sum()
    ids = np.searchsorted(cdf, np.random.default_rng(seed).random(rows * per_row))
    tokens = pa.array(words[ids].tolist(), pa.string())
    offsets = pa.array(np.arange(0, rows * per_row + 1, per_row, dtype=np.int32))
    table = pa.table({"id": np.arange(rows, dtype=np.int64), "tokens": pa.ListArray.from_arrays(offsets, tokens)})
    pq.write_table(table, path, row_group_size=50_000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--tokens-per-row", type=int, default=20)
    parser.add_argument("--mlap-rows", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="dp_spark_bench_"))
    spark = get_session("dp-spark benchmark", "local[2]")
    spark.sparkContext.setLogLevel("ERROR")
    embeddings_config = EmbeddingsConfig()
    words = load_embeddings(embeddings_config).words
    write_table(work / "input.parquet", words, args.rows, args.tokens_per_row)
    write_table(work / "mlap.parquet", words, args.mlap_rows, args.tokens_per_row, seed=2)
    mechanisms = [("tgumbel", {}), ("mlap", {"index_type": "flat"})]
    shared = shared_resources(spark, embeddings_config, IndexConfig(), mechanisms)

    plumbings = ("map", "arrow", "pandas")
    passes = [(label, udf, sink) for label in ("identity", "tgumbel") for udf in plumbings
              for sink in ("noop", "parquet")]
    passes.append(("mlap", "map", "noop"))
    settings = {"identity": (1.0, "input"), "tgumbel": (100.0, "input"), "mlap": (12.0, "mlap")}
    seconds: dict[tuple[str, str, str], list[float]] = {key: [] for key in passes}
    for repeat in range(args.repeats + 1):  # the first round warms workers up and is dropped
        for label, udf, sink in passes:
            if label == "mlap" and repeat != 1:
                continue  # minutes per pass: one timed run
            epsilon, table = settings[label]
            perturber = DPTextPerturber(
                inputCol="tokens", outputCol="tokens", mechanism=label, epsilon=epsilon, udfKind=udf
            ).setResources(shared)
            if label == "identity":
                perturber.setCustomMechanism(identity_mechanism)
            output = work / f"out-{label}-{udf}"
            start = time.perf_counter()
            writer = perturber.transform(spark.read.parquet(str(work / f"{table}.parquet"))).write.mode("overwrite")
            writer.parquet(str(output)) if sink == "parquet" else writer.format("noop").save()
            elapsed = time.perf_counter() - start
            shutil.rmtree(output, ignore_errors=True)
            if repeat > 0:
                seconds[(label, udf, sink)].append(elapsed)

    tokens = {"input": args.rows * args.tokens_per_row, "mlap": args.mlap_rows * args.tokens_per_row}
    rate = {key: tokens[settings[key[0]][1]] / statistics.median(times) for key, times in seconds.items()}
    print(f"Date: {date.today()}; local[2] on {os.cpu_count()} cores; input {args.rows:,} rows x "
          f"{args.tokens_per_row} tokens = {tokens['input']:,} tokens (mlap: {tokens['mlap']:,}); "
          f"median of {args.repeats} (mlap: 1) after a warm-up round.\n")
    print("| pass | plumbing | sink | tokens/s | vs identity (same plumbing and sink) |")
    print("|---|---|---|---|---|")
    for (label, udf, sink), value in rate.items():
        base = rate[("identity", udf, sink)]
        print(f"| {label} | {udf} | {sink} | {value:,.0f} | {value / base:.0%} |")
    spark.stop()
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
