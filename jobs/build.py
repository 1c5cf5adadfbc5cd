"""spark-submit entry point: spark-submit jobs/build.py [the flags of python -m dp_spark build].

Under spark-submit the neighbour table is always found by Spark tasks
(``build --spark``): query slices searched on the executors."""

import sys

from dp_spark.cli import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    sys.exit(main(argv if "--spark" in argv else [*argv, "--spark"], commands=["build"]))
