"""spark-submit entry point: spark-submit jobs/perturb.py [the flags of python -m dp_spark perturb]."""

import sys

from dp_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], commands=["perturb"]))
