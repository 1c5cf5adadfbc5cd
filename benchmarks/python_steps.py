"""Cost per token of each step of the Python side, outside Spark, on one core.

Usage: python benchmarks/python_steps.py [--words 1000000] [--batch-rows 10000] [--repeats 5]

The sentences of ``../shared/data`` (``text_corpus``) in Arrow batches of
--batch-rows rows, as Spark hands them to a task, go through
``ColumnPerturbation.apply`` with the job's statistics builder and keyed
randomness (the id column). Each step is timed by wrapping the function
that does it (nothing is reimplemented here, so the figures follow the
code): tokenize (``segment``; for token lists the entity and punctuation
checks), lookup (``Vocabulary.ids``), keys (the token keys of the keyed
random source), draws (its uniforms), mechanism (``perturb``, less the
draws), replacements (substitutes and their case: ``_word_targets``),
assemble (the output column: ``_Pool``), statistics (``add_batch``, and
``build`` at the end as a Spark task does); "other" is what ``apply``
spends outside them. A step called within another is charged to itself. ns per word token, median
of --repeats passes over the data. Times are this process's CPU time
(numpy and BLAS on one thread), so that other processes on a shared
machine inflate them only through the caches they share, not by taking the
core. Prints Markdown for BENCHMARKS.md.
"""

from __future__ import annotations

import os

for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(variable, "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from datetime import date  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from text_corpus import DEFAULT_DATA, corpus, word_count  # noqa: E402

import dp_spark.columns as columns  # noqa: E402
import dp_spark.randomness as randomness  # noqa: E402
from dp_spark.config import EmbeddingsConfig, IndexConfig  # noqa: E402
from dp_spark.mechanisms.base import Mechanism  # noqa: E402
from dp_spark.randomness import KeyedRandom, mix64, token_keys  # noqa: E402
from dp_spark.resources import Runtime, artifact_for  # noqa: E402
from dp_spark.stats import StatisticsBuilder  # noqa: E402
from dp_spark.tokenize import Vocabulary  # noqa: E402

STEPS = ("tokenize", "lookup", "keys", "draws", "mechanism", "replacements", "assemble", "statistics", "other")


class Identity(Mechanism):
    name = "identity"

    def _perturb_in_vocabulary(self, ids, rng):
        return ids


class StepClock:
    """Seconds spent per step, by wrapping the functions that do them; a
    step called within another is charged to itself only (the draws within
    the mechanism, the take within the assembly)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._stack: list[str] = []
        self._since = 0.0

    def wrap(self, step: str, function):
        def timed(*args, **kwargs):
            now = time.process_time()
            if self._stack:
                self.seconds[self._stack[-1]] += now - self._since
            self._stack.append(step)
            self._since = now
            try:
                return function(*args, **kwargs)
            finally:
                now = time.process_time()
                self.seconds[self._stack.pop()] += now - self._since
                self._since = now

        return timed


def instrument(clock: StepClock) -> None:
    columns.segment = clock.wrap("tokenize", columns.segment)
    columns.entity_types = clock.wrap("tokenize", columns.entity_types)
    columns.has_word_character = clock.wrap("tokenize", columns.has_word_character)
    Vocabulary.ids = clock.wrap("lookup", Vocabulary.ids)
    columns.ColumnPerturbation._word_targets = clock.wrap("replacements", columns.ColumnPerturbation._word_targets)
    columns._Pool.rewrite = clock.wrap("assemble", columns._Pool.rewrite)
    columns._Pool.take = clock.wrap("assemble", columns._Pool.take)
    StatisticsBuilder.add_batch = clock.wrap("statistics", StatisticsBuilder.add_batch)
    StatisticsBuilder.build = clock.wrap("statistics", StatisticsBuilder.build)
    KeyedRandom.uniform = clock.wrap("draws", KeyedRandom.uniform)
    KeyedRandom.uniform_columns = clock.wrap("draws", KeyedRandom.uniform_columns)
    for accessor in vars(randomness).values():
        if isinstance(accessor, type) and issubclass(accessor, randomness.UniformColumns) \
                and "column" in vars(accessor):
            accessor.column = clock.wrap("draws", accessor.column)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--words", type=int, default=1_000_000)
    parser.add_argument("--batch-rows", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--mechanisms", default="identity,tgumbel")
    args = parser.parse_args()

    table = corpus(args.words, args.data)
    words = word_count(table)
    batches = table.to_batches(max_chunksize=args.batch_rows)
    runtime = Runtime(artifact_for(EmbeddingsConfig(), IndexConfig(), [("tgumbel", {})]))
    built = {"identity": Identity(runtime.embeddings, 1.0), "tgumbel": runtime.mechanism("tgumbel", 100.0, {}),
             "mlap": runtime.mechanism("mlap", 10.0, {"index_type": "flat"})}
    clock = StepClock()
    instrument(clock)

    results = {}
    for name in args.mechanisms.split(","):
        mechanism = built[name]
        mechanism.perturb = clock.wrap("mechanism", mechanism.perturb)
        for kind, column in (("string", "text"), ("tokens", "tokens")):
            perturbation = columns.ColumnPerturbation(mechanism, runtime.vocabulary, kind, "replace")
            passes = []
            for repeat in range(args.repeats + 1):
                clock.seconds.clear()
                builder = StatisticsBuilder(len(runtime.vocabulary))
                start = time.process_time()
                for batch in batches:
                    row_keys = mix64(np.asarray(batch.column("id")).astype(np.uint64))
                    random_for = clock.wrap(
                        "keys", lambda per_row, row_keys=row_keys: KeyedRandom(token_keys(row_keys, per_row)))
                    perturbation.apply(batch.column(column), random_for, builder)
                builder.build()  # counts what was kept aside, as each Spark task does at its end
                total = time.process_time() - start
                steps = dict(clock.seconds)
                steps["other"] = total - sum(steps.values())
                if repeat:  # the first pass warms caches up
                    passes.append((total, steps))
            total = statistics.median(p[0] for p in passes)
            results[(name, kind)] = (total, {s: statistics.median(p[1].get(s, 0.0) for p in passes) for s in STEPS})

    print(f"Date: {date.today()}; {platform.machine()}, {os.cpu_count()} cores, one thread, CPU time; load average "
          f"{os.getloadavg()[0]:.2f}; {table.num_rows:,} "
          f"sentences, {words:,} words, batches of {args.batch_rows:,} rows; median of {args.repeats}.\n")
    print("| mechanism | column | total ns/token | tokens/s | " + " | ".join(STEPS) + " |")
    print("|---|---|---|---|" + "---|" * len(STEPS))
    for (name, kind), (total, steps) in results.items():
        cells = " | ".join(f"{steps[s] / words * 1e9:.0f}" for s in STEPS)
        print(f"| {name} | {kind} | {total / words * 1e9:.0f} | {words / total:,.0f} | {cells} |")


if __name__ == "__main__":
    main()
