"""Command line: ``python -m dp_spark <command>``."""

from __future__ import annotations

import argparse
import logging
import sys

import numpy as np

DEMO_SENTENCE = "the movie was terrible but the actors were great".split()


def demo(args: argparse.Namespace) -> int:
    from dp_spark.embeddings import Embeddings
    from dp_spark.mechanisms import build_mechanism

    embeddings = Embeddings.default(args.vocab_size)
    print(f"embeddings: GloVe 6B 50d, {embeddings.size} words")
    print(f"input:            {' '.join(DEMO_SENTENCE)}")
    for name, epsilon in (("mlap", 10.0), ("mlap", 20.0), ("tgumbel", 100.0)):
        mechanism = build_mechanism(name, embeddings, epsilon=epsilon)
        rng = np.random.default_rng(args.seed)
        output = mechanism.perturb_words(DEMO_SENTENCE, rng)
        print(f"{name:8s} eps={epsilon:<6g} {' '.join(output)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dp_spark", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser("demo", help="perturb a sentence with each mechanism")
    demo_parser.add_argument("--vocab-size", type=int, default=100_000)
    demo_parser.add_argument("--seed", type=int, default=0)
    demo_parser.set_defaults(handler=demo)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # faiss announces at INFO which of its builds it loaded, at every import.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
