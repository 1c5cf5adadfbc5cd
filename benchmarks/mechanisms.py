"""Throughput of the mechanism kernels (no Spark), on one core.

Usage: python benchmarks/mechanisms.py [--tokens 1000000] [--mlap-tokens 50000]
       [--mlap-only]

A Zipf-distributed stream of token ids over the default 100k GloVe vocabulary
is perturbed in batches; each figure is the median of --repeats runs. For
mlap the same run also times the FAISS search alone on the same noisy vectors
(the ceiling the mechanism can reach), and the recall@1 of hnsw and ivf
against exact search. A straightforward per-word Python implementation of
each mechanism is timed on a sample of the stream as the baseline.

mlap decode: on the same noisy vectors, exact FAISS flat search against the
mechanism's decode with index_type flat (certified candidates, exact search
for the rest) and ivf (certified candidates, BatchedIvfSearch at the nprobe
chosen for recall 0.99), the three timed in turn within each repeat (wall
and CPU time; the machine may be shared), with recall@1 against exact and
the share of tokens the certificate settles.
Prints Markdown for BENCHMARKS.md.
"""

from __future__ import annotations

import os

# One core: pin BLAS and OpenMP before numpy and faiss load.
for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(variable, "1")

import argparse  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from datetime import date  # noqa: E402

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from dp_spark.embeddings import Embeddings  # noqa: E402
from dp_spark.index import build_index, configure_faiss, neighbour_table  # noqa: E402
from dp_spark.mechanisms import build_mechanism  # noqa: E402
from dp_spark.mechanisms.tgumbel import minimum_epsilon  # noqa: E402


def zipf_stream(size: int, vocab_size: int, exponent: float, seed: int) -> np.ndarray:
    """Token ids with P[rank r] proportional to 1 / (r + 1)^exponent (ids are
    GloVe frequency ranks, so id = rank)."""
    weights = 1.0 / np.arange(1, vocab_size + 1) ** exponent
    cdf = np.cumsum(weights) / weights.sum()
    return np.searchsorted(cdf, np.random.default_rng(seed).random(size)).astype(np.int64)


def median_seconds(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def in_batches(function, ids: np.ndarray, batch: int):
    def run():
        rng = np.random.default_rng(0)
        for start in range(0, len(ids), batch):
            function(ids[start : start + batch], rng)

    return run


def noisy_argmin_one_by_one(mechanism, word, candidates, distances, rng) -> int:
    """argmin of distance + truncated Gumbel noise, a candidate and a
    rejection-sampled noise at a time, as the peer libraries write it."""
    best, best_score = word, math.inf
    for candidate in candidates:
        while True:
            g = rng.gumbel(0.0, mechanism.scale)
            if abs(g) <= mechanism.diameter:
                break
        if distances[candidate] + g < best_score:
            best, best_score = candidate, distances[candidate] + g
    return int(best)


def per_word_tgumbel(mechanism, ids: np.ndarray, rng: np.random.Generator) -> list[int]:
    """The formula one word at a time: a Poisson k, a full distance row, the k nearest."""
    vectors = mechanism.embeddings.vectors
    out = []
    for word in ids:
        k = rng.poisson(mechanism.poisson_rate)
        while k > len(vectors) - 1:
            k = rng.poisson(mechanism.poisson_rate)
        distances = np.linalg.norm(vectors - vectors[word], axis=1)
        out.append(noisy_argmin_one_by_one(mechanism, word, np.argsort(distances)[: k + 1], distances, rng))
    return out


def per_word_search(k: int):
    """Noise per word, one FAISS search per word (the elliptical shape if any);
    with k = 2, a coin between the first and second nearest (vickrey's cost)."""

    def run(mechanism, ids, rng):
        vectors = mechanism.embeddings.vectors
        dim = vectors.shape[1]
        out = []
        for word in ids:
            direction = rng.normal(size=dim)
            direction /= np.linalg.norm(direction)
            if mechanism.noise_shape is not None:
                direction = mechanism.noise_shape @ direction
            radius = rng.gamma(dim, 1.0 / mechanism.epsilon)
            _, found = mechanism.index.search((vectors[word] + radius * direction).astype(np.float32)[None, :], k)
            out.append(int(found[0, 0] if k == 1 or rng.random() < 0.5 else found[0, 1]))
        return out

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--mlap-tokens", type=int, default=50_000)
    parser.add_argument("--baseline-tokens", type=int, default=2_000)
    parser.add_argument("--batch", type=int, default=200_000, help="tokens per batch (tgumbel)")
    parser.add_argument("--mlap-batch", type=int, default=10_000)
    parser.add_argument("--zipf", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mlap-only", action="store_true", help="only the mlap decode table")
    args = parser.parse_args()

    configure_faiss(threads=1)
    embeddings = Embeddings.default()
    table = neighbour_table(embeddings)
    stream = zipf_stream(args.tokens, embeddings.size, args.zipf, seed=1)
    rows = []

    decode_rows = mlap_decode_rows(embeddings, table, stream[: args.mlap_tokens], args.mlap_batch, args.repeats)
    if args.mlap_only:
        print_header(args, embeddings, stream)
        print_decode_rows(decode_rows)
        return

    floor = minimum_epsilon(embeddings.size, table.min_distance)
    for epsilon in (5.0, 10.0, 20.0):
        rows.append(("tgumbel", epsilon, "refused: eps <= eps_min = %.1f" % floor, "", "", ""))
    for epsilon in (100.0, 200.0, 400.0):
        m = build_mechanism("tgumbel", embeddings, epsilon=epsilon, neighbours=table)
        seconds = median_seconds(in_batches(m.perturb, stream, args.batch), args.repeats)
        sample = stream[: args.baseline_tokens]
        base = median_seconds(lambda: per_word_tgumbel(m, sample, np.random.default_rng(0)), 1)
        tokens_per_s = len(stream) / seconds
        base_per_s = len(sample) / base
        rows.append(("tgumbel", epsilon, f"{tokens_per_s:,.0f}", "", f"{base_per_s:,.0f}",
                     f"{tokens_per_s / base_per_s:,.0f}x"))

    mlap_stream = stream[: args.mlap_tokens]
    exact = build_index(embeddings.vectors, "flat")
    approximate = {kind: build_index(embeddings.vectors, kind) for kind in ("hnsw", "ivf")}
    recall_rows = []
    for epsilon in (5.0, 10.0, 20.0):
        m = build_mechanism("mlap", embeddings, epsilon=epsilon, index=exact)
        noisy = m.noisy_vectors(mlap_stream, np.random.default_rng(0))

        def search_only(index=exact):
            for start in range(0, len(noisy), args.mlap_batch):
                index.search(noisy[start : start + args.mlap_batch], 1)

        mechanism_s = median_seconds(in_batches(m.perturb, mlap_stream, args.mlap_batch), args.repeats)
        search_s = median_seconds(search_only, args.repeats)
        sample = mlap_stream[: args.baseline_tokens // 4]
        base = median_seconds(lambda: per_word_search(1)(m, sample, np.random.default_rng(0)), 1)
        mechanism_per_s = len(mlap_stream) / mechanism_s
        search_per_s = len(mlap_stream) / search_s
        base_per_s = len(sample) / base
        rows.append(
            (
                "mlap flat",
                epsilon,
                f"{mechanism_per_s:,.0f}",
                f"{search_per_s:,.0f} ({mechanism_per_s / search_per_s:.0%})",
                f"{base_per_s:,.0f}",
                f"{mechanism_per_s / base_per_s:,.0f}x",
            )
        )
        truth = exact.search(noisy, 1)[1][:, 0]
        for kind, index in approximate.items():
            found = index.search(noisy, 1)[1][:, 0]
            kind_s = median_seconds(lambda index=index: search_only(index), args.repeats)
            recall_rows.append((kind, epsilon, float((found == truth).mean()), len(mlap_stream) / kind_s))

    print_header(args, embeddings, stream)
    print("| mechanism | eps | tokens/s | FAISS search alone, q/s (mechanism / search) "
          "| per-word baseline, tokens/s | speed-up |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(str(x) for x in row) + " |")
    print("\n| index | eps | recall@1 vs exact | search q/s |")
    print("|---|---|---|---|")
    for kind, epsilon, recall, qps in recall_rows:
        print(f"| {kind} | {epsilon:g} | {recall:.4f} | {qps:,.0f} |")
    print()
    print_decode_rows(decode_rows)


def print_header(args, embeddings, stream) -> None:
    print(f"Date: {date.today()}; machine: {platform.machine()}, {os.cpu_count()} cores, "
          f"{platform.processor() or 'cpu'}; faiss {faiss.__version__}, numpy {np.__version__}; 1 thread.")
    print(f"Stream: Zipf(s={args.zipf}) over {embeddings.size:,} GloVe words; tgumbel {len(stream):,} tokens "
          f"in batches of {args.batch:,}; mlap {args.mlap_tokens:,} tokens in batches of {args.mlap_batch:,}; "
          f"median of {args.repeats}. Baseline: per-word Python on {args.baseline_tokens:,} tokens "
          f"({args.baseline_tokens // 4:,} for mlap).\n")


def timed(run) -> tuple[float, float]:
    """(wall, CPU) seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def mlap_decode_rows(embeddings, table, words: np.ndarray, batch: int, repeats: int) -> list[dict]:
    """Exact flat search vs the mlap decode (flat, ivf) on the same noisy vectors."""
    exact = build_index(embeddings.vectors, "flat")
    ivf_index = build_index(embeddings.vectors, "ivf")
    rows = []
    for epsilon in (5.0, 10.0, 20.0, 40.0):
        flat = build_mechanism("mlap", embeddings, epsilon=epsilon, index=exact, neighbours=table)
        ivf = build_mechanism("mlap", embeddings, epsilon=epsilon, index_type="ivf", index=ivf_index,
                              neighbours=table)
        calibration_s = timed(lambda: ivf.ivf_nprobe)[0]
        noisy = flat.noisy_vectors(words, np.random.default_rng(0))

        def batched(decode):
            def run():
                for start in range(0, len(noisy), batch):
                    decode(noisy[start : start + batch], words[start : start + batch])
            return run

        runs = {
            "exact": batched(lambda vectors, _: exact.search(vectors, 1)),
            "flat": batched(flat.nearest),
            "ivf": batched(ivf.nearest),
        }
        times = {name: [] for name in runs}
        for _ in range(repeats):
            for name, run in runs.items():
                times[name].append(timed(run))
        truth = exact.search(noisy, 1)[1][:, 0]
        row = {"eps": epsilon, "nprobe": ivf.ivf_nprobe, "nlist": ivf._ivf.nlist, "calibration_s": calibration_s,
               "certified": float(flat.certified(noisy, words).mean())}
        for name in runs:
            row[name + "_wall"] = statistics.median(t[0] for t in times[name])
            row[name + "_cpu"] = statistics.median(t[1] for t in times[name])
        row["flat_recall"] = float(np.mean(flat.nearest(noisy, words)[1][:, 0] == truth))
        row["ivf_recall"] = float(np.mean(ivf.nearest(noisy, words)[1][:, 0] == truth))
        row["tokens"] = len(words)
        rows.append(row)
    return rows


def print_decode_rows(rows: list[dict]) -> None:
    print("| eps | certified | decode | recall@1 vs exact | q/s (wall) | vs exact flat, wall | vs exact flat, CPU |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        n = row["tokens"]
        exact_rate = n / row["exact_wall"]
        print(f"| {row['eps']:g} | {row['certified']:.1%} | exact FAISS flat | 1 | {exact_rate:,.0f} | 1.00x | 1.00x |")
        for name, label in (("flat", "flat: certified + exact search"),
                            ("ivf", f"ivf: certified + batched IVF, nprobe {row['nprobe']}/{row['nlist']}")):
            print(f"| {row['eps']:g} | | {label} | {row[name + '_recall']:.4f} | {n / row[name + '_wall']:,.0f} "
                  f"| {row['exact_wall'] / row[name + '_wall']:.2f}x | {row['exact_cpu'] / row[name + '_cpu']:.2f}x |")
    print("\nnprobe chosen (calibration, s): " + ", ".join(
        f"eps {row['eps']:g}: {row['nprobe']} ({row['calibration_s']:.1f} s)" for row in rows))


if __name__ == "__main__":
    main()
