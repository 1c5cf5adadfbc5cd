"""spark-submit entry point: spark-submit jobs/audit.py [the flags of python -m dp_spark audit]."""

import sys

from dp_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], commands=["audit"]))
