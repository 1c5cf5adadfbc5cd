"""What ``[embeddings] min_word_distance`` drops from a large vocabulary, and
what it does to tgumbel's minimum epsilon.

Usage: python benchmarks/vocabulary_filter.py [--vocab-size 400000] [--thresholds 0.05,0.1,0.2,0.3]

Loads GloVe 6B 50d (words only), then for each threshold filters it and
finds the closest remaining pair by an IVF search (16 probed lists: an
approximation from above of the true minimum distance). One thread.
"""

from __future__ import annotations

import argparse
import math
import time

import faiss
import numpy as np

from dp_spark.embeddings import Embeddings, only_words, without_near_duplicates
from dp_spark.mechanisms.tgumbel import minimum_epsilon


def closest_pair(embeddings: Embeddings) -> tuple[float, str, str]:
    lists = int(math.sqrt(embeddings.size))
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(embeddings.dim), embeddings.dim, lists)
    vectors = np.ascontiguousarray(embeddings.vectors)
    index.train(vectors)
    index.add(vectors)
    index.nprobe = 16
    squared, found = index.search(vectors, 2)
    distances = np.sqrt(np.maximum(squared[:, 1], 0))
    word = int(np.argmin(distances))
    return float(distances[word]), embeddings.words[word], embeddings.words[found[word, 1]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-size", type=int, default=400_000)
    parser.add_argument("--thresholds", default="0.05,0.1,0.2,0.3")
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    embeddings = only_words(Embeddings.default(args.vocab_size))
    distance, first, second = closest_pair(embeddings)
    print(f"{embeddings.size} words; closest pair {first} / {second}, {distance:.4f} apart; "
          f"tgumbel eps_min {minimum_epsilon(embeddings.size, distance):,.1f}")
    print("\n| min_word_distance | words dropped | filter s | closest pair left | tgumbel eps_min |")
    print("|---|---|---|---|---|")
    for threshold in (float(t) for t in args.thresholds.split(",")):
        started = time.perf_counter()
        filtered, dropped = without_near_duplicates(embeddings, threshold)
        seconds = time.perf_counter() - started
        distance, _, _ = closest_pair(filtered)
        print(f"| {threshold:g} | {dropped.count} | {seconds:.0f} | {distance:.4f} | "
              f"{minimum_epsilon(filtered.size, distance):,.1f} |")


if __name__ == "__main__":
    main()
