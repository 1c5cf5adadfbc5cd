"""Neighbour table build against a bare FAISS kNN search, same vectors, same threads.

Usage: python benchmarks/table_build.py [--words 30000] [--k 64] [--threads 1] [--repeats 3]

The first --words words of the default GloVe vocabulary (0: all of it).
Timed in turn within each repeat (median reported, wall and CPU time; the
machine may be shared): ``index.build_neighbour_table(embeddings, k)`` (what a
fresh cache costs: flat index, search, self removed, exact re-rank,
vocabulary diameter) and a bare ``faiss.IndexFlatL2`` ``search(vectors, k + 1)``
over the same vectors with the same FAISS threads. Its parts are timed
alone too (the re-rank ``exact_order`` and ``vocabulary_diameter``).
Prints Markdown for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import sys

_threads = "1"
if "--threads" in sys.argv:
    _threads = sys.argv[sys.argv.index("--threads") + 1]
for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(variable, _threads)

import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from datetime import date  # noqa: E402

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from dp_spark.embeddings import Embeddings  # noqa: E402
from dp_spark.index import (  # noqa: E402
    build_neighbour_table,
    configure_faiss,
    exact_order,
    vocabulary_diameter,
    without_self,
)


def timed(run) -> tuple[float, float]:
    """(wall, CPU) seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--words", type=int, default=30_000, help="first N words of the default vocabulary (0: all)")
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    configure_faiss(threads=args.threads)
    full = Embeddings.default()
    size = args.words or full.size
    embeddings = Embeddings.from_arrays(full.words[:size].tolist(), np.array(full.vectors[:size]))
    vectors = embeddings.vectors
    index = faiss.IndexFlatL2(vectors.shape[1])
    index.add(vectors)
    rows = np.arange(size)
    found = index.search(vectors, args.k + 1)[1]
    others = without_self(found, rows, args.k)

    runs = {
        "build_neighbour_table": lambda: build_neighbour_table(embeddings, args.k),
        "bare FAISS search(k + 1)": lambda: index.search(vectors, args.k + 1),
        "exact_order (re-rank) alone": lambda: exact_order(vectors, rows, others),
        "vocabulary_diameter alone": lambda: vocabulary_diameter(vectors),
    }
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            times[name].append(timed(run))
    wall = {name: statistics.median(t[0] for t in ts) for name, ts in times.items()}
    cpu = {name: statistics.median(t[1] for t in ts) for name, ts in times.items()}
    bare = "bare FAISS search(k + 1)"

    print(f"Date: {date.today()}; machine: {platform.machine()}, {os.cpu_count()} cores; faiss {faiss.__version__}, "
          f"numpy {np.__version__}; FAISS/BLAS threads {args.threads}.")
    print(f"{size:,} words of {full.size:,} (GloVe 6B 50d), k = {args.k}, median of {args.repeats}, "
          "each step timed in turn within a repeat.\n")
    print("| step | wall s | CPU s | wall vs bare search | CPU vs bare search |")
    print("|---|---|---|---|---|")
    for name in runs:
        print(f"| {name} | {wall[name]:.2f} | {cpu[name]:.2f} | {wall[name] / wall[bare]:.2f}x "
              f"| {cpu[name] / cpu[bare]:.2f}x |")


if __name__ == "__main__":
    main()
