"""Every mechanism against a straightforward per-word Python implementation
of its formula, in the same run, on one core.

Usage: python benchmarks/mechanism_suite.py [--tokens 200000] [--search-tokens 20000]
           [--baseline-tokens 200] [--only LABEL]

Vocabulary: the job's default (GloVe 6B 50d, first 100,000 entries, words
only). Tokens: a Zipf stream over it. The per-word baselines compute what
the peer libraries compute per word: a full distance row in numpy and a
weighted choice (exponential mechanisms), one FAISS search (noise-and-decode
mechanisms), a Python Metropolis-Hastings loop (kde mh). Prints Markdown.
"""

from __future__ import annotations

import os

for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(variable, "1")

import argparse  # noqa: E402
import math  # noqa: E402
from datetime import date  # noqa: E402

import numpy as np  # noqa: E402
from mechanisms import (  # noqa: E402
    in_batches,
    median_seconds,
    noisy_argmin_one_by_one,
    per_word_search,
    per_word_tgumbel,
    zipf_stream,
)

from dp_spark.config import EmbeddingsConfig, IndexConfig  # noqa: E402
from dp_spark.index import configure_faiss  # noqa: E402
from dp_spark.resources import Runtime, artifact_for  # noqa: E402


def distance_row(vectors: np.ndarray, word: int) -> np.ndarray:
    return np.linalg.norm(vectors - vectors[word], axis=1)


def per_word_exponential(log_weights):
    """The exponential mechanism one word at a time: a full row, then a choice."""

    def run(mechanism, ids, rng):
        vectors = mechanism.embeddings.vectors
        out = []
        for word in ids:
            scores = log_weights(mechanism, word, distance_row(vectors, word))
            p = np.exp(scores - scores.max())
            out.append(int(rng.choice(len(p), p=p / p.sum())))
        return out

    return run


def per_word_custext(mechanism, ids, rng):
    vectors = mechanism.embeddings.vectors
    out = []
    for word in ids:
        d = distance_row(vectors, word)
        members = np.argsort(d)[: mechanism.top_k]
        span = d[members].max() - d[members].min()
        u = -(d[members] - d[members].min()) / span if span > 0 else np.zeros(len(members))
        p = np.exp(mechanism.epsilon * u / 2)
        out.append(int(rng.choice(members, p=p / p.sum())))
    return out


def per_word_mh(mechanism, ids, rng):
    offsets, adjacent = mechanism.graph
    vectors = mechanism.embeddings.vectors
    out = []
    for word in ids:
        state, state_distance = word, 0.0
        for _ in range(mechanism.burn_in + mechanism.steps):
            neighbours = adjacent[offsets[state] : offsets[state + 1]]
            proposal = int(rng.choice(neighbours))
            distance = float(np.linalg.norm(vectors[proposal] - vectors[word]))
            degree_ratio = len(neighbours) / (offsets[proposal + 1] - offsets[proposal])
            ratio = math.exp(mechanism.log_prior[proposal] - mechanism.log_prior[state]
                             - mechanism.epsilon / 2 * (distance - state_distance)) * degree_ratio
            if rng.random() < ratio:
                state, state_distance = proposal, distance
        out.append(state)
    return out


def per_word_distance_tgumbel(mechanism, ids, rng):
    vectors = mechanism.embeddings.vectors
    out = []
    for word in ids:
        d = distance_row(vectors, word)
        out.append(noisy_argmin_one_by_one(mechanism, word, np.flatnonzero(d <= mechanism.max_distance), d, rng))
    return out


def per_word_diffractor(mechanism, ids, rng):
    """The peer package's loop: per word, a noisy position on every list (two
    geometric draws and a clamp, or TEM's Gumbel-max over the window and a
    bottom element), then a uniform choice among the lists' outputs."""
    orders, positions = mechanism.word_lists.orders, mechanism.word_lists.positions
    size, epsilon, gamma = mechanism.embeddings.size, mechanism.epsilon, mechanism.gamma
    out = []
    for word in ids:
        candidates = []
        for order, position in zip(orders, positions):
            j = int(position[word])
            if mechanism.method == "geometric":
                p = 1 - math.exp(-epsilon)
                noisy = min(max(j + int(rng.geometric(p)) - int(rng.geometric(p)), 0), size - 1)
            else:
                window = range(max(0, j - gamma), min(size, j + gamma + 1))
                scores = [-abs(i - j) + rng.gumbel(0, 2 / epsilon) for i in window]
                outside = size - len(window)
                bottom = -gamma + 2 / epsilon * math.log(outside) + rng.gumbel(0, 2 / epsilon) if outside else -math.inf
                best = max(range(len(scores)), key=scores.__getitem__)
                if scores[best] > bottom:
                    noisy = window[best]
                else:
                    m = int(rng.integers(outside))
                    noisy = m if m < window.start else window.stop + m - window.start
            candidates.append(int(order[noisy]))
        out.append(candidates[int(rng.integers(len(candidates)))])
    return out


def exponential_scores(mechanism, word, distances):
    return mechanism.scores(np.arange(len(distances))[None, :], distances[None, :])[0]


CASES = [
    # label, mechanism, epsilon, params, uses the search budget, per-word baseline
    ("tgumbel", "tgumbel", 100.0, {}, False, per_word_tgumbel),
    ("tgumbel, max_distance 2", "tgumbel", 100.0, {"max_distance": 2.0}, False, per_word_distance_tgumbel),
    ("kde exact", "kde", 5.0, {}, False, per_word_exponential(exponential_scores)),
    ("kde exact", "kde", 10.0, {}, False, per_word_exponential(exponential_scores)),
    ("kde mh (40 + 10 steps)", "kde", 10.0, {"sampler": "mh"}, False, per_word_mh),
    ("tem", "tem", 5.0, {}, False, per_word_exponential(exponential_scores)),
    ("tem", "tem", 10.0, {}, False, per_word_exponential(exponential_scores)),
    ("santext", "santext", 5.0, {}, False, per_word_exponential(exponential_scores)),
    ("santext", "santext", 10.0, {}, False, per_word_exponential(exponential_scores)),
    ("custext (conservative)", "custext", 5.0, {}, False, per_word_custext),
    ("diffractor (geometric)", "diffractor", 1.0, {}, False, per_word_diffractor),
    ("diffractor (geometric), 5 lists", "diffractor", 1.0, {"lists": 5}, False, per_word_diffractor),
    ("diffractor (tem)", "diffractor", 1.0, {"method": "tem"}, False, per_word_diffractor),
    ("mlap, max_distance 7.5", "mlap", 10.0, {"max_distance": 7.5}, True, per_word_search(1)),
    ("mahalanobis", "mahalanobis", 10.0, {}, True, per_word_search(1)),
    ("vickrey", "vickrey", 10.0, {}, True, per_word_search(2)),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=200_000)
    parser.add_argument("--search-tokens", type=int, default=20_000)
    parser.add_argument("--baseline-tokens", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default="", help="run only the cases whose label contains this")
    args = parser.parse_args()

    configure_faiss(threads=1)
    runtime = Runtime(artifact_for(EmbeddingsConfig(), IndexConfig(), []))
    embeddings = runtime.embeddings
    stream = zipf_stream(args.tokens, embeddings.size, 1.0, seed=1)
    print(f"Date: {date.today()}; {os.cpu_count()} cores, 1 thread; vocabulary {embeddings.size:,} words "
          f"(GloVe 6B 50d, words only); Zipf stream; {args.tokens:,} tokens ({args.search_tokens:,} for "
          f"search-bound mechanisms) in batches of 10,000, median of {args.repeats}; per-word baselines "
          f"on {args.baseline_tokens} tokens.\n")
    print("| mechanism | eps | params | tokens/s | per-word baseline, tokens/s | speed-up |")
    print("|---|---|---|---|---|---|")
    for label, name, epsilon, params, search_bound, baseline in CASES:
        if args.only not in label:
            continue
        if name in ("mlap", "mahalanobis", "vickrey"):
            params = {"index_type": "flat", **params}
        mechanism = runtime.mechanism(name, epsilon, params)
        tokens = stream[: args.search_tokens] if search_bound else stream
        seconds = median_seconds(in_batches(mechanism.perturb, tokens, 10_000), args.repeats)
        sample = stream[: args.baseline_tokens]
        base = median_seconds(lambda: baseline(mechanism, sample, np.random.default_rng(0)), 1)
        rate, base_rate = len(tokens) / seconds, len(sample) / base
        shown = {k: v for k, v in params.items() if k != "index_type" or v != "flat"}
        print(f"| {label} | {epsilon:g} | {shown or ''} | {rate:,.0f} | {base_rate:,.0f} | {rate / base_rate:,.0f}x |",
              flush=True)


if __name__ == "__main__":
    main()
