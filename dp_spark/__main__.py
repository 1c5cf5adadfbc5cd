"""Command line: ``python -m dp_spark <command>``.

perturb    run the perturb job in local mode (same flags as spark-submit jobs/perturb.py)
calibrate  N_w / S_w against epsilon per mechanism: tables, plot, report (jobs/calibrate.py)
evaluate   accuracy of a classifier trained on perturbed text, at equal N_w (jobs/evaluate.py)
demo       perturb one sentence with each mechanism, no Spark
"""

from __future__ import annotations

import argparse
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
        output = mechanism.perturb_words(DEMO_SENTENCE, np.random.default_rng(args.seed))
        print(f"{name:8s} eps={epsilon:<6g} {' '.join(output)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from dp_spark.spark import calibrate, evaluate, job

    parser = argparse.ArgumentParser(prog="dp_spark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    perturb = commands.add_parser("perturb", help="perturb text columns of a table (local Spark)")
    job.add_arguments(perturb)
    perturb.set_defaults(handler=job.run_from_arguments)
    calibration = commands.add_parser("calibrate", help="N_w / S_w against epsilon (local Spark)")
    calibrate.add_arguments(calibration)
    calibration.set_defaults(handler=calibrate.run_from_arguments)
    evaluation = commands.add_parser("evaluate", help="utility of perturbed text (local Spark)")
    evaluate.add_arguments(evaluation)
    evaluation.set_defaults(handler=evaluate.run_from_arguments)
    demo_parser = commands.add_parser("demo", help="perturb a sentence with each mechanism")
    demo_parser.add_argument("--vocab-size", type=int, default=100_000)
    demo_parser.add_argument("--seed", type=int, default=0)
    demo_parser.set_defaults(handler=demo)
    args = parser.parse_args(argv)
    job.configure_logging()
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
