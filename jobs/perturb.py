"""spark-submit entry point: spark-submit jobs/perturb.py --config conf/cluster.toml ..."""

import sys

from dp_spark.spark.job import main

if __name__ == "__main__":
    sys.exit(main())
